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
from lelect.status import ExitStatus, exit_table_text

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
    # No envvar here: lelect.backends.default_url reads LELECT_BACKEND_FILE (first) and
    # LELECT_BACKEND, so the library and the CLI agree on where a URL comes from.
    help="Where elections live: file:///DIR (default: embedded, $LELECT_HOME or"
    f" {'/var/lib/lelect' if os.geteuid() == 0 else '~/.local/state/lelect'}), redis://[user@]host:6379/0?password_file=PATH, rediss://…,"
    " redis+sentinel://s1:26379,s2:26379/MASTER/0 (rediss+sentinel://… for TLS),"
    " zookeeper://h1:2181,h2:2181/lelect, etcd://h1:2379,h2:2379/lelect,"
    " postgresql://user@db:5432/app, mysql://user@db:3306/app. Env: LELECT_BACKEND_FILE (a file holding the URL),"
    " LELECT_BACKEND.",
)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: _print_version(ctx, value),
              help="Show the version and exit; with --verbose, Python's and the backends'"
              " client libraries' too.")
@click.option("--verbose", "-v", is_flag=True, expose_value=False,
              help="With --version: name the client libraries' versions.")
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


#: Each backend and the distribution its client library comes from (None: lelect's own
#: standard-library client). Looked up in the installed metadata, never imported.
CLIENT_LIBRARIES = {
    "file": None,
    "redis": None,
    "zookeeper": "kazoo",
    "etcd": None,
    "postgresql": "psycopg",
    "exporter": "prometheus_client",
}


def _print_version(ctx: click.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"lelect, version {__version__}")
    if "--verbose" in _ARGV or "-v" in _ARGV:
        click.echo(version_details())
    ctx.exit(0)


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


def open_client(ctx: click.Context, *, create: bool = True):
    """The library's front door (:func:`lelect.connect`) on the backend named by
    --backend / LELECT_BACKEND (embedded by default). Readers pass ``create=False``:
    they create nothing (the embedded backend's directory)."""
    import lelect

    url = backend_url(ctx)
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
        click.echo(line, err=True)
    except (OSError, ValueError):
        pass  # stderr is closed or failing: the status says it


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every failure into one line + status."""
    if "_LELECT_COMPLETE" in os.environ:  # a shell asks for completions
        from lelect.cli.completion import register

        register()
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    from lelect.cli import streams

    streams.guard()
    try:
        status = cli.main(args=argv, prog_name="lelect", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(ExitStatus.USAGE)
        command = exc.ctx.command_path if exc.ctx else "lelect"
        _error(f"{exc.format_message()} (see '{command} --help')")
        status = ExitStatus.USAGE
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.Abort:
        status = ExitStatus.CANCELLED
    except click.ClickException as exc:
        _error(exc.format_message())
        status = exc.exit_code
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
