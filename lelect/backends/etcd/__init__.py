"""etcd backend: etcd's concurrency.Election over the v3 JSON gateway.

The package imports nothing: the job's keeper imports its hand-back module
(standard library only) without the client library the backend itself needs."""
