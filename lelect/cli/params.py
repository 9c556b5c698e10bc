"""Click parameter types shared by the commands."""

from __future__ import annotations

import signal

import click

from lelect.durations import parse_duration
from lelect.errors import UsageError
from lelect.names import validate_election


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value, what=f"duration for {param.opts[0] if param else 'option'}")
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class SignalName(click.ParamType):
    name = "SIGNAL"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        if text.isdigit():
            number = int(text)
            if 0 < number < signal.NSIG:
                return number
        else:
            name = text if text.startswith("SIG") else "SIG" + text
            sig = getattr(signal.Signals, name, None) if hasattr(signal.Signals, name) else None
            if sig is not None:
                return int(sig)
        self.fail(f"unknown signal {value!r}: use a name like TERM, INT, HUP or a number", param, ctx)


class ElectionName(click.ParamType):
    name = "ELECTION"

    def convert(self, value, param, ctx):
        try:
            return validate_election(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        try:
            from lelect.cli import open_backend

            with open_backend(ctx) as backend:
                names = backend.elections()
        except Exception:  # noqa: BLE001 - completion must never fail loudly
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


DURATION = Duration()
SIGNAL = SignalName()
ELECTION = ElectionName()


def _remember_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["lelect.backend"] = value


def backend_option(command):
    """``--backend``/``-b`` after the command name too (``lelect leader x -b URL``):
    the same as the global option, and it wins over it and LELECT_BACKEND."""
    return click.option(
        "--backend", "-b", metavar="URL", expose_value=False, is_eager=True,
        callback=_remember_backend,
        help="Where elections live (as `lelect --backend`; overrides LELECT_BACKEND).",
    )(command)
