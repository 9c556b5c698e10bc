"""What lelect keeps in an election's notes (:meth:`Backend.put_note`) for a leader's
value and for a handover to a named node: the keys and the codecs, once.

Standard library only, and no dataclasses (nor enum: lelect.errors is imported where a
value is refused): the job's keeper reads a handover note on its way to the embedded
backend's flock, and must start in milliseconds.

- ``value.<term>``: the text the leadership of that term proclaimed (UTF-8, at most
  :data:`MAX_VALUE` bytes). Keyed by term, so a stale writer's value can never be shown
  for a newer leader: a reader looks only at the term that leads now.
- ``handover``: ``{"to": NODE, "term": T, "ttl": S}``, written by ``resign --to NODE``
  before it asks term T to step down. While it lives (S seconds), a candidate other than
  NODE that wins a term above T steps down at once and waits.
"""

#: The longest value a leader may publish, in bytes of UTF-8.
MAX_VALUE = 4096
HANDOVER_KEY = "handover"
#: The shortest time a handover reserves the election for the named node.
MIN_HANDOVER_TTL = 10.0
#: Added to the reservation: the old leader stops its job first (its --grace, 10 s by
#: default) and only then releases; the named node must still be the only one let in.
HANDOVER_GRACE = 10.0


def value_key(term):
    """The note that holds the value of the leadership of ``term``."""
    return f"value.{int(term)}"


def encode_value(value):
    """``value`` as stored, or UsageError (not text, not UTF-8, over MAX_VALUE bytes)."""
    from lelect.errors import UsageError

    if not isinstance(value, str):
        raise UsageError("a value is text")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("a value must be UTF-8 text") from None
    if len(data) > MAX_VALUE:
        raise UsageError(f"a value is at most {MAX_VALUE} bytes (this one has {len(data)})")
    return data


def decode_value(data):
    """A stored value as text (None: none, or not one lelect could have written)."""
    if data is None or len(data) > MAX_VALUE:
        return None
    return bytes(data).decode("utf-8", "replace")


def handover_ttl(lease_ttl=None):
    """How long ``resign --to`` reserves the election for the named node: two leases (a
    leader that dies while stopping frees the election only when its lease runs out),
    at least :data:`MIN_HANDOVER_TTL`, plus the old leader's grace to stop its job."""
    return max(2 * (lease_ttl or 0.0), MIN_HANDOVER_TTL) + HANDOVER_GRACE


def encode_handover(to, term, ttl):
    import json  # lazily: the job's keeper reads notes on its way to the job

    return json.dumps({"to": to, "term": int(term), "ttl": float(ttl)},
                      separators=(",", ":")).encode("utf-8")


class Handover:
    """A handover note as read: the leadership of ``term`` is handed to node ``to``; the
    note lives ``ttl`` seconds from its writing."""

    __slots__ = ("to", "term", "ttl")

    def __init__(self, to, term, ttl):
        self.to, self.term, self.ttl = to, term, ttl

    def bars(self, node_id, term):
        """True if a candidate ``node_id`` that won ``term`` must not take the leadership."""
        return node_id != self.to and term > self.term

    def __repr__(self):
        return f"Handover(to={self.to!r}, term={self.term}, ttl={self.ttl})"


def decode_handover(data):
    """A stored handover note, or None (none, or garbage: a note nobody can read
    reserves nothing)."""
    if not data or len(data) > 4096:
        return None
    import json  # lazily: the job's keeper reads notes on its way to the job

    try:
        raw = json.loads(bytes(data).decode("utf-8"))
        to, term = raw["to"], raw["term"]
        ttl = float(raw.get("ttl", handover_ttl()))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None  # (a nesting deeper than the parser recurses is garbage too)
    if not isinstance(to, str) or not to or isinstance(term, bool) or not isinstance(term, int):
        return None
    if not 0 < ttl < 86400:
        ttl = handover_ttl()
    return Handover(to, term, ttl)
