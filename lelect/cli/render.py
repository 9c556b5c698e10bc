"""Rendering for ``watch`` and ``health``: the table and the JSON show the same
:class:`~lelect.health.GroupHealth`. rich is imported only when a table is drawn."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lelect.backends.records import HistoryEntry
from lelect.durations import format_duration
from lelect.health import (
    ALIVE,
    CRITICAL,
    DEAD,
    DEGRADED,
    HEALTHY,
    SUSPECT,
    GroupHealth,
    MemberHealth,
)
from lelect.names import printable

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

STYLES = {
    ALIVE: "green",
    SUSPECT: "yellow",
    DEAD: "bold red",
    HEALTHY: "bold green",
    DEGRADED: "bold yellow",
    CRITICAL: "bold red",
}
NO_CANDIDATES = "no candidates"


# -- JSON -------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> float | None:
    """A finite float rounded for people, or None (garbage never becomes NaN in JSON)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def member_json(member: MemberHealth, *, phi: bool = False) -> dict[str, Any]:
    beat = member.heartbeat
    record: dict[str, Any] = {
        "node_id": member.node_id,
        "role": member.role,
        "status": member.status,
        "last_seen_s": _number(member.last_seen_s),
        "cpu_percent": _number(beat.cpu_percent, 1) if beat else None,
        "memory_percent": _number(beat.memory_percent, 1) if beat else None,
    }
    if phi:
        record["phi"] = _number(member.phi)
    record.update(
        host=beat.host if beat else None,
        pid=beat.pid if beat else None,
        term=beat.term if beat else None,
        seq=beat.seq if beat else None,
        load1=_number(beat.load1, 2) if beat else None,
        disk_percent=_number(beat.disk_percent, 1) if beat else None,
        net_bytes_sent=beat.net_bytes_sent if beat else None,
        net_bytes_recv=beat.net_bytes_recv if beat else None,
    )
    if beat is not None and beat.seat is not None:
        record["seat"] = beat.seat
    if member.stale_leader:
        record["stale_leader"] = True
    if member.error:
        record["error"] = member.error
    return record


def group_json(group: GroupHealth, *, phi: bool = False) -> dict[str, Any]:
    """DESIGN.md's shape (election, status, leader, members); ``phi`` for health."""
    return {
        "election": group.election,
        "status": group.status,
        "leader": group.leader.to_json() if group.leader else None,
        **({"holders": [seat.to_json() for seat in group.seats]} if group.seats else {}),
        "members": [member_json(m, phi=phi) for m in group.members],
    }


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, allow_nan=False, ensure_ascii=False)


# -- tables ----------------------------------------------------------------------------


def _clean(text: object, limit: int | None = None) -> str:
    """Printable text only (a garbage record must not drive the terminal), shortened to
    ``limit`` if given (never a node id: two may differ only at their end)."""
    shown = printable(text)
    return shown if limit is None or len(shown) <= limit else shown[: limit - 1] + "…"


def _percent(value: float | None) -> str:
    number = _number(value, 1)
    return "-" if number is None else f"{number:.1f}%"


def _age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "never"
    if seconds >= 86400:
        return f"{seconds // 86400:.0f}d ago"
    return f"{format_duration(seconds)} ago"


def _phi(value: float) -> str:
    if not math.isfinite(value):
        return "inf"
    if value >= 1e6:
        return ">1e6"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _since(epoch: float | None) -> str:
    if epoch is None or not math.isfinite(epoch):
        return ""
    moment = time.localtime(epoch)
    today = time.localtime()[:3] == moment[:3]
    stamp = time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M:%S", moment)
    return f" · since {stamp} ({_age(max(0.0, time.time() - epoch))})"


def _note(member: MemberHealth) -> str:
    if member.error:
        return member.error
    if member.stale_leader:
        return "heartbeat still says leader (stale)"
    return ""


def group_title(group: GroupHealth):
    from rich.text import Text

    title = Text.assemble((_clean(group.election, 128), "bold"), "  ")
    if group.seats:
        held = sum(1 for seat in group.seats if seat.holder is not None)
        title.append(f"{held} of {len(group.seats)} seats held",
                     style="bold red" if not held else "")
    elif group.leader is None:
        title.append("no leader", style="bold red")
    else:
        leader = group.leader
        title.append("leader ")
        title.append(_clean(leader.node_id), style="bold")
        title.append(f" · term {leader.term}{_since(leader.since)}")
        if leader.value is not None:
            title.append(f" · value {_clean(leader.value, 80)}")
    title.append("  ")
    title.append(group.status, style=STYLES[group.status])
    return title


def _seat_of(group: GroupHealth, member: MemberHealth) -> str:
    """`` seat S`` for a holder of an election with seats."""
    for seat in group.seats:
        if seat.holder is not None and seat.holder.node_id == member.node_id:
            return f" seat {seat.seat}"
    return ""


def group_table(group: GroupHealth, *, phi: bool = False) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = [group_title(group)]
    if not group.members and group.leader is not None:
        parts.append(Text("  no heartbeats: the leader publishes none (--heartbeat-interval 0?)"
                          " and no other candidate is known", style="dim"))
    elif not group.members:
        parts.append(Text(f"  {NO_CANDIDATES}", style="dim"))
    else:
        table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold dim")
        # Node ids are never cut: on a narrow terminal the NODE column folds them over
        # lines, and every other column keeps the width of what it shows.
        table.add_column("NODE", overflow="fold", ratio=1)
        rows = []
        for member in group.members:
            beat = member.heartbeat
            load = _number(beat.load1, 2) if beat else None
            row = [
                Text(_clean(member.node_id), style="bold" if member.role == "leader" else ""),
                Text(member.role + _seat_of(group, member) + ("*" if _note(member) else "")),
                Text(_age(member.last_seen_s)),
                Text(_percent(beat.cpu_percent if beat else None)),
                Text(_percent(beat.memory_percent if beat else None)),
                Text("-" if load is None else f"{load:.2f}"),
                Text(member.status, style=STYLES[member.status]),
            ]
            if phi:
                row.append(Text(_phi(member.phi)))
            rows.append(row)
        names = ("ROLE", "LAST BEAT", "CPU", "MEM", "LOAD", "STATUS", "PHI")[: len(rows[0]) - 1]
        for index, name in enumerate(names, start=1):
            width = max(len(name), *(row[index].cell_len for row in rows))
            table.add_column(name, no_wrap=True, min_width=width, max_width=width,
                             justify="right" if name in ("CPU", "MEM", "LOAD", "PHI") else "left")
        for row in rows:
            table.add_row(*row)
        parts.append(table)
        for member in group.members:
            if note := _note(member):
                line = f"  * {_clean(member.node_id)}: {_clean(note, 200)}"
                parts.append(Text(line, style="yellow"))
    if group.leader is not None and group.members and group.leader_member is None:
        parts.append(Text("  the leader publishes no heartbeats", style="dim"))
    parts.append(Text(""))
    return Group(*parts)


def groups_table(
    groups: Sequence[GroupHealth], *, phi: bool = False, error: str | None = None
) -> RenderableType:
    """Every group's table, and the backend's error (if the last look failed)."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = [group_table(g, phi=phi) for g in groups]
    if not groups:
        parts.append(Text("no elections", style="dim"))
    if error:
        parts.append(Text(f"backend error (retrying): {_clean(error, 200)}", style="bold red"))
    return Group(*parts)


def history_table(election: str, entries: Sequence[HistoryEntry]) -> RenderableType:
    """One row per leadership, oldest first."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    if not entries:
        return Text(f"{_clean(election, 128)}: no leaderships recorded", style="dim")
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold dim")
    seated = any(entry.seat is not None for entry in entries)
    for name in ("SEAT", "TERM", "NODE", "STARTED", "ENDED", "OUTCOME", "STATUS")[not seated:]:
        table.add_column(name, no_wrap=True, min_width=len(name))
    table.add_column("NOTE", overflow="fold", ratio=1)  # the one column that gives way
    styles = {"running": "bold green", "exited": "", "resigned": "cyan", "lost": "bold red",
              "stopped": "yellow", "vanished": "bold red"}
    for entry in entries:
        note = entry.reason or ""
        if entry.slot:
            note = f"slot {entry.slot}" + (f"; {note}" if note else "")
        table.add_row(
            *([str(entry.seat)] if seated else []), str(entry.term), Text(_clean(entry.node_id, 64)), _stamp(entry.started),
            _stamp(entry.ended, entry.started), Text(entry.outcome, style=styles.get(entry.outcome, "")),
            "" if entry.exit_status is None else str(entry.exit_status), Text(_clean(note, 80)),
        )
    return Group(Text(_clean(election, 128), style="bold"), table)


def _stamp(epoch: float | None, day_of: float | None = None) -> str:
    """Local time; the date only when it is not the day of ``day_of`` (the start)."""
    if epoch is None or not math.isfinite(epoch):
        return ""
    moment = time.localtime(epoch)
    if day_of is not None and math.isfinite(day_of) and time.localtime(day_of)[:3] == moment[:3]:
        return time.strftime("%H:%M:%S", moment)
    return time.strftime("%Y-%m-%d %H:%M:%S", moment)


def console(stderr: bool = False) -> Console:
    """A terminal's own width; piped into a file or a script, whole lines (160 columns,
    or $COLUMNS)."""
    import os
    import sys

    from rich.console import Console

    class PipedConsole(Console):
        """Not a terminal: lines without the padding of a table's last column."""

        def print(self, *objects: Any, **options: Any) -> None:
            if self.is_terminal:
                return super().print(*objects, **options)
            with self.capture() as captured:
                super().print(*objects, **options)
            self.file.write("\n".join(line.rstrip() for line in captured.get().split("\n")))
            self.file.flush()

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = 160
    return PipedConsole(stderr=stderr, highlight=False, width=width)
