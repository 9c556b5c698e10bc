"""The ``lelect`` command line: thin click commands over the library.

Commands are imported only when run, so ``lelect --help`` costs little more than
importing click. Every LelectError becomes one line on stderr and its exit status.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from lelect import __version__
from lelect.errors import LelectError

EXIT_STATUSES = """\b
Exit statuses:
  job's own  the job ran and exited (killed by signal N: 128+N)
  2          usage error (bad flag, election name, URL, missing -- CMD)
  69         backend unreachable or failing
  70         internal error (a bug in lelect)
  73         leadership lost while the job ran; the job was stopped
  74         could not write to stdout (closed, disk full; not a reader that left)
  75         --no-wait and someone else leads (--conflict-exit-code)
  78         configuration refused (unsafe directory, lease/grace, corrupt state)
  79         --max-runtime reached; the job was stopped
  124        --timeout ran out before leadership (-E overrides, like flock -E)
  127        the command was not found or is not executable
  128+N      lelect was stopped by signal N (it ends by that signal itself)"""

#: name -> (module, attribute, one-line help); imported only when the command runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "campaign": ("lelect.cli.campaign", "campaign", "Run a job only while this node leads."),
    "leader": ("lelect.cli.leader", "leader", "Show who leads an election."),
    "watch": ("lelect.cli.watch", "watch", "Live table of leader, members and heartbeats."),
    "health": ("lelect.cli.health", "health", "Group health from heartbeats (exit 0/1/2)."),
    "resign": ("lelect.cli.resign", "resign", "Ask the leader to step down."),
    "history": ("lelect.cli.history", "history", "Every leadership: who, when, how it ended."),
    "exporter": ("lelect.cli.exporter", "exporter", "Prometheus metrics of elections (/metrics)."),
    "simulate": ("lelect.cli.simulate", "simulate", "Simulate Bully, Ring or Raft election."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    epilog=EXIT_STATUSES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--backend",
    "-b",
    metavar="URL",
    envvar="LELECT_BACKEND",
    help="Where elections live: file:///DIR (default: embedded, $LELECT_HOME or"
    f" {'/var/lib/lelect' if os.geteuid() == 0 else '~/.local/state/lelect'}), redis://[user:pw@]host:6379/0, rediss://…,"
    " zookeeper://h1:2181,h2:2181/lelect, etcd://h1:2379,h2:2379/lelect,"
    " postgresql://user:pw@db:5432/app. Env: LELECT_BACKEND.",
)
@click.version_option(__version__, "--version", prog_name="lelect")
@click.pass_context
def cli(ctx: click.Context, backend: str | None) -> None:
    """Leader election for singleton jobs: exactly one copy runs at a time.

    \b
      lelect campaign nightly -- ./report.sh    # guard a singleton job
      lelect leader nightly --json              # who leads, for scripts
      lelect watch nightly                      # live table of the group
      lelect health nightly                     # exit 0/1/2 for monitoring
      lelect resign nightly                     # ask the leader to step down
      lelect history nightly                    # who led when, and how it ended
    """
    ctx.obj = {"backend": backend}


def open_client(ctx: click.Context, *, create: bool = True):
    """The library's front door (:func:`lelect.connect`) on the backend named by
    --backend / LELECT_BACKEND (embedded by default). Readers pass ``create=False``:
    they create nothing (the embedded backend's directory)."""
    import lelect

    return lelect.connect(backend_url(ctx), create=create)


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
    line = f"lelect: {message}"
    log = sys.modules.get("lelect.cli.logs")
    if log is not None and log.ACTIVE is not None and log.ACTIVE.fmt == "json":
        # --log-format json: the error is a JSON line like the rest of the log.
        line = log.ACTIVE.format("error", message.removeprefix("error: "))
    try:
        click.echo(line, err=True)
    except (OSError, ValueError):
        pass  # stderr is closed or failing: the status says it


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every failure into one line + status."""
    if "_LELECT_COMPLETE" in os.environ:  # a shell asks for completions
        from lelect.cli.completion import register

        register()
    from lelect.cli import streams

    streams.guard()
    try:
        status = cli.main(args=argv, prog_name="lelect", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        command = exc.ctx.command_path if exc.ctx else "lelect"
        _error(f"{exc.format_message()} (see '{command} --help')")
        status = 2
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.Abort:
        status = 130
    except click.ClickException as exc:
        _error(exc.format_message())
        status = exc.exit_code
    except LelectError as exc:
        _error(f"error: {exc}")
        status = exc.exit_status
    except KeyboardInterrupt:
        status = 130
    except streams.OutputFailed as exc:
        _error(f"cannot write to stdout: {exc.strerror}")
        status = streams.EXIT_OUTPUT_FAILED
    except Exception as exc:  # noqa: BLE001 - the one place a bug becomes status 70
        _error(
            f"internal error: {type(exc).__name__}: {exc} — this is a bug in lelect;"
            " please report it with the command you ran (LELECT_DEBUG=1 shows the traceback)"
        )
        if os.environ.get("LELECT_DEBUG"):
            import traceback

            traceback.print_exc()
        status = 70
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
