"""lelect: leader election for singleton jobs, from the command line or Python.

    import lelect

    with lelect.connect("redis://cache:6379/0").election("nightly").campaign(timeout=30) as lead:
        run_report(fencing_token=lead.term)

Heavy modules (backend clients, rich, psutil) are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lelect.backends.base import Backend

__all__ = ["__version__", "connect"]


def connect(url: str | None = None) -> Backend:
    """Open a backend by URL (default: ``$LELECT_BACKEND``, else the embedded one)."""
    from lelect.backends import connect as _connect

    return _connect(url)
