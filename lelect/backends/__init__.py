"""Backends, chosen by URL scheme and imported lazily so ``lelect --help`` stays cheap.

The package itself imports nothing more: a job's keeper imports one module of it (its
hand-back) after lelect died, while the next leader waits.
"""

from __future__ import annotations

import importlib
import os

# Not typing.TYPE_CHECKING: the job's keeper imports this package and starts in ms.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from lelect.backends.base import Backend
    from lelect.backends.urls import BackendURL, mask_url, parse_url  # noqa: F401

__all__ = ["BackendURL", "connect", "default_url", "mask_url", "parse_url", "SCHEMES"]

#: scheme -> "module:class"; the module is imported only when a URL names it.
SCHEMES: dict[str, str] = {
    "file": "lelect.backends.file.backend:FileBackend",
    "redis": "lelect.backends.redis.backend:RedisBackend",
    "rediss": "lelect.backends.redis.backend:RedisBackend",
    "redis+sentinel": "lelect.backends.redis.backend:RedisBackend",
    "rediss+sentinel": "lelect.backends.redis.backend:RedisBackend",
    "unix": "lelect.backends.redis.backend:RedisBackend",
    "zookeeper": "lelect.backends.zookeeper.backend:ZooKeeperBackend",
    "zk": "lelect.backends.zookeeper.backend:ZooKeeperBackend",
    "postgresql": "lelect.backends.postgres.backend:PostgresBackend",
    "postgres": "lelect.backends.postgres.backend:PostgresBackend",
    "etcd": "lelect.backends.etcd.backend:EtcdBackend",
    "etcds": "lelect.backends.etcd.backend:EtcdBackend",
    "mysql": "lelect.backends.mysql.backend:MySQLBackend",
    "mariadb": "lelect.backends.mysql.backend:MySQLBackend",
}

#: Standard modules a backend's client library imports at once but uses only for a feature
#: lelect may not ask of it (kazoo: ``ssl`` for TLS, ``hashlib`` for digest ACLs, each
#: mapping OpenSSL's libcrypto: 4-5 MB of a waiting candidate's RSS; ``uuid`` for recipes
#: lelect does not use, ``inspect`` for one ``isclass``: ~8 ms of each candidate's start,
#: with what they import; ``traceback``, which ``logging`` only needs to print an
#: exception: ~2 ms with its ``tokenize`` and ``textwrap``). They load on first use.
DEFERRED_IMPORTS: dict[str, tuple[str, ...]] = {
    "lelect.backends.zookeeper.backend": ("ssl", "hashlib", "uuid", "inspect", "traceback"),
}
#: What a deferred module's stand-in answers without loading it: functions whose whole
#: body is here (the standard library's own, word for word), that a client calls at once.
SHORTCUTS: dict[str, dict[str, object]] = {
    # kazoo's KazooClient() asks whether its handler is a class.
    "inspect": {"isclass": lambda object: isinstance(object, type)},
}


def __getattr__(name: str) -> object:
    if name in ("BackendURL", "mask_url", "parse_url"):
        from lelect.backends import urls

        return getattr(urls, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_url() -> str:
    """The URL in the file ``$LELECT_BACKEND_FILE`` names, else ``$LELECT_BACKEND``, else
    the embedded backend in its default directory."""
    named = os.environ.get("LELECT_BACKEND_FILE", "")
    if named:
        from lelect.backends.urls import MAX_URL_FILE, read_secret_file

        return read_secret_file(named, "LELECT_BACKEND_FILE", MAX_URL_FILE).strip()
    env = os.environ.get("LELECT_BACKEND", "").strip()
    if env:
        return env
    from lelect.backends.file.state import default_home
    from lelect.backends.urls import quote

    # Quoted: LELECT_HOME=/srv/team#1 is a directory, not a URL with a fragment.
    return "file://" + quote(default_home(), safe="/")


def connect(url: str | None = None, *, create: bool = True) -> Backend:
    """Open the backend named by ``url`` (default: :func:`default_url`). With
    ``create=False`` nothing is created (the embedded backend's directory): for readers."""
    from lelect.backends.urls import parse_url
    from lelect.errors import UsageError

    parsed = parse_url(url or default_url())
    target = SCHEMES.get(parsed.scheme)
    if target is None:
        raise UsageError(
            f"unknown backend scheme {parsed.scheme + '://'!r}: use one of "
            + ", ".join(f"{s}://" for s in sorted(SCHEMES))
        )
    module_name, class_name = target.split(":")
    defer_imports(*DEFERRED_IMPORTS.get(module_name, ()))
    module = importlib.import_module(module_name)
    backend_class = getattr(module, class_name)
    if not create and getattr(backend_class, "creates_state", False):
        return backend_class(parsed, create=False)
    return backend_class(parsed)


def defer_imports(*names: str) -> None:
    """Make each module in ``names`` that is not imported yet load on its first use (an
    attribute read) rather than at its ``import``: a library's ``import`` of it then binds
    a stand-in that costs nothing until the library uses it. A module already imported is
    left as it is."""
    import sys
    import types

    for name in names:
        if name in sys.modules:
            continue
        stand_in = types.ModuleType(name, f"{name}, loaded on first use")

        def load(attribute: str, name: str = name, stand_in: types.ModuleType = stand_in):
            # The stand-in has no __spec__, so an ``import`` statement binds it as it is
            # (importlib.util.LazyLoader's module would load at the statement). The real
            # module's names are copied onto it for whoever bound it. Two threads may
            # both get here (two of kazoo's threads logging an exception): pop, not del.
            if sys.modules.get(name) is stand_in:
                sys.modules.pop(name, None)
            real = importlib.import_module(name)
            vars(stand_in).update(vars(real))
            return getattr(real, attribute)

        stand_in.__getattr__ = load  # type: ignore[method-assign]  # PEP 562
        vars(stand_in).update(SHORTCUTS.get(name, {}))
        sys.modules[name] = stand_in
