"""``lelect campaign`` without click: the command every waiting candidate runs.

Importing click (with inspect, typing, uuid, datetime...) costs a campaign ~15 ms of CPU
and ~5 MB of memory for as long as it waits, on every candidate of a host. So
:func:`parse_campaign` reads the common form itself, from the same declarations
(:data:`lelect.options.CAMPAIGN`) and with the same conversions as the click command
(lelect.cli.campaign), and answers None for anything else: --help, an unknown or
malformed option, a value click would refuse (click then says what is wrong, as
before), --status-listen, shell completion. Click-free, like lelect.cli itself.
"""

from __future__ import annotations

import signal

from lelect.errors import UsageError

#: Options of ``campaign`` besides lelect.options.CAMPAIGN: flag -> (name, kind).
_OWN = {"--log-format": ("log_format", "log-format"), "--quiet": ("quiet", "flag"),
        "-q": ("quiet", "flag"), "--backend": ("backend", "text"), "-b": ("backend", "text")}
_GLOBAL = {"--backend", "-b"}


def signal_number(value: object) -> int | None:
    """A signal's number from its name (TERM, SIGTERM, term) or number; None if unknown.
    (lelect.cli.params.SignalName's conversion.)"""
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    if text.isdigit():
        number = int(text) if text.isascii() and len(text) <= 3 else 0
        if 0 < number < signal.NSIG:
            return number
        return None
    name = text if text.startswith("SIG") else "SIG" + text
    sig = getattr(signal.Signals, name, None) if hasattr(signal.Signals, name) else None
    return None if sig is None else int(sig)


class _Refused(Exception):
    """Not for this parser: the click command reads these arguments."""


def _options() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    from lelect.options import CAMPAIGN

    table = {flag: (name, kind, ()) for flag, (name, kind) in _OWN.items()}
    for option in CAMPAIGN:
        for flag in option.flags:
            table[flag] = (option.name, option.kind, option.flags)
    return table


def _convert(name: str, kind: str, flags: tuple[str, ...], value: str):
    """``value`` as the click option's type converts it; _Refused where click refuses."""
    try:
        if kind == "duration":
            from lelect.durations import RANGES, parse_duration

            limits = RANGES["once-per"] if name == "once_per" else RANGES.get(flags[0].lstrip("-"))
            return parse_duration(value, what="", limits=limits)
        if kind == "signal":
            number = signal_number(value)
            if number is None:
                raise _Refused
            return number
        if kind == "node-id":
            from lelect.names import validate_node_id

            return validate_node_id(value)
        if kind in ("exit-code", "count"):
            from lelect.names import MAX_HOLDERS

            low, high = (0, 255) if kind == "exit-code" else (1, MAX_HOLDERS)
            if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
                raise _Refused
            return int(value)
        if kind == "log-format":
            if value not in ("text", "json"):
                raise _Refused
            return value
        return value  # text
    except UsageError:
        raise _Refused from None


def parse_campaign(argv: list[str]) -> dict | None:
    """``lelect [-b URL] campaign ...`` as the click command would read it: a dict of
    ``url``, ``election``, ``command``, ``log_format``, ``quiet`` and ``values`` (every
    option of lelect.options.CAMPAIGN, None where not given and without a default), or
    None: the click application reads ``argv``."""
    try:
        return _parse(list(argv))
    except _Refused:
        return None


def _parse(args: list[str]) -> dict:
    url = None
    while args and args[0] != "campaign":  # the group's options: --backend only
        word = args.pop(0)
        if word.startswith("--backend="):
            url = word.split("=", 1)[1]
        elif word in _GLOBAL and args:
            url = args.pop(0)
        else:
            raise _Refused
    if not args:
        raise _Refused
    args.pop(0)
    table = _options()
    from lelect.options import CAMPAIGN

    given: dict[str, object] = {}
    positional: list[str] = []
    while args:
        word = args.pop(0)
        if word == "--":
            positional.extend(args)
            break
        if word.startswith("--"):
            flag, has_value, value = word.partition("=")
            if flag not in table:
                raise _Refused
            name, kind, flags = table[flag]
            if kind == "flag":
                if has_value:
                    raise _Refused
                given[name] = True
                continue
            if not has_value:
                if not args:
                    raise _Refused
                value = args.pop(0)
            given[name] = _convert(name, kind, flags, value)
        elif word.startswith("-") and len(word) > 1:
            for position in range(1, len(word)):  # -qn, -w5s, -w 5s
                flag = "-" + word[position]
                if flag not in table:
                    raise _Refused
                name, kind, flags = table[flag]
                if kind == "flag":
                    given[name] = True
                    continue
                value = word[position + 1:]
                if not value:
                    if not args:
                        raise _Refused
                    value = args.pop(0)
                given[name] = _convert(name, kind, flags, value)
                break
        else:
            positional.append(word)
            if len(positional) == 2:  # options end at the command, as with flock(1)
                positional.extend(args)
                break
    if len(positional) < 2:
        raise _Refused  # no election, or no command: click says so
    from lelect.names import validate_election

    try:
        election = validate_election(positional[0])
    except UsageError:
        raise _Refused from None
    values: dict[str, object] = {}
    for option in CAMPAIGN:
        if option.name in given:
            values[option.name] = given[option.name]
        elif option.kind != "flag" and option.shown is not None:
            values[option.name] = _convert(option.name, option.kind, option.flags, option.shown)
        else:
            values[option.name] = None
    return {
        "url": given.get("backend") or url or None,
        "election": election,
        "command": tuple(positional[1:]),
        "log_format": given.get("log_format", "text"),
        "quiet": bool(given.get("quiet", False)),
        "values": values,
    }


def run_campaign(parsed: dict):
    """Run the campaign :func:`parse_campaign` read (the click command's own body)."""
    from lelect.cli.logs import StderrLog

    log = StderrLog(parsed["log_format"], parsed["election"], parsed["quiet"])
    return campaign_body(parsed["url"], parsed["election"], parsed["command"], log, None,
                         dict(parsed["values"]))


def campaign_body(url: str | None, election: str, command: tuple[str, ...], log,
                  status_listen, values: dict):
    """``lelect campaign``, its options read (by click or :func:`parse_campaign`)."""
    import gc

    from lelect.campaign import CampaignOptions
    from lelect.cli import connect_url
    from lelect.durations import format_duration
    from lelect.supervisor import adopt_orphans

    code = values.pop("conflict_exit_code", None)  # -E: like flock's, for --timeout too
    given = {name: value for name, value in values.items() if value is not None}
    if code is not None:
        given.update(conflict_exit_code=code, timeout_exit_code=code)
    options = CampaignOptions(election=election, command=tuple(command), **given)
    options.check()  # out-of-range options are refused before anything connects
    status = probe = None
    if status_listen is not None:
        from lelect.campaign import CampaignStatus
        from lelect.httpserve import ProbeServer

        status = CampaignStatus()
        probe = ProbeServer(*status_listen, status_route(status)).start()
    try:
        with connect_url(url) as client:
            election_handle = client.election(election, values.get("node_id"))
            log.node_id = election_handle.candidate.node_id
            ttl = values.get("ttl")
            if ttl is not None and not client.backend.lease_based:
                log("warning", f"--ttl {format_duration(ttl)} is ignored: the embedded backend"
                    " has no lease (its flock is held for as long as the job runs)")
            adopt_orphans()  # what a killed keeper leaves behind comes to us, and is killed
            if not gc.isenabled():  # main's quick start (imports, connect) is over
                gc.freeze()  # what it loaded stays: no collection walks it again
                gc.enable()
            return election_handle.run_options(options, log, systemd=True, status=status)
    finally:
        if probe is not None:
            probe.close()


def status_route(status):
    """``--status-listen``'s answers: GET / is 200 with the leadership while leading,
    503 while waiting (or stopping)."""
    import time

    from lelect.backends.records import iso8601
    from lelect.httpserve import Response

    def route(path: str) -> Response:
        if path != "/":
            return Response.json(404, {"error": "GET / only"})
        record = {"election": status.election, "node_id": status.node_id}
        leadership = status.leading()
        if leadership is None:
            return Response.json(503, {**record, "leading": False, "term": None})
        deadline = leadership.lease_deadline
        return Response.json(200, {
            **record, "leading": True, "term": leadership.term,
            "since": iso8601(leadership.since),
            "lease_left_s": None if deadline is None else round(deadline - time.monotonic(), 3),
        })

    return route
