"""Redis backend: one Lua script per verb, guarded by the leadership's token.

The package imports nothing: the job's keeper imports its hand-back module
(standard library only) without the client library the backend itself needs."""
