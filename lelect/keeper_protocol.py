"""The messages between lelect and the job's keeper, one line each on their socket.

Both sides import this module: lelect as ``lelect.keeper_protocol``, the keeper (which
runs as ``python -S -I`` and must start in milliseconds) as a plain module beside it. So
it imports nothing at all, and each message is a small class: ``encode()`` gives its
line, :func:`decode` reads one back. A field is an int, a float or a word; the last
field may be ``TEXT`` (the rest of the line: messages, JSON).

lelect -> keeper: Prepare, Unprepare, Start, Lease, Signal, Stop, Release, Recipe, Exit.
keeper -> lelect: Locked, Waiting, Busy, TimedOut, Error, Started, ExecFailed, Leftovers, Exited,
Released, Suspended.
"""

TEXT = "text"
#: The longest line either side accepts (a recipe with its credentials is < 4 KiB).
MAX_LINE = 64 * 1024


class ProtocolError(ValueError):
    """A line that is no message of this protocol (a bug on one side)."""


class Message:
    """One line: ``VERB FIELD...``. Subclasses name their ``verb`` and ``fields``
    (pairs of name and kind: int, float, str for one word, or TEXT, last)."""

    __slots__ = ()
    verb = ""
    fields = ()

    def __init__(self, *values, **named):
        names = [name for name, _ in self.fields]
        given = dict(zip(names, values))
        given.update(named)
        if len(values) > len(names) or set(given) != set(names):
            raise TypeError(f"{type(self).__name__} takes {', '.join(names) or 'nothing'}")
        for name, kind in self.fields:
            value = given[name]
            object.__setattr__(self, name, value if kind is TEXT else kind(value))

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def encode(self):
        words = [self.verb]
        for name, kind in self.fields:
            value = getattr(self, name)
            if kind is TEXT:
                words.append(str(value).replace("\n", " "))
            elif kind is float:
                words.append(repr(float(value)))
            else:
                text = str(value)
                if not text or " " in text or "\n" in text:
                    raise ProtocolError(f"{name}={text!r} is not one word")
                words.append(text)
        return (" ".join(words) + "\n").encode("utf-8", "surrogateescape")

    def __eq__(self, other):
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n, _ in self.fields
        )

    def __hash__(self):
        return hash((self.verb, *(getattr(self, n) for n, _ in self.fields)))

    def __repr__(self):
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in self.fields)
        return f"{type(self).__name__}({args})"


# -- lelect -> keeper ---------------------------------------------------------------------


class Prepare(Message):
    """The candidate is next in line: fork the job's process now (it waits, running
    nothing, until a Start tells it its term), so a win costs no fork."""

    __slots__ = ()
    verb = "prepare"


class Unprepare(Message):
    """No longer next in line: the process Prepare forked exits without running."""

    __slots__ = ()
    verb = "unprepare"


class Start(Message):
    """Run the job now, with its fencing token (its once-per slot, "-" for none; its
    seat, -1 for none)."""

    __slots__ = ("term", "slot", "seat")
    verb = "start"
    fields = (("term", int), ("slot", str), ("seat", int))


class Lease(Message):
    """The lease now runs until ``deadline`` (monotonic, shared by all processes): stop
    the job at deadline - grace and kill it at the deadline unless news comes first."""

    __slots__ = ("deadline", "grace")
    verb = "lease"
    fields = (("deadline", float), ("grace", float))


class Signal(Message):
    """Forward a signal to the job's process group."""

    __slots__ = ("signum",)
    verb = "signal"
    fields = (("signum", int),)


class Stop(Message):
    """Stop the job: ``signum`` now, SIGKILL after ``grace`` (``reason`` is reported)."""

    __slots__ = ("signum", "grace", "reason")
    verb = "stop"
    fields = (("signum", int), ("grace", float), ("reason", str))


class Release(Message):
    """Let go of the local lock (the embedded backend's flock)."""

    __slots__ = ()
    verb = "release"


class Recipe(Message):
    """How to hand the leadership back if lelect dies: a HandBack as JSON (it may hold
    credentials, which is why it travels here and nowhere else)."""

    __slots__ = ("json",)
    verb = "recipe"
    fields = (("json", TEXT),)


class Exit(Message):
    """Kill whatever runs, release, and go."""

    __slots__ = ()
    verb = "exit"


# -- keeper -> lelect ---------------------------------------------------------------------


class Locked(Message):
    """The keeper won the local lock: ``term`` is settled, since ``since`` (wall clock);
    ``seat`` is the seat it took (-1: the election has none)."""

    __slots__ = ("term", "since", "seat")
    verb = "locked"
    fields = (("term", int), ("since", float), ("seat", int))


class Waiting(Message):
    """Somebody else holds the local lock: the keeper waits for it."""

    __slots__ = ()
    verb = "waiting"


class Busy(Message):
    """No-wait, and somebody else holds the local lock."""

    __slots__ = ()
    verb = "busy"


class TimedOut(Message):
    """The campaign's deadline passed before the local lock was won; nothing ran."""

    __slots__ = ()
    verb = "timedout"


class Error(Message):
    __slots__ = ("message",)
    verb = "error"
    fields = (("message", TEXT),)


class Started(Message):
    __slots__ = ("pid",)
    verb = "started"
    fields = (("pid", int),)


class ExecFailed(Message):
    __slots__ = ("message",)
    verb = "execfail"
    fields = (("message", TEXT),)


class Leftovers(Message):
    """The job exited but left ``count`` processes behind; they get the stop signal now
    and SIGKILL after ``grace``."""

    __slots__ = ("count", "grace")
    verb = "leftovers"
    fields = (("count", int), ("grace", float))


class Exited(Message):
    """The job and everything it started are gone: its shell status, and why it ended
    ("exit", or the reason of the stop that ended it; "lease" for the dead-man switch)."""

    __slots__ = ("status", "reason")
    verb = "exited"
    fields = (("status", int), ("reason", str))


class Released(Message):
    __slots__ = ()
    verb = "released"


class Suspended(Message):
    """The job was stopped from the terminal (Ctrl-Z): lelect should stop too, so the
    shell gets its prompt back; ``fg`` continues both."""

    __slots__ = ()
    verb = "suspended"


MESSAGES = {
    cls.verb: cls
    for cls in (Prepare, Unprepare, Start, Lease, Signal, Stop, Release, Recipe, Exit, Locked,
                Waiting, Busy, TimedOut, Error, Started, ExecFailed, Leftovers, Exited, Released,
                Suspended)
}


def decode(line):
    """The message a line (bytes or str, with or without its newline) carries."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "surrogateescape")
    line = line.rstrip("\n")
    verb, _, rest = line.partition(" ")
    cls = MESSAGES.get(verb)
    if cls is None:
        raise ProtocolError(f"unknown message {line[:40]!r}")
    fields = cls.fields
    if not fields:
        return cls()
    if fields[-1][1] is TEXT:
        words = rest.split(" ", len(fields) - 1) if len(fields) > 1 else [rest]
    else:
        words = rest.split(" ") if rest else []
    if len(words) != len(fields):
        raise ProtocolError(f"{verb} takes {len(fields)} fields: {line[:80]!r}")
    try:
        for word, (name, kind) in zip(words, fields):
            _check_word(word, name, kind)
        return cls(*words)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"bad {verb} message {line[:80]!r}: {exc}") from None


def _check_word(word, name, kind):
    """Numbers as this module writes them: ASCII, bounded, finite (int() alone takes
    '١٢' and 5000 digits; float() takes 'nan' and 'inf')."""
    if kind is int:
        digits = word[1:] if word[:1] == "-" else word
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):
            raise ValueError(f"{name} is not a whole number")
    elif kind is float:
        if len(word) > 40 or not word.isascii():
            raise ValueError(f"{name} is not a number")
        value = float(word)
        if value - value != 0:  # inf and nan (this module imports nothing, not even math)
            raise ValueError(f"{name} is not a finite number")


class LineReader:
    """Splits what arrives on a stream socket into messages."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        """The messages completed by ``data`` (a partial line waits for the rest, up to
        MAX_LINE bytes)."""
        self.buffer += data
        messages = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if len(line) > MAX_LINE:
                raise ProtocolError(f"a line of {len(line)} bytes (at most {MAX_LINE})")
            messages.append(decode(line))
        if len(self.buffer) > MAX_LINE:
            raise ProtocolError(f"a line of more than {MAX_LINE} bytes")
        return messages


def encode_config(options):
    """The keeper's start-up options as ``key=value`` arguments (no secrets here: argv
    is visible to every user in ps)."""
    return [f"{key}={value}" for key, value in options.items()]


def decode_config(argv):
    """``(options, command)`` from the keeper's arguments ``[key=value...] -- CMD...``."""
    options = {}
    rest = list(argv)
    while rest and rest[0] != "--":
        key, _, value = rest.pop(0).partition("=")
        options[key] = value
    return options, rest[1:]
