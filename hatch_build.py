"""Build lelect/libspawn.so from lelect/_spawn.c: the keeper's vfork start of a job.

A plain C library (the keeper loads it with ctypes; no Python headers needed). It is
optional: without a C compiler the build goes on with a warning, and the keeper forks the
job in Python instead (about 1 ms more per job start; docs/backends.md, "The keeper").
``LELECT_NO_SPAWN_LIBRARY=1`` skips it on purpose.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("lelect") / "_spawn.c"
LIBRARY = Path("lelect") / "libspawn.so"
#: The program the job's process of the candidate next in line waits as (the same source).
PROGRAM = Path("lelect") / "lelect-gate"


def compile_library(root: Path, out: Path, program: bool = False) -> str | None:
    """Compile SOURCE into ``out`` (the library; ``program``: the gate program); None if
    that worked, else why not (one line)."""
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    kind = ["-DLELECT_GATE_PROGRAM"] if program else ["-shared", "-fPIC"]
    command = [*compiler, "-O2", "-Wall", *kind, "-o", str(out), str(root / SOURCE)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{compiler[0]}: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else f"{compiler[0]} exited {done.returncode}"
    return None


class SpawnLibraryHook(BuildHookInterface):
    """Compile the library for a wheel; in place (beside the sources) for an editable
    install, whose lelect is imported from the source tree."""

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel" or os.environ.get("LELECT_NO_SPAWN_LIBRARY"):
            return
        root = Path(self.root)
        if version == "editable":
            out, gate = root / LIBRARY, root / PROGRAM
        else:
            built = Path(tempfile.mkdtemp(prefix="lelect-build-"))
            out, gate = built / LIBRARY.name, built / PROGRAM.name
        why = compile_library(root, out) or compile_library(root, gate, program=True)
        if why is not None:
            self.app.display_warning(
                f"lelect: cannot build {LIBRARY} ({why}); the keeper will fork jobs in"
                " Python instead (slower by about 1 ms per job start)")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(out)] = str(LIBRARY)
            build_data["force_include"][str(gate)] = str(PROGRAM)
