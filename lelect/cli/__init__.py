"""The ``lelect`` command line: thin click commands over the library.

Commands are imported only when run, so ``lelect --help`` costs little more than
importing click. Every LelectError becomes one line on stderr and its exit status.

This module imports no click: ``lelect campaign`` with the options it parses itself
(lelect.cli.quick) runs without it (~15 ms of CPU and ~5 MB per candidate); everything
else goes to the click application in lelect.cli.app.
"""

from __future__ import annotations

import os
import sys

from lelect.errors import LelectError
from lelect.status import ExitStatus, exit_table_text

TYPE_CHECKING = False  # not typing's (~1.5 ms): annotations only
if TYPE_CHECKING:
    import click

EXIT_STATUSES = exit_table_text()

#: name -> (module, attribute, one-line help); imported only when the command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "campaign": ("lelect.cli.campaign", "campaign", "Run a job only while this node leads."),
    "leader": ("lelect.cli.leader", "leader", "Show who leads an election."),
    "watch": ("lelect.cli.watch", "watch", "Live table of leader, members and heartbeats."),
    "health": ("lelect.cli.health", "health", "Group health from heartbeats (exit 0/1/2)."),
    "resign": ("lelect.cli.resign", "resign", "Ask the leader to step down (or hand over)."),
    "proclaim": ("lelect.cli.proclaim", "proclaim", "Publish a new value for the leader."),
    "history": ("lelect.cli.history", "history", "Every leadership: who, when, how it ended."),
    "exporter": ("lelect.cli.exporter", "exporter", "Prometheus metrics of elections (/metrics)."),
    "simulate": ("lelect.cli.simulate", "simulate", "Simulate Bully, Ring or Raft election."),
}


#: Each backend and the distribution its client library comes from (None: lelect's own
#: standard-library client). Looked up in the installed metadata, never imported.
CLIENT_LIBRARIES = {
    "file": None,
    "redis": None,
    "zookeeper": "kazoo",
    "etcd": None,
    "postgresql": None,
    "mysql": "PyMySQL",
    "exporter": "prometheus_client",
}


def version_details() -> str:
    """Python, platform and every backend's client library version, from metadata."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"python {platform.python_version()} ({platform.python_implementation()}),"
             f" {platform.system()} {platform.release()}"]
    for distribution in ("click", "rich", "psutil"):
        try:
            lines.append(f"{distribution} {version(distribution)}")
        except PackageNotFoundError:
            lines.append(f"{distribution} not installed")
    for backend, distribution in CLIENT_LIBRARIES.items():
        if distribution is None:
            lines.append(f"{backend}: lelect's own client (standard library)")
            continue
        try:
            lines.append(f"{backend}: {distribution} {version(distribution)}")
        except PackageNotFoundError:
            lines.append(f"{backend}: {distribution} not installed")
    return "\n".join(lines)


#: The arguments main() was given (the --version callback looks for --verbose there:
#: click runs eager callbacks before it has seen the later flags).
_ARGV: list[str] = []


def __getattr__(name: str):
    """``cli`` and ``LazyGroup`` live in lelect.cli.app (click), loaded when asked for."""
    if name in ("cli", "LazyGroup"):
        from lelect.cli import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_client(ctx: click.Context, *, create: bool = True):
    """The library's front door (:func:`lelect.connect`) on the backend named by
    --backend / LELECT_BACKEND (embedded by default). Readers pass ``create=False``:
    they create nothing (the embedded backend's directory)."""
    return connect_url(backend_url(ctx), create=create)


def connect_url(url: str | None, *, create: bool = True):
    """:func:`open_client` for a URL already read (None: LELECT_BACKEND or embedded)."""
    import lelect

    if url:
        _warn_password_in_argv(url)
    return lelect.connect(url, create=create)


def _warn_password_in_argv(url: str) -> None:
    """-b is argv, which every user of the host reads in ps for as long as lelect runs."""
    from lelect.backends.urls import parse_url
    from lelect.errors import UsageError

    try:
        inline = parse_url(url, read_files=False).has_inline_secret
    except UsageError:
        return  # connect() says what is wrong with it
    if inline:
        _error("warning: the password in -b/--backend is visible to every user in ps: use"
               " ?password_file=PATH or LELECT_BACKEND_FILE (see docs/security.md)")


def backend_url(ctx: click.Context) -> str | None:
    root = ctx.find_root()
    # The command's own --backend first; during shell completion the group callback
    # has not run: read its parameter.
    return (
        ctx.meta.get("lelect.backend")
        or (root.obj or {}).get("backend")
        or (root.params or {}).get("backend")
    )


def _error(message: str) -> None:
    from lelect.names import printable

    line = f"lelect: {printable(message)}"
    log = sys.modules.get("lelect.cli.logs")
    if log is not None and log.ACTIVE is not None and log.ACTIVE.fmt == "json":
        # --log-format json: the error is a JSON line like the rest of the log.
        line = log.ACTIVE.format("error", message.removeprefix("error: "))
    try:
        stream = sys.stderr  # as click.echo(line, err=True) wrote it
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass  # stderr is closed or failing: the status says it


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every failure into one line + status."""
    if "_LELECT_COMPLETE" in os.environ:  # a shell asks for completions
        from lelect.cli.completion import register

        register()
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    from lelect.cli import streams

    streams.guard()
    quick = None
    if "_LELECT_COMPLETE" not in os.environ:
        from lelect.cli.quick import parse_campaign

        quick = parse_campaign(_ARGV)
    try:
        if quick is not None:
            import gc

            # A start is mostly imports: no collection walks their objects while they
            # load (campaign_body collects again, start-up frozen, before it waits).
            gc.disable()
            from lelect.cli.quick import run_campaign

            try:
                status = run_campaign(quick)
            except KeyboardInterrupt:
                try:  # as click's Abort: a new line, then the status
                    sys.stderr.write("\n")
                except (OSError, ValueError, AttributeError):
                    pass
                raise
        else:
            status = _click_main(argv)
    except LelectError as exc:
        _error(f"error: {exc}")
        status = exc.exit_status
    except KeyboardInterrupt:
        status = ExitStatus.CANCELLED
    except streams.OutputFailed as exc:
        _error(f"cannot write to stdout: {exc.strerror}")
        status = ExitStatus.OUTPUT_FAILED
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes status 70
        _error(
            f"internal error: {type(exc).__name__}: {exc} — this is a bug in lelect;"
            " please report it with the command you ran (LELECT_DEBUG=1 shows the traceback)"
        )
        if os.environ.get("LELECT_DEBUG"):
            import traceback

            traceback.print_exc()
        status = ExitStatus.INTERNAL
    result = status if hasattr(status, "signal") else None  # a CampaignResult
    status = getattr(status, "status", status)
    code = status if isinstance(status, int) else 0
    # Everything is released and closed by now. Skip the interpreter's teardown: after a
    # campaign it would compete for the CPU with the next leader's start.
    try:
        sys.stdout.flush()
    except streams.OutputFailed as exc:
        _error(f"cannot write to stdout: {exc.strerror}")
        code = code or streams.EXIT_OUTPUT_FAILED
    except (OSError, ValueError):
        code = code or streams.EXIT_OUTPUT_FAILED
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if result is not None:
        # Told to stop by a signal, lelect ends by that signal too (CampaignResult.exit),
        # as supervisors expect of a clean stop.
        result.exit()
    os._exit(code)


def _click_main(argv: list[str] | None):
    """The click application's status (its own exceptions turned into one line)."""
    import click

    from lelect.cli.app import cli

    try:
        return cli.main(args=argv, prog_name="lelect", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(ExitStatus.USAGE)
        command = exc.ctx.command_path if exc.ctx else "lelect"
        _error(f"{exc.format_message()} (see '{command} --help')")
        return ExitStatus.USAGE
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return ExitStatus.CANCELLED
    except click.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
