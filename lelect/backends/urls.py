"""Backend URLs, like database URLs: ``file:///srv/lelect``, ``redis://:pw@host:6379/0``,
``zookeeper://h1:2181,h2:2181/lelect``. Options go in the query string."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

from lelect.durations import RANGES, Range, parse_duration
from lelect.errors import UsageError


@dataclass(frozen=True)
class BackendURL:
    raw: str
    scheme: str
    username: str | None
    password: str | None
    hosts: tuple[tuple[str, int | None], ...]  # as written; empty for file:// and unix://
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ``***``."""
        netloc = ""
        if self.username or self.password is not None:
            netloc = quote(self.username or "", safe="")
            if self.password is not None:
                netloc += ":***"
            netloc += "@"
        netloc += ",".join(
            (f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "")
            for h, p in self.hosts
        )
        text = f"{self.scheme}://{netloc}{self.path}"
        if self.query:
            text += "?" + "&".join(
                f"{k}={'***' if k in SECRET_OPTIONS else v}" for k, v in self.query.items()
            )
        return text

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
        if not (text.isascii() and text.isdigit()) or not minimum <= int(text) <= maximum:
            raise UsageError(
                f"invalid {name} option {text!r} in {self.scheme}:// URL: use a whole number"
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
SECRET_OPTIONS = {"auth", "password", "sslpassword"}


def parse_url(url: str) -> BackendURL:
    """Split ``url`` into its parts or raise UsageError with one clear line."""
    if not isinstance(url, str) or "://" not in url:
        raise UsageError(
            f"malformed backend URL {url!r}: expected SCHEME://…, e.g. file:///srv/lelect,"
            " redis://host:6379/0 or zookeeper://host:2181/lelect"
        )
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if not scheme or not scheme.replace("+", "").isalnum():
        raise UsageError(f"malformed backend URL {url!r}: bad scheme {scheme!r}")
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
    return BackendURL(
        raw=url,
        scheme=scheme,
        username=username,
        password=password,
        hosts=tuple(hosts),
        path=unquote(path),
        query=query,
    )


def _parse_host(part: str, url: str) -> tuple[str, int | None]:
    if not part:
        raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: empty host")
    if part.startswith("["):
        host, sep, tail = part[1:].partition("]")
        if not sep:
            raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: unclosed '[' in host")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: bad host {part!r}")
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise UsageError(f"malformed backend URL {_mask_raw(url)!r}: empty host")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(
                f"malformed backend URL {_mask_raw(url)!r}: bad port {port_text!r}"
            )
        port = int(port_text)
    return host, port


def _mask_raw(url: str) -> str:
    """Mask a password in a URL that did not parse (best effort)."""
    head, sep, tail = url.partition("://")
    if not sep or "@" not in tail.split("/", 1)[0]:
        return url
    userinfo, rest = tail.split("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{head}://{user}:***@{rest}" if ":" in userinfo else url


def mask_url(url: str) -> str:
    """Mask the password of any URL, parsed or not."""
    try:
        return parse_url(url).masked
    except UsageError:
        return _mask_raw(url)
