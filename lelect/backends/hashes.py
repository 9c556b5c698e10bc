"""SHA-256 and MD5 from CPython's own modules, not OpenSSL's: importing hashlib maps
libcrypto (about 4 MB of a waiting candidate's memory) for a digest or two (a lock name,
a password exchange). Standard library only: the keeper's hand-back imports it too."""

from __future__ import annotations

try:
    from _sha2 import sha256  # type: ignore[import-not-found]  # Python 3.12+
except ImportError:  # pragma: no cover - by Python version
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,no-redef]
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256  # type: ignore[assignment]

try:
    from _md5 import md5  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import md5  # type: ignore[assignment]

__all__ = ["md5", "sha256"]
