import grp
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import kill_spawned

pytest_plugins = [
    "tests.plugins.proxy",
    "tests.plugins.redis_server",
    "tests.plugins.redis_sentinel",
    "tests.plugins.zookeeper_server",
    "tests.plugins.postgres_server",
    "tests.plugins.etcd_server",
    "tests.plugins.mysql_server",
    "tests.plugins.targets",
    "tests.plugins.hostile",
]


@pytest.fixture(autouse=True)
def _no_campaign_outlives_its_test():
    yield
    kill_spawned()


@pytest.fixture
def backend(tmp_path: Path) -> str:
    """The embedded backend in a fresh directory."""
    return f"file://{tmp_path / 'state'}"


@pytest.fixture
def processes():
    """Popen objects to kill at the end of the test, whatever happened (a stopped one
    is continued first, so it can die)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


@pytest.fixture
def shared_dir():
    """A directory shared by root and a group (as documented: root-owned, 3770), on a
    path every user can reach, and a copy of the lelect package the other user can read."""
    group = grp.getgrnam("nogroup").gr_gid
    top = Path(tempfile.mkdtemp(prefix="lelect-shared-"))
    top.chmod(0o755)
    shared = top / "lelect"
    shared.mkdir()
    os.chown(shared, 0, group)
    shared.chmod(0o3770)
    package = Path(__file__).resolve().parent.parent / "lelect"
    shutil.copytree(package, top / "src" / "lelect", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(top / "src")], check=True)
    yield shared, group, top / "src"
    shutil.rmtree(top, ignore_errors=True)
