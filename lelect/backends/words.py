"""How a leadership ends, in words every backend writes the same way (imports nothing:
the job's keeper and the embedded backend's state code use it on their fast paths)."""

RUNNING, EXITED, RESIGNED, LOST, STOPPED, VANISHED = (
    "running", "exited", "resigned", "lost", "stopped", "vanished"
)
#: The outcomes a history entry may record.
OUTCOMES = (RUNNING, EXITED, RESIGNED, LOST, STOPPED, VANISHED)
HAND_BACK_REASON = "lelect died; its keeper stopped the job and handed the leadership back"
#: A "vanished" entry: closed by the next leader, not by its own.
VANISHED_REASON = "its lease ran out without a release; the next leader closed the entry"
#: A candidate that won while the leadership was being handed to another node (``resign
#: --to NODE``) steps down at once ("resigned"), for this reason.
HANDED_OVER = "handed over to {}"
