"""JSON text without the ``json`` package (nothing imported at all).

``compact_json(value)`` is ``json.dumps(value, separators=(",", ":"))``, byte for byte,
for plain values (dicts with str keys, lists, tuples, str, int, float, bool, None).
Written where importing ``json`` would cost a job its start:

- the keeper's hand-back recipe, sent at the job's start: importing ``json`` there
  (~1.5 ms, cold) stood between a win and its job on every backend whose client had not
  imported it already (Redis, PostgreSQL, MariaDB), and would now compete with the job's
  first instructions;
- the embedded backend's history entries, which the keeper writes beside the job it just
  started (``json``'s decoder brings ``re``: ~4 ms of CPU).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b",
            "\f": "\\f"}


def compact_json(value: Any) -> str:
    """``value`` as compact JSON, ASCII only; ValueError for a float that is not finite,
    TypeError for anything JSON has no form for (as ``json.dumps`` with ``allow_nan``
    off: the keeper must never read a NaN)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value - value != 0:  # inf or nan
            raise ValueError(f"{value!r} is not JSON")
        return float.__repr__(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact_json(item) for item in value) + "]"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"a key of type {type(key).__name__} is not JSON")
            parts.append(_string(key) + ":" + compact_json(item))
        return "{" + ",".join(parts) + "}"
    raise TypeError(f"a {type(value).__name__} is not JSON")


def _string(text: str) -> str:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return '"' + text + '"'  # the usual case: nothing to escape
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        else:
            code = ord(char)
            if code > 0xFFFF:  # outside the BMP: a surrogate pair, as json writes it
                code -= 0x10000
                out.append(f"\\u{0xD800 | (code >> 10):04x}\\u{0xDC00 | (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'
