"""lelect: leader election for singleton jobs, from the command line or Python.

    import lelect

    with lelect.connect("redis://cache:6379/0").election("nightly").campaign(timeout=30) as lead:
        run_report(fencing_token=lead.term)

Heavy modules (backend clients, rich, psutil) are imported only when used.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: the job's keeper imports this package and starts in ms.
TYPE_CHECKING = False

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lelect.aio import AsyncLeadership, LeadershipBlock
    from lelect.backends.base import Cancel, Leadership
    from lelect.election import Client, Election
    from lelect.errors import LeadershipLost, LelectError

__all__ = ["AsyncLeadership", "Cancel", "Client", "Election", "Leadership", "LeadershipBlock",
           "LeadershipLost", "LelectError", "__version__", "connect"]

#: Names re-exported from their modules, imported on first use (the keeper imports this
#: package and must not pay for asyncio or the backends).
_LAZY = {
    "AsyncLeadership": "lelect.aio",
    "LeadershipBlock": "lelect.aio",
    "Cancel": "lelect.backends.base",
    "Leadership": "lelect.backends.base",
    "Client": "lelect.election",
    "Election": "lelect.election",
    "LeadershipLost": "lelect.errors",
    "LelectError": "lelect.errors",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lelect' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def connect(url: str | None = None, *, create: bool = True) -> Client:
    """Open a backend by URL (default: ``$LELECT_BACKEND``, else the embedded one).
    ``create=False`` creates nothing (the embedded backend's directory), for readers."""
    from lelect.backends import connect as _connect
    from lelect.election import Client

    return Client(_connect(url, create=create))
