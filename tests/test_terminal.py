"""Node ids, hosts and server text reach terminals, logs and hooks sanitised (issue 19 §7):
another writer's node id with escape sequences and a newline cannot retitle a terminal
or forge a log line; `--id` with control characters is refused; a NUL in a node id does
not kill `watch --on-change`'s hook thread."""

from __future__ import annotations

import pytest

from lelect import connect
from lelect.backends.records import Candidate
from tests.helpers import run_lelect, spawn_lelect, wait_until

HOSTILE = "web-1\x1b]0;PWNED\x07\nlelect[00:00:00]: forged line"


def assert_clean(text: str, lines: int | None = None) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    assert "forged line" not in text or "\\n" in text, repr(text)
    if lines is not None:
        assert text.count("\n") == lines, repr(text)


@pytest.mark.parametrize("node_id", ["web\x1b[2J", "a\nb", "tab\there", "nul\x00", ""])
def test_an_id_with_control_characters_is_refused(backend, node_id):
    for args in (["campaign", "e", "--id", node_id, "--", "true"],
                 ["health", "e", "--publish", "--id", node_id]):
        try:
            out = run_lelect(*args, backend=backend)
        except ValueError:  # NUL cannot even be passed in argv
            continue
        assert out.returncode == 2 and "invalid node id" in out.stderr, out.stderr
        assert_clean(out.stderr, lines=1)


def test_a_hostile_leader_id_is_printed_sanitised(backend):
    with connect(backend) as client:
        leadership = client.backend.campaign("e", Candidate(HOSTILE, "host\x1b[31m", 1))
        try:
            out = run_lelect("leader", "e", backend=backend)
            assert out.returncode == 0 and "web-1\\x1b]0;PWNED\\x07\\n" in out.stdout
            assert_clean(out.stdout, lines=1)
            out = run_lelect("leader", "e", "--term", "999999", backend=backend)
            assert_clean(out.stdout + out.stderr)
            busy = run_lelect("campaign", "e", "--no-wait", "--", "true", backend=backend)
            assert busy.returncode == 75, busy.stderr
            assert_clean(busy.stderr)
            out = run_lelect("resign", "e", "--term", "999999", backend=backend)
            assert out.returncode == 1
            assert_clean(out.stderr, lines=1)
            out = run_lelect("resign", "e", backend=backend)
            assert_clean(out.stdout + out.stderr)
        finally:
            leadership.release()


def test_a_nul_in_a_node_id_does_not_stop_on_change_hooks(backend, tmp_path, processes):
    seen = tmp_path / "seen"
    with connect(backend) as client:
        held = client.backend.campaign("e", Candidate("zero", "h", 1))
        watcher = spawn_lelect("watch", "e", "--interval", "100ms", "--on-change",
                               f'printf "%s|\\n" "$LELECT_LEADER" >> {seen}', backend=backend)
        processes.append(watcher)
        assert "zero" in watcher.stdout.readline() + watcher.stdout.readline()  # first look
        held.release()

        def lead(node_id: str) -> None:
            leadership = client.backend.campaign("e", Candidate(node_id, "h", 1))
            wait_until(lambda: seen.exists() and node_id.replace("\x00", "\\x00") + "|"
                       in seen.read_text(), timeout=30, what=f"the hook for {node_id!r}")
            leadership.release()

        lead("first")
        lead("nul\x00id")
        lead("after")  # the hook thread still runs
    watcher.terminate()
    assert watcher.wait(timeout=30) == 0
    assert "Traceback" not in watcher.stderr.read()
