"""The embedded backend: a flock per election, state in SQLite.

The package imports nothing: the job's keeper imports its hand-back module
(standard library only) without the client library the backend itself needs."""
