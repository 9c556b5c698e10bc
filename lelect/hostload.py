"""This host's load and its processes, as a heartbeat reports them, read from /proc.

Standard library only: a waiting candidate publishes these figures every beat, and
psutil would cost it about 1 MB and 5 ms of start-up for numbers Linux hands out as
text. The figures are psutil's (same sources, same formulas, same rounding); where
/proc is missing (not Linux) psutil computes them.
"""

from __future__ import annotations

import os

PROC = "/proc"
#: /proc/stat's "cpu" line: user nice system idle iowait irq softirq steal guest guest_nice
_IDLE, _IOWAIT, _GUEST = 3, 4, 8


def on_procfs() -> bool:
    return os.path.exists(f"{PROC}/stat")


def _percent(part: float, whole: float) -> float:
    """``part`` of ``whole`` in %, rounded as psutil rounds (0.0 for an empty whole)."""
    return round(part / whole * 100, 1) if whole else 0.0


def cpu_times() -> list[int]:
    """Clock ticks of every CPU since boot, by kind (/proc/stat's "cpu" line)."""
    with open(f"{PROC}/stat", "rb") as f:
        return [int(x) for x in f.readline().split()[1:11]]


def busy_percent(before: list[int], after: list[int]) -> float:
    """CPU use in % between two :func:`cpu_times`, psutil's way: each kind's delta at
    least 0, guest time left out (it is in user and nice already), iowait idle."""
    deltas = [max(b - a, 0) for a, b in zip(before, after)]
    total = sum(deltas[:_GUEST])
    busy = total - sum(deltas[_IDLE:_IOWAIT + 1])
    return _percent(busy, total)


class CpuPercent:
    """System-wide CPU use in % since the previous call (the first: since creation),
    like ``psutil.cpu_percent(interval=None)``."""

    def __init__(self) -> None:
        self._last = cpu_times() if on_procfs() else None
        if self._last is None:
            import psutil

            psutil.cpu_percent(interval=None)

    def __call__(self) -> float:
        if self._last is None:
            import psutil

            return float(psutil.cpu_percent(interval=None))
        before, self._last = self._last, cpu_times()
        return busy_percent(before, self._last)


def memory_percent() -> float:
    """Memory in use in %: (MemTotal - MemAvailable) / MemTotal."""
    found = {}
    with open(f"{PROC}/meminfo", "rb") as f:
        for line in f:
            name, _, rest = line.partition(b":")
            if name in (b"MemTotal", b"MemAvailable"):
                found[name] = int(rest.split()[0])
    total, available = found.get(b"MemTotal", 0), found.get(b"MemAvailable")
    if available is None or not 0 < available <= total:  # psutil's own estimate then
        import psutil

        return float(psutil.virtual_memory().percent)
    return _percent(total - available, total)


def disk_percent(path: str = "/") -> float:
    """Space used on ``path``'s file system in %, of what an unprivileged user can use
    (as psutil and df count it: the blocks reserved for root left out)."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return _percent(used, used + st.f_bavail * st.f_frsize)


def net_bytes() -> tuple[int, int]:
    """(sent, received) bytes over every network interface since boot."""
    sent = received = 0
    with open(f"{PROC}/net/dev", "rb") as f:
        for line in f.readlines()[2:]:
            fields = line[line.rfind(b":") + 1:].split()
            received += int(fields[0])
            sent += int(fields[8])
    return sent, received


def figures(cpu: CpuPercent) -> dict[str, float | int]:
    """A heartbeat's figures: cpu % (since ``cpu``'s previous call), memory %, 1-minute
    load, disk % of /, network bytes."""
    if not on_procfs():
        return _psutil_figures()
    sent, received = net_bytes()
    return {
        "cpu_percent": cpu(),
        "memory_percent": memory_percent(),
        "load1": float(os.getloadavg()[0]),
        "disk_percent": disk_percent("/"),
        "net_bytes_sent": sent,
        "net_bytes_recv": received,
    }


def _psutil_figures() -> dict[str, float | int]:
    import psutil

    net = psutil.net_io_counters()
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_percent": float(psutil.virtual_memory().percent),
        "load1": float(os.getloadavg()[0]),
        "disk_percent": float(psutil.disk_usage("/").percent),
        "net_bytes_sent": int(net.bytes_sent) if net else 0,
        "net_bytes_recv": int(net.bytes_recv) if net else 0,
    }


def process_state(pid: int) -> tuple[str, float] | None:
    """(state letter as ps shows it, start time in seconds since the epoch) of process
    ``pid``; None if there is no such process. Raises PermissionError (or another
    OSError) when the process may not be looked at."""
    if not on_procfs():
        return _psutil_process_state(pid)
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = stat[stat.rfind(b")") + 2:].split()
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0].decode(), started + boot_time()


def boot_time() -> float:
    """When this host booted, in seconds since the epoch (/proc/stat's btime)."""
    with open(f"{PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError(f"no btime in {PROC}/stat")


def _psutil_process_state(pid: int) -> tuple[str, float] | None:
    import psutil

    try:
        process = psutil.Process(pid)
        zombie = process.status() == psutil.STATUS_ZOMBIE
        return ("Z" if zombie else "R"), process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied as exc:
        raise PermissionError(str(exc)) from exc
