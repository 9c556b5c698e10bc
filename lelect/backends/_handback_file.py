"""The embedded backend's hand-back, run by the job's keeper after lelect died and the
job's group is gone: close the history entry and the member record. (The flock itself
is the keeper's: it lets go of it right after.)"""

from __future__ import annotations

import time

from lelect.backends import filestate
from lelect.backends.records import HAND_BACK_REASON


def hand_back(params: dict, budget: float, exit_status: int | None) -> str:
    conn = filestate.open_db(params["directory"], bool(params.get("shared")))
    conn.execute(f"PRAGMA busy_timeout={int(max(budget, 0.001) * 1000)}")
    try:
        filestate.close_leadership(
            conn, params["election"], term=int(params["term"]), token=params["token"],
            outcome="lost", exit_status=exit_status, reason=HAND_BACK_REASON, slot=None,
            ended=time.time(),
        )
        with filestate.transaction(conn):
            conn.execute("DELETE FROM members WHERE election=? AND node_id=?",
                         (params["election"], params["node_id"]))
    finally:
        conn.close()
    return "released"
