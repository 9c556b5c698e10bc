"""The job's keeper hands an etcd leadership back after lelect died (standard library
only: the keeper runs ``python -S -I`` and imports this only when it needs it).

One txn guarded by our key's create revision (the leadership's identity) closes our
history entry as "lost", deletes our member record and our contender key; then our lease
is revoked. If the key is not ours any more (our lease ran out, somebody else leads),
nothing changes.
"""

from __future__ import annotations

import time

from lelect.backends.etcd import gateway as wire
from lelect.backends.records import HAND_BACK_REASON, LOST, HistoryEntry
from lelect.frozen import replace

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any


def hand_back(params: dict[str, Any], budget: float, exit_status: int | None) -> str:
    """Release the leadership ``params`` describes (made by ``EtcdBackend.hand_back``)
    within ``budget`` seconds: "released", or "not ours" when it had ended already."""
    deadline = time.monotonic() + budget
    tls = params.get("tls")
    gateway = wire.Gateway(
        [wire.Endpoint(host, int(port)) for host, port in params["endpoints"]],
        tls=wire.TLSFiles(**tls) if tls else None,
        username=params.get("username"),
        password=params.get("password"),
        token=params.get("token"),
    )
    try:
        key, term = str(params["key"]), int(params["term"])
        closed = replace(HistoryEntry.decode(params["entry"]), ended=time.time(), outcome=LOST,
                         exit_status=exit_status, reason=HAND_BACK_REASON)
        released = gateway.txn(
            [wire.created_at(key, term)],
            [wire.put(params["history_key"], closed.encode()),
             wire.delete(params["member_key"]),
             wire.delete(key)],
            budget=deadline - time.monotonic(),
        )
        if not released.succeeded:
            return "not ours"
        # Our key is gone already; the lease would only linger until it runs out.
        try:
            gateway.call("lease/revoke", {"ID": str(int(params["lease_id"]))},
                         max(deadline - time.monotonic(), 0.05))
        except wire.GatewayError:
            pass
        return "released"
    finally:
        gateway.close()
