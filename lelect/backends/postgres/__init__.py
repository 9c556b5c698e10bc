"""PostgreSQL backend: a lease row per election, single guarded statements.

The package imports nothing: the job's keeper imports its hand-back module
(standard library only) without the client library the backend itself needs."""
