"""Regenerate lelect's shell completion scripts from the click app.

Each file is exactly what ``_LELECT_COMPLETE=<shell>_source lelect`` prints (click's
own shell_completion); the scripts call lelect back for every completion, so ELECTION
arguments complete from the backend's elections.

    python completions/generate.py           # rewrite lelect.bash, lelect.zsh, lelect.fish
    python completions/generate.py --check   # exit 1 if any of them is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {"bash": "lelect.bash", "zsh": "lelect.zsh", "fish": "lelect.fish"}


def source(shell: str) -> str:
    """The completion script for ``shell``, as ``lelect`` itself would print it."""
    from click.shell_completion import get_completion_class

    from lelect.cli import cli
    from lelect.cli.completion import register

    register()

    completion = get_completion_class(shell)(cli, {}, "lelect", "_LELECT_COMPLETE")
    return completion.source()


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for shell, name in SCRIPTS.items():
        path = HERE / name
        text = source(shell)
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            f"stale completion scripts: {', '.join(stale)}; run: python completions/generate.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
