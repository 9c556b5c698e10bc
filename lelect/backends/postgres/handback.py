"""The keeper's hand-back on PostgreSQL: after lelect died and the job's whole process
group is gone, release the leadership by its token with the backend's own guarded
release statement, over lelect's own client of PostgreSQL's wire protocol (``wire``).

Standard library only (the keeper runs ``python -S -I``). It reconnects the way the
leadership's connection went (the same server address, TLS or not, the same
``require_auth``), and everything is bounded by ``budget``: a server that cannot be
reached in time changes nothing, and the lease expires as it would have. Its answers
are capped smaller than the backend's: a row or two.
"""

from __future__ import annotations

import time

from lelect.backends.postgres.sql import release_statement, with_timeout
from lelect.backends.postgres.wire import Error as WireError
from lelect.backends.postgres.wire import Scram, Wire, allowed_methods, saslprep
from lelect.backends.records import HAND_BACK_REASON

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["WireError", "Scram", "allowed_methods", "hand_back", "saslprep"]

#: Share of the budget left for the release statement itself (server-side timeout).
STATEMENT_SHARE = 0.9
#: The longest message a server may send the hand-back (its answers are a row or two).
MAX_MESSAGE = 1 << 20


def hand_back(params: dict[str, Any], budget: float, exit_status: int | None) -> str:
    """Release the leadership in ``params`` (from ``PostgresBackend.hand_back``) within
    ``budget`` seconds: "released", or "not ours" when its lease had already expired or
    been taken (then only our own still-running history entry is closed)."""
    deadline = time.monotonic() + budget
    statement = release_statement(
        params["schema"], election=params["election"], token=params["token"],
        term=int(params["term"]), node_id=params["node_id"], outcome="lost",
        exit_status=exit_status, reason=HAND_BACK_REASON, slot=None, forget=True,
    )  # fmt: skip
    wire = Wire.connect(params, deadline, max_message=MAX_MESSAGE)
    try:
        left = deadline - time.monotonic()
        rows = wire.query(with_timeout(statement, max(left * STATEMENT_SHARE, 0.001)))
    finally:
        wire.close()
    released = rows and rows[-1][0] == 1
    return "released" if released else "not ours"
