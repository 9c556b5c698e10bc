"""Backend URLs, like database URLs: ``file:///srv/lelect``, ``redis://:pw@host:6379/0``,
``zookeeper://h1:2181,h2:2181/lelect``. Options go in the query string.

A password may instead live in a file: ``?password_file=PATH`` on any backend that takes
one (for ZooKeeper, ``?auth=digest:USER&password_file=PATH``), or the whole URL in the
file ``$LELECT_BACKEND_FILE`` names. See docs/security.md, "Secrets".
"""

from __future__ import annotations

import os
import stat

from lelect.durations import RANGES, Range, parse_duration
from lelect.errors import ConfigError, UsageError
from lelect.frozen import Record, field

#: The largest password file and URL file lelect reads.
MAX_PASSWORD_FILE = 4096
MAX_URL_FILE = 16 * 1024
#: Characters a URL's path and option values keep as they are (the rest is %-quoted).
_PATH_SAFE = "/:@!$&'()*+,;=~"
_VALUE_SAFE = ":/,@~!$'()*+;"
#: What urllib.parse.quote never quotes.
_ALWAYS_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


# urllib.parse (and the ipaddress it imports: ~2 ms of every start) only for a URL that
# needs it: most are read and shown unchanged.
def quote(text: str, safe: str = "/") -> str:
    """:func:`urllib.parse.quote`."""
    if _ALWAYS_SAFE.issuperset(text) or _ALWAYS_SAFE.union(safe).issuperset(text):
        return text
    from urllib.parse import quote as quoted

    return quoted(text, safe=safe)


def unquote(text: str) -> str:
    """:func:`urllib.parse.unquote`."""
    if "%" not in text:
        return text
    from urllib.parse import unquote as unquoted

    return unquoted(text)


def parse_qsl(text: str, **options: bool) -> list[tuple[str, str]]:
    """:func:`urllib.parse.parse_qsl` (an empty query string: no options)."""
    if not text:
        return []
    from urllib.parse import parse_qsl as parsed

    return parsed(text, **options)


class BackendURL(Record):
    raw: str
    scheme: str
    username: str | None
    password: str | None
    hosts: tuple[tuple[str, int | None], ...]  # as written; empty for file:// and unix://
    path: str
    query: dict[str, str] = field(default_factory=dict)
    #: Where the password came from (``?password_file=PATH``); None: from the URL itself.
    password_file: str | None = None

    @property
    def masked(self) -> str:
        """The URL without its secrets: a password in it becomes ``***``; one read from
        a password file is left out (the URL names the file). Safe for logs, errors and
        the job's environment."""
        return self._text(reveal=False)

    @property
    def has_inline_secret(self) -> bool:
        """Whether the URL itself holds a secret (not only names a file that does)."""
        return self._text(reveal=True) != self._text(reveal=False)

    def revealed(self, password: str | None = None) -> str:
        """The URL with every secret in it (``password`` in place of a missing one):
        only for a private channel, never for a log or an environment."""
        return self._text(reveal=True, password=password)

    def _text(self, reveal: bool, password: str | None = None) -> str:
        password = self.password if self.password is not None else password
        netloc = ""
        inline = password is not None and self.password_file is None
        if self.username or inline:
            netloc = quote(self.username or "", safe="")
            if inline:
                netloc += ":" + (quote(password, safe="") if reveal else "***")
            netloc += "@"
        netloc += ",".join(
            (f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "")
            for h, p in self.hosts
        )
        text = f"{self.scheme}://{netloc}{quote(self.path, safe=_PATH_SAFE)}"
        options = [
            f"{quote(k, safe='')}={quote(self._shown_option(k, v, reveal), safe=_VALUE_SAFE)}"
            for k, v in self.query.items()
        ]
        if self.password_file is not None:
            options.append(f"password_file={quote(self.password_file, safe=_PATH_SAFE)}")
        return text + ("?" + "&".join(options) if options else "")

    def _shown_option(self, name: str, value: str, reveal: bool) -> str:
        scheme, _, rest = value.partition(":")
        user, has_password, _ = rest.partition(":")
        if name == "auth" and self.password_file is not None:
            return f"{scheme}:{user}"  # as written: the password is the file's
        if name not in SECRET_OPTIONS or reveal:
            return value
        if name == "auth":  # SCHEME:USER:PASSWORD: the user may be shown
            return f"{scheme}:{user}:***" if has_password else "***"
        return "***"

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, default)

    def duration(self, name: str, default: float, limits: Range | None = None) -> float:
        """A duration option (``?ttl=10s``), checked against its range."""
        text = self.query.get(name)
        if text is None:
            return default
        return parse_duration(text, what=f"{name} option in {self.scheme}:// URL",
                              limits=limits or RANGES.get(name))

    def integer(self, name: str, default: int, minimum: int = 1, maximum: int = 1_000_000) -> int:
        """A whole-number option (``?history=100``), checked against its range."""
        text = self.query.get(name)
        if text is None:
            return default
        if not (text.isascii() and text.isdigit() and len(text) <= 12) \
                or not minimum <= int(text) <= maximum:
            raise UsageError(
                f"invalid {name} option {text[:20]!r} in {self.scheme}:// URL: use a whole number"
                f" from {minimum} to {maximum}"
            )
        return int(text)

    def check_options(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.query) - allowed)
        if unknown:
            raise UsageError(
                f"unknown option {unknown[0]!r} in {self.scheme}:// URL"
                f" (known: {', '.join(sorted(allowed)) or 'none'})"
            )


#: Query options whose values are secrets and never shown.
SECRET_OPTIONS = {"auth", "password", "sslpassword", "sentinel_password"}


def parse_url(url: str, *, read_files: bool = True) -> BackendURL:
    """Split ``url`` into its parts or raise UsageError with one clear line (that never
    shows a password). ``?password_file=PATH`` is read here (unless ``read_files`` is
    false: for display only)."""
    if not isinstance(url, str) or "://" not in url:
        shown = _mask_raw(url) if isinstance(url, str) else type(url).__name__
        raise UsageError(
            f"malformed backend URL {shown!r}: expected SCHEME://…, e.g. file:///srv/lelect,"
            " redis://host:6379/0 or zookeeper://host:2181/lelect"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not scheme or not (scheme.isascii() and scheme.replace("+", "").isalnum()):
        raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: bad scheme")
    rest, _, fragment = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    try:
        query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text)))
    except ValueError:
        raise UsageError(f"malformed query string in backend URL {_mask_raw(url)!r}") from None
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
    hosts: list[tuple[str, int | None]] = []
    if netloc:
        for part in netloc.split(","):
            hosts.append(_parse_host(part, url))
    password_file = query.pop("password_file", None)
    if password_file is not None:
        password = _password_from_file(scheme, password_file, password, query, read_files)
    return BackendURL(
        raw=url,
        scheme=scheme,
        username=username,
        password=password,
        hosts=tuple(hosts),
        path=unquote(path),
        query=query,
        password_file=password_file,
    )


def _password_from_file(scheme: str, path: str, given: str | None, query: dict[str, str],
                        read: bool) -> str | None:
    """The password ``?password_file=PATH`` names; for ZooKeeper it completes
    ``auth=digest:USER`` (``query`` is changed in place)."""
    if scheme == "file":
        raise UsageError("file:// URLs take no password: drop ?password_file=")
    if not path:
        raise UsageError("empty password_file option: use ?password_file=/PATH/TO/FILE")
    auth = query.get("auth")
    if given is not None or (auth is not None and auth.count(":") >= 2) or "password" in query:
        raise UsageError("a password in the URL and a password_file: give the password once")
    password = read_secret_file(path, "password file", MAX_PASSWORD_FILE) if read else ""
    if "\n" in password or "\r" in password or "\0" in password:
        raise UsageError(f"password file {path}: the password must be one line")
    if scheme in ("zookeeper", "zk"):
        if auth is None or auth.count(":") != 1:
            raise UsageError("zookeeper:// takes a password file as"
                             " ?auth=digest:USER&password_file=PATH")
        query["auth"] = f"{auth}:{password}"
        return None
    return password


def read_secret_file(path: str, what: str, limit: int) -> str:
    """The text of a file holding a secret (one trailing newline dropped). Refused (78)
    when another user could change it or every user could read it: it must belong to
    this user or root, and be neither world-readable nor group- or world-writable (0600
    or 0640, as systemd's credentials and a shared deploy group have them)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what} {path} is not a regular file")
        if info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(f"{what} {path} belongs to uid {info.st_uid}, not to this user"
                              " or root: refused")
        if info.st_mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP):
            raise ConfigError(f"{what} {path} is readable or writable by other users"
                              f" (mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise UsageError(f"{what} {path} is empty")
    return text


def parse_port(text: str) -> int | None:
    """A TCP port: 1-65535 in ASCII digits, or None ("６３７９" and "²" are not ports)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _parse_host(part: str, url: str) -> tuple[str, int | None]:
    if not part:
        raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: empty host")
    if part.startswith("["):
        host, sep, tail = part[1:].partition("]")
        if not sep:
            raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: unclosed '[' in host")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: bad host")
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: empty host")
    port: int | None = None
    if port_text:
        port = parse_port(port_text)
        if port is None:
            # The port's text is not shown: it may be a password (redis://h:PASSWORD).
            shown = _mask_raw(url.replace(f":{port_text}", ":***"))
            raise UsageError(f"malformed backend URL {shown!r}: bad port (use a number"
                             " from 1 to 65535)")
    return host, port


def _mask_raw(url: str) -> str:
    """Hide what may be secret in a URL that did not parse: everything between ``://``
    and the last ``@`` (a password may hold ``/``, ``?``, ``#`` or ``@``), and the values
    of secret options (and what follows them up to the next ``NAME=``)."""
    if "@" in url:
        head, sep, _ = url.partition("://")
        url = f"{head}{sep}***{url[url.rindex('@'):]}" if sep else "***" + url[url.rindex("@"):]
    if len(url) > 200:
        url = url[:199] + "…"
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts, hiding = [], False
    for part in query.split("&"):
        name, has_value, _ = part.partition("=")
        if has_value and "=" in part:
            hiding = unquote(name).lower() in SECRET_OPTIONS
            parts.append(f"{name}=***" if hiding else part)
        else:
            parts.append("***" if hiding else part)
    return f"{base}?{'&'.join(parts)}"


def mask_url(url: str) -> str:
    """Mask the password of any URL, parsed or not."""
    try:
        return parse_url(url, read_files=False).masked
    except UsageError:
        return _mask_raw(url)
