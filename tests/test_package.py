"""The package people depend on: `pip install .` into a fresh venv ships py.typed, the
LICENSE, the metadata and the shell completions, and a README-style snippet (sync and
asyncio) type-checks under ``mypy --strict``."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.helpers import lelect_env

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = '''
import asyncio
import lelect
from lelect.errors import LeadershipLost


def report(fencing_token: int) -> None:
    print("report stamped with term", fencing_token)


def nightly(url: str) -> int:
    with lelect.connect(url) as client:
        election = client.election("nightly")
        with election.campaign(timeout=30) as leadership:
            if leadership.is_leader():
                report(leadership.term)
            return leadership.term


async def service(url: str) -> None:
    client = lelect.connect(url)
    try:
        async with client.election("nightly").leadership(
            timeout=30, on_lost=lambda lead: print("lost", lead.term)
        ) as lead:
            value: str | None = lead.value
            if lead.is_leader():
                report(lead.term)
            print(value, lead.lost_event.is_set())
    except LeadershipLost as lost:
        print(lost)
    finally:
        client.close()


def main() -> None:
    url = "file:///tmp/lelect-snippet"
    print(nightly(url))
    asyncio.run(service(url))
    leader = lelect.connect(url).election("nightly").leader()
    print(None if leader is None else leader.term)
'''


# One worker builds the wheel and the venv once for the whole module (pytest-xdist runs
# the suite with --dist loadgroup: a group stays on one worker).
pytestmark = pytest.mark.xdist_group("package")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with lelect installed from a wheel built from this tree (no deps: the
    main venv's site-packages are appended by a .pth, after the venv's own)."""
    venv = tmp_path_factory.mktemp("pkg") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "zz_main_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def run_in(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = lelect_env()
    env.pop("PYTHONPATH", None)  # the installed copy, not this tree
    return subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd or venv)


def test_the_installed_package_is_the_wheels_and_ships_py_typed(installed):
    out = run_in(installed, "-c", "import lelect, pathlib; p = pathlib.Path(lelect.__file__);"
                 " print(p); print((p.parent / 'py.typed').exists())")
    where, typed = out.stdout.split()
    assert str(installed) in where and typed == "True", out.stdout + out.stderr


def test_the_wheel_ships_the_spawn_library_and_the_gate_program_executable(installed):
    """Built with the wheel (hatch_build.py): without them the keeper falls back, silently
    slower; the gate program must keep its exec bit through the wheel."""
    out = run_in(installed, "-c", "import lelect, os, pathlib;"
                 " p = pathlib.Path(lelect.__file__).parent;"
                 " print((p / 'libspawn.so').is_file(), os.access(p / 'lelect-gate', os.X_OK))")
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


def test_metadata_license_classifiers_and_urls(installed):
    out = run_in(installed, "-c", textwrap.dedent("""
        from importlib.metadata import distribution
        d = distribution("lelect")
        print(repr(d.metadata.get_all("Classifier")))
        print(repr(d.metadata.get_all("Project-URL")))
        print(repr([str(f) for f in d.files if f.name == "LICENSE"]))
        print(d.metadata.get("License-Expression") or d.metadata.get("License"))
    """))
    classifiers, urls, licenses, expression = (eval(line) if i < 3 else line  # noqa: S307
                                               for i, line in enumerate(out.stdout.splitlines()))
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    assert any(u.startswith("Documentation") for u in urls)
    assert licenses and expression == "MIT"
    license_file = next(Path(installed / "lib").glob("python*/site-packages/lelect-*.dist-info"))
    texts = [p.read_text() for p in license_file.rglob("LICENSE")]
    assert texts and "the lelect authors" in texts[0] and "MIT License" in texts[0]


def test_completions_are_installed_and_current(installed):
    shipped = {
        "lelect.bash": installed / "share/bash-completion/completions/lelect",
        "lelect.zsh": installed / "share/zsh/site-functions/_lelect",
        "lelect.fish": installed / "share/fish/vendor_completions.d/lelect.fish",
    }
    for name, path in shipped.items():
        assert path.read_text() == (ROOT / "completions" / name).read_text(), name
    # ...and the repository's copies are what lelect prints today.
    out = subprocess.run([sys.executable, str(ROOT / "completions" / "generate.py"), "--check"],
                         capture_output=True, text=True, env={**lelect_env(), "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr


def test_version_and_verbose_version(installed):
    lelect = installed / "bin" / "lelect"
    plain = subprocess.run([str(lelect), "--version"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and plain.stdout.strip() == "lelect, version 0.1.0"
    verbose = subprocess.run([str(lelect), "--version", "--verbose"], capture_output=True,
                             text=True, timeout=60)
    assert verbose.returncode == 0
    for backend in ("redis: lelect's own client", "zookeeper: kazoo ",
                    "postgresql: lelect's own client", "mysql: PyMySQL ",
                    "etcd: lelect's own client"):
        assert backend in verbose.stdout, verbose.stdout
    # Neither imports a backend's client library (the versions come from the metadata).
    traced = run_in(installed, "-X", "importtime", "-m", "lelect", "--version", "--verbose")
    imported = {line.rsplit("|", 1)[-1].strip() for line in traced.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"redis", "kazoo", "psycopg", "pymysql", "prometheus_client", "rich"}, imported


def test_a_readme_snippet_type_checks_under_mypy_strict(installed, tmp_path):
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out = run_in(installed, "-m", "mypy", "--strict", "--no-incremental", str(snippet),
                 cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    ran = run_in(installed, "-c", "import lelect; print(lelect.__version__)", cwd=tmp_path)
    assert ran.stdout.strip() == "0.1.0", ran.stderr
