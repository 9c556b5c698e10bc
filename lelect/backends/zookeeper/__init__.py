"""ZooKeeper backend: kazoo's Lock/Election layout, one session per candidate.

The package imports nothing: the job's keeper imports its hand-back module
(standard library only) without the client library the backend itself needs."""
