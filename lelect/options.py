"""The campaign's options, declared once: name, default, flags and help. The CLI builds
its click options from :data:`CAMPAIGN`, :class:`lelect.campaign.CampaignOptions` and
the core's :class:`~lelect.campaign_core.Policy` take their defaults from
:data:`DEFAULTS`, and the keeper's configuration is made from the options. Standard
library only (the core imports it)."""

from __future__ import annotations

import signal as _signal

from lelect.frozen import Record

#: The grace between the stop signal and SIGKILL when nothing else is said.
DEFAULT_GRACE = 10.0


class Option(Record):
    """One ``campaign`` option. ``kind``: flag, duration, signal, exit-code, node-id or
    text (the CLI maps each to its click type); ``shown``: the default as ``--help``
    shows it (None: shown by the help text itself, or nothing to show)."""

    name: str
    default: object
    flags: tuple[str, ...]
    kind: str
    help: str
    metavar: str | None = None
    shown: str | None = None


CAMPAIGN: tuple[Option, ...] = (
    Option("node_id", None, ("--id",), "node-id", "Node id shown to people (default: hostname:pid).",
           "ID"),
    Option("no_wait", False, ("--no-wait", "-n"), "flag",
           "If someone else leads, exit at once (status 75), like flock -n."),
    Option("conflict_exit_code", None, ("--conflict-exit-code", "-E"), "exit-code",
           "Exit status when someone else leads with --no-wait, and when --timeout runs out,"
           " like flock -E [default: 75 and 124].", "N"),
    Option("timeout", None, ("--timeout", "-w"), "duration",
           "Give up waiting for leadership after DUR (status 124); 0 tries once, like flock -w 0.",
           "DUR"),
    Option("ttl", None, ("--ttl",), "duration",
           "Lease length on lease backends (redis, zookeeper, etcd, postgresql); renewed every"
           " ttl/3.", "DUR"),
    Option("stop_signal", int(_signal.SIGTERM), ("--stop-signal",), "signal",
           "Signal that asks the job to stop; SIGKILL follows after --grace.", shown="TERM"),
    Option("grace", None, ("--grace",), "duration",
           f"Time between the stop signal and SIGKILL [default: {DEFAULT_GRACE:g}s, or what fits"
           " the lease].", "DUR"),
    Option("max_runtime", None, ("--max-runtime",), "duration",
           "Stop the job after it ran for DUR (status 79).", "DUR"),
    Option("hold_at_least", 0.0, ("--hold-at-least",), "duration",
           "Keep the leadership for DUR even if the job ends sooner (cron on skewed clocks).",
           "DUR", "0s"),
    Option("once_per", None, ("--once-per",), "duration",
           "Run the job successfully at most once per DUR slot of the backend's clock (UTC, from"
           " the epoch); a failed run leaves the slot open.", "DUR"),
    Option("holders", 1, ("--holders",), "count",
           "Let up to N candidates lead at once, each in its own seat (LELECT_SEAT, 0..N-1)"
           " with its own term; every candidate must give the same N.", "N", "1"),
    Option("once_key", None, ("--once-key",), "text",
           "Like --once-per, with the slot named by KEY (e.g. \"$(date -u +%F)\").", "KEY"),
    Option("value", None, ("--value",), "text",
           "Publish TEXT (at most 4 KiB) with the leadership while it holds: leader --json,"
           " watch and observe() show it, the job gets it as LELECT_VALUE, and the job may"
           " replace it with lelect proclaim NAME --term \"$LELECT_TERM\" NEW.", "TEXT"),
    Option("restart", False, ("--restart",), "flag",
           "Stay in the race: after the job ends, campaign again (a failing job backs off); an"
           " unreachable backend never ends it."),
    Option("restart_delay", 1.0, ("--restart-delay",), "duration",
           "With --restart: a job runs at most once per DUR (at least 100ms); a failing job backs"
           " off from DUR, doubling up to 30s.", "DUR", "1s"),
    Option("resign_cooldown", 10.0, ("--resign-cooldown",), "duration",
           "With --restart, wait this long after a resign request before rejoining.", "DUR",
           "10s"),
    Option("heartbeat_interval", 2.0, ("--heartbeat-interval",), "duration",
           "Publish a heartbeat this often (0 disables).", "DUR", "2s"),
    Option("forget_after", 3600.0, ("--forget-after",), "duration",
           "How long a dead member stays listed.", "DUR", "1h"),
)

#: name -> default, for every campaign option.
DEFAULTS: dict[str, object] = {option.name: option.default for option in CAMPAIGN}


def default(name: str):  # noqa: ANN201 - each field's own type
    return DEFAULTS[name]
