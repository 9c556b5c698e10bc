"""Secrets stay out of the job's environment (docs/security.md, "Secrets").

The job gets ``LELECT_BACKEND`` without secrets. When the job's own ``lelect leader NAME
--term "$LELECT_TERM"`` needs one (a password written in the URL, or libpq's
``PGPASSWORD``), it gets ``LELECT_BACKEND_FILE`` too: a path to an anonymous in-memory
file (memfd, mode 0600) that this lelect process holds open, so the URL with its secret
can be read by the job's user for as long as lelect runs, and exists nowhere once lelect
is gone: no file on disk to clean up after a ``kill -9``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from lelect.backends.urls import BackendURL

#: Variables that hold secrets and never reach the job: libpq's password, redis-cli's,
#: etcdctl's (ETCDCTL_USER may be USER:PASSWORD), and lelect's own URL file (replaced by
#: a private copy when the job needs it).
SECRET_VARIABLES = ("PGPASSWORD", "REDISCLI_AUTH", "ETCDCTL_PASSWORD", "ETCDCTL_USER",
                    "LELECT_BACKEND_FILE")

_HELD: dict[str, str] = {}  # URL -> /proc path of the memfd that holds it


def job_backend_env(env: MutableMapping[str, str], url: BackendURL,
                    outer: Mapping[str, str] | None = None) -> None:
    """Set the job's ``LELECT_BACKEND`` (and ``LELECT_BACKEND_FILE`` where the job needs
    a secret to ask the backend) in ``env``; drop every :data:`SECRET_VARIABLES`.
    ``outer`` is lelect's own environment (default ``os.environ``)."""
    outer = os.environ if outer is None else outer
    for name in SECRET_VARIABLES:
        env.pop(name, None)
    env["LELECT_BACKEND"] = url.masked
    secret = None
    if url.has_inline_secret:
        secret = url.revealed()
    elif url.scheme in ("postgresql", "postgres") and url.password is None \
            and url.password_file is None and outer.get("PGPASSWORD"):
        secret = url.revealed(outer["PGPASSWORD"])
    if secret is not None:
        path = _held_file(secret)
        if path is not None:
            env["LELECT_BACKEND_FILE"] = path


def _held_file(text: str) -> str | None:
    """A /proc path to a 0600 memfd holding ``text`` (None where there is no memfd)."""
    if text in _HELD:
        return _HELD[text]
    try:
        fd = os.memfd_create("lelect-backend", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    os.fchmod(fd, 0o600)
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]
    _HELD[text] = f"/proc/{os.getpid()}/fd/{fd}"
    return _HELD[text]
