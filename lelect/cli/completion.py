"""Shell completion: click's, with a fish script that works.

click 8.4's fish script splits each answer on a newline it writes literally into the
script, and reads the three-line answers one line at a time: it completes nothing.
Ours answers one line per candidate (``TYPE,VALUE<TAB>HELP``) and splits on the first
comma. Registered only when a shell asks (``_LELECT_COMPLETE`` is set), so ordinary
runs never import click.shell_completion.
"""

from __future__ import annotations

from click.shell_completion import CompletionItem, FishComplete, add_completion_class

_SOURCE_FISH = """\
function %(complete_func)s;
    set -l response (env %(complete_var)s=fish_complete COMP_WORDS=(commandline -cp) \
COMP_CWORD=(commandline -t) %(prog_name)s);

    for completion in $response;
        set -l metadata (string split --max 1 , -- $completion);

        if test "$metadata[1]" = dir;
            __fish_complete_directories $metadata[2];
        else if test "$metadata[1]" = file;
            __fish_complete_path $metadata[2];
        else if test "$metadata[1]" = plain;
            echo $metadata[2];
        end;
    end;
end;

complete --no-files --command %(prog_name)s --arguments "(%(complete_func)s)";
"""


class LelectFishComplete(FishComplete):
    """Fish completion, one line per candidate."""

    source_template = _SOURCE_FISH

    def format_completion(self, item: CompletionItem) -> str:
        value = str(item.value).replace("\n", " ").replace("\t", " ")
        if item.help:
            return f"{item.type},{value}\t{' '.join(str(item.help).split())}"
        return f"{item.type},{value}"


def register() -> None:
    add_completion_class(LelectFishComplete, "fish")
