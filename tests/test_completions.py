"""Shell completion scripts in completions/: fresh, and completing from the backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LELECT, lelect_env

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"


def test_completion_scripts_are_not_stale():
    out = subprocess.run([sys.executable, str(COMPLETIONS / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_what_lelect_prints(shell):
    env = lelect_env(_LELECT_COMPLETE=f"{shell}_source")
    out = subprocess.run(LELECT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # click 8.4 ends what it prints with a blank line, 8.5 does not: compare the script.
    assert (COMPLETIONS / f"lelect.{shell}").read_text().rstrip("\n") == out.stdout.rstrip("\n")


@pytest.fixture
def backend(tmp_path: Path) -> str:
    """A backend with three elections, each known by one member's heartbeat."""
    from lelect.backends import connect
    from lelect.backends.base import Heartbeat

    url = f"file://{tmp_path / 'state'}"
    with connect(url) as store:
        for name in ("nightly", "nightly-eu", "backup"):
            store.publish(Heartbeat(election=name, node_id="n1", host="h", pid=1, role="follower",
                                    term=None, seq=1, time=0.0), 3600)
    return url


def complete(backend: str, words: str) -> list[str]:
    """What click's bash protocol answers for the last word of ``words``."""
    parts = words.split(" ")
    env = lelect_env(backend, COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1),
                     _LELECT_COMPLETE="bash_complete")
    out = subprocess.run(LELECT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines() if line.startswith("plain,")]


@pytest.mark.parametrize("command", ["watch", "health", "resign", "leader", "campaign"])
def test_election_arguments_complete_from_the_backend(backend, command):
    assert complete(backend, f"lelect {command} ") == ["backup", "nightly", "nightly-eu"]
    assert complete(backend, f"lelect {command} night") == ["nightly", "nightly-eu"]


def test_watch_completes_more_than_one_election(backend):
    assert complete(backend, "lelect watch nightly b") == ["backup"]


def test_history_completes_elections_that_only_have_a_history(backend):
    from tests.helpers import run_lelect

    assert run_lelect("campaign", "deploy", "--", "true", backend=backend).returncode == 0
    assert complete(backend, "lelect history de") == ["deploy"]


def test_commands_complete(backend):
    names = complete(backend, "lelect ")
    assert {"campaign", "leader", "watch", "health", "resign"} <= set(names)


def test_completion_with_a_broken_backend_is_quietly_empty(tmp_path):
    assert complete("nonsense-url", "lelect watch ") == []
    (tmp_path / "afile").write_text("")
    assert complete(f"file://{tmp_path}/afile/sub", "lelect health ") == []


def shell_env(backend: str) -> dict[str, str]:
    env = lelect_env(backend)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    assert shutil.which("lelect", path=env["PATH"]), "lelect is not installed next to python"
    return env


def test_bash_script_completes_elections_end_to_end(backend):
    """Source completions/lelect.bash in a real bash and press <TAB> (call its function)."""
    script = (
        f"source {COMPLETIONS / 'lelect.bash'}; "
        "COMP_WORDS=(lelect resign ni); COMP_CWORD=2; _lelect_completion lelect; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "--norc", "-c", script], env=shell_env(backend),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["nightly", "nightly-eu"]


def test_fish_script_completes_elections_end_to_end(backend):
    """Source completions/lelect.fish in a real fish and ask what <TAB> would offer."""
    script = f"source {COMPLETIONS / 'lelect.fish'}; complete -C 'lelect resign ni'"
    out = subprocess.run(["fish", "--no-config", "-c", script], env=shell_env(backend),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == ["nightly", "nightly-eu"]


def test_zsh_script_completes_elections_end_to_end(backend, tmp_path):
    """A real interactive zsh (in tmux) with compinit and completions/lelect.zsh on
    its fpath: type `lelect resign ni` and list the choices (^D)."""
    from tests.helpers import wait_until

    fpath = tmp_path / "fpath"
    fpath.mkdir()
    (fpath / "_lelect").write_text((COMPLETIONS / "lelect.zsh").read_text())
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(
        f"fpath=({fpath} $fpath)\nautoload -Uz compinit\ncompinit -u -d {tmp_path}/zcompdump\n"
        "PS1='ready> '\n"
    )
    env = shell_env(backend)
    env["ZDOTDIR"] = str(zdot)
    sock = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", sock]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "20", "zsh", "-i"], env=env,
                   check=True)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                  check=True).stdout

        wait_until(lambda: "ready>" in screen(), timeout=30, what="the zsh prompt")
        # ^D at the end of the line is list-choices: the completion system, not a guess.
        subprocess.run([*tmux, "send-keys", "lelect resign ni", "C-d"], check=True)
        wait_until(lambda: "nightly-eu" in screen(), timeout=30, what="the completion list")
        listed = screen().split("ready> lelect resign ni", 1)[1].split()
        assert listed[:2] == ["nightly", "nightly-eu"], screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
