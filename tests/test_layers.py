"""The layers DESIGN.md draws, checked on the source: data flows downward, nothing
imports upward, and there are no import cycles (function-level imports included)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lelect"
#: What nothing under lelect/backends/ may import.
ABOVE_BACKENDS = ("lelect.campaign", "lelect.campaign_core", "lelect.supervisor",
                  "lelect._keeper", "lelect.keeper_protocol", "lelect.health",
                  "lelect.election", "lelect.cli", "lelect.exporter", "lelect.systemd")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every lelect module ``path`` imports (anywhere but under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(child) for child in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "lelect" or name.startswith("lelect.")}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {name: {i for i in imports(path) if i in MODULES and i != name}
            for name, path in MODULES.items()}


def test_backends_import_nothing_from_above():
    for name, path in MODULES.items():
        if name.startswith("lelect.backends"):
            bad = {i for i in imports(path) if i.startswith(ABOVE_BACKENDS)}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_there_are_no_import_cycles():
    edges = graph()
    # The package __init__ files import their children's names lazily or not at all;
    # a child importing its package is no cycle of logic.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                raise AssertionError(" -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_backend_campaign_takes_no_keeper():
    from lelect.backends import SCHEMES
    from lelect.backends.base import Backend

    for target in set(SCHEMES.values()):
        module, _, cls = target.partition(":")
        backend = getattr(__import__(module, fromlist=[cls]), cls)
        assert issubclass(backend, Backend)
        assert "keeper" not in inspect.signature(backend.campaign).parameters, target


def printed_by(code: str) -> str:
    """What ``python -c code`` prints (stripped), in a fresh interpreter; its stderr too
    if it printed nothing."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr


def test_help_and_the_embedded_path_import_no_client_library():
    code = (
        "import sys; from lelect.cli import cli; import lelect.backends.file.backend;"
        "import lelect.campaign; import lelect.election;"
        "heavy = ('redis', 'kazoo', 'psycopg', 'prometheus_client', 'rich', 'psutil', 'ssl',"
        " 'http.client');"
        "print([m for m in heavy if m in sys.modules])"
    )
    assert printed_by(code) == "[]"


def in_a_keeper(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` as the keeper runs (``python -S -I``, lelect's protocol and keeper
    imported first)."""
    prelude = (f"import sys; sys.path.insert(0, {str(PACKAGE.parent)!r});"
               "from lelect import keeper_protocol; import lelect._keeper;")
    return subprocess.run([sys.executable, "-S", "-I", "-c", prelude + code],
                          capture_output=True, text=True, timeout=30)


def test_a_waiting_keeper_imports_neither_threading_nor_json_nor_enum():
    """The embedded backend's keeper forks the job the moment it wins: threading's
    after-fork hook would run in that child, and json (with re) and enum (signal.py's,
    lelect.errors') only cost memory in every waiting candidate. What the keeper imports
    on its way to the flock (SQLite's C module alone: sqlite3.dbapi2 brings datetime):"""
    out = in_a_keeper(
        "from lelect.backends.file import state; from lelect.backends.notes import decode_handover;"
        "decode_handover(None);"
        "print([m for m in ('threading', 'json', 're', 'dataclasses', 'enum', 'signal',"
        " 'datetime') if m in sys.modules])"
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_winning_keeper_records_its_leadership_without_json_re_or_enum(tmp_path):
    """The keeper writes the leader record right after it forked the job, beside it on
    a 2-core host: importing json (with re and enum) there cost ~4 ms of CPU that the
    job's start waited for. The record's entry is encoded without them."""
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    out = in_a_keeper(
        "from lelect.backends.file import state;"
        f"s = state.StateDir({str(home)!r}, False); db = state.open_db(s);"
        "fd = state.take_lock(s, 'e.lock', True);"
        "_, last = state.handover_note(db, 'e');"
        "term = state.next_term(fd, db, 'e', 'e.lock', last);"
        "state.record_leader(db, 'e', term=term, node_id='n', token='t', host='h\u00e9',"
        " pid=1, since=1.5, history_limit=5);"
        "print([m for m in ('threading', 'json', 're', 'dataclasses', 'enum', 'signal')"
        " if m in sys.modules], term)"
    )
    assert out.stdout.strip() == "[] 1", out.stdout + out.stderr


def test_the_embedded_entry_encoder_writes_what_json_writes():
    import json

    from lelect.backends.file.state import _dumps, new_entry

    entries = [
        new_entry("e\"\\\n\t\u00e9\u2028\U0001f600", 2**40, "n", None, None, 1722.125),
        {"a": None, "b": True, "c": False, "d": -0.0, "e": 1e300, "f": 10**30, "g": "",
         "h": 12.0, "i": -7},
        {"x": float("inf")}, {"x": [1, "y"]}, {"\u00e9": 1}, {},
    ]
    for entry in entries:
        assert _dumps(entry) == json.dumps(entry, separators=(",", ":")), entry


def test_the_keeper_and_its_protocol_need_only_the_standard_library():
    for name in ("lelect._keeper", "lelect.keeper_protocol"):
        assert {i for i in imports(MODULES[name]) if i in MODULES} <= {"lelect", "lelect.keeper_protocol",
                                          "lelect.backends", "lelect.backends.file",
                                          "lelect.backends.file.state", "lelect.backends.words",
                                          "lelect.backends.file.keeper_lock",
                                          "lelect.keeper_handback",
                                          "lelect.backends.records"}, name
    for name, path in MODULES.items():
        if name.startswith("lelect.backends.") and name.endswith(".handback"):
            tree = ast.parse(path.read_text())
            third_party = {
                alias.name.split(".")[0]
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import)
                              else [ast.alias(node.module or "")])
            } - set(sys.stdlib_module_names) - {"lelect", "__future__", ""}
            assert not third_party, f"{name} imports {sorted(third_party)}"


def test_the_embedded_history_entry_has_the_records_shape():
    """filestate writes history entries as plain JSON (the keeper must not import
    dataclasses): the same keys as records.HistoryEntry, which reads them back."""
    from lelect.backends.file import state as filestate
    from lelect.backends.records import HistoryEntry
    from lelect.frozen import fields

    entry = filestate.new_entry("e", 3, "n", "h", 1, 12.5)
    assert list(entry) == list(fields(HistoryEntry))
    import json

    assert HistoryEntry.decode(json.dumps(entry)) == HistoryEntry("e", 3, "n", "h", 1, 12.5)


def test_a_deferred_module_loads_on_first_use_and_is_the_same_to_whoever_bound_it():
    """lelect.backends.defer_imports: ``import`` binds a stand-in and loads nothing; the
    first attribute read loads the real module, for ``import`` and ``from … import``."""
    code = (
        "import sys; from lelect.backends import defer_imports; defer_imports('json', 'sys');"
        "import json; loaded = 'json.decoder' in sys.modules;"
        "from json import loads; text = json.dumps({'a': [1]});"
        "print(loaded, text, loads(text), json.JSONDecodeError is sys.modules['json'].JSONDecodeError,"
        " 'json.decoder' in sys.modules)"
    )
    assert printed_by(code) == 'False {"a": [1]} {\'a\': [1]} True True'


def test_a_deferred_module_first_used_by_many_threads_at_once_loads_once_for_all():
    """Threads that first touch a stand-in together (two of kazoo's threads logging an
    exception through a deferred traceback) all get the real module's attribute."""
    code = "\n".join([
        "import sys, threading",
        "from lelect.backends import defer_imports",
        "defer_imports('json')",
        "import json",
        "sys.setswitchinterval(1e-6)",
        "gate, out = threading.Barrier(16), []",
        "def use():",
        "    gate.wait()",
        "    try:",
        "        out.append(json.dumps([1]))",
        "    except Exception as exc:",
        "        out.append(repr(exc))",
        "threads = [threading.Thread(target=use) for _ in range(16)]",
        "for t in threads: t.start()",
        "for t in threads: t.join()",
        "print(sorted(set(out)), len(out), json.loads is sys.modules['json'].loads)",
    ])
    assert printed_by(code) == "['[1]'] 16 True"


def test_a_deferred_module_answers_its_shortcuts_without_loading():
    """A stand-in's shortcuts (lelect.backends.SHORTCUTS: kazoo's one inspect.isclass)
    answer as the real function does and load nothing; anything else loads the module,
    after which the real function answers."""
    code = (
        "import sys; from lelect.backends import defer_imports; defer_imports('inspect');"
        "import inspect; answers = [inspect.isclass(x) for x in (int, 1, type, None)];"
        "loaded = 'dis' in sys.modules; params = list(inspect.signature(lambda a, b: 0).parameters);"
        "import inspect as again;"
        "print(answers, loaded, params, again.isclass is sys.modules['inspect'].isclass,"
        " inspect.isclass is again.isclass)"
    )
    assert printed_by(code) == "[True, False, True, False] False ['a', 'b'] True True"


def test_logging_prints_an_exception_through_a_deferred_traceback():
    """kazoo's ``logging`` binds ``traceback`` as a stand-in (ZooKeeper's
    DEFERRED_IMPORTS): nothing loads it while all is well, and the first exception logged
    (a connection kazoo lost) loads it and prints the whole traceback."""
    code = (
        "import sys, io; from lelect.backends import defer_imports; defer_imports('traceback');"
        "import logging; quiet = 'tokenize' not in sys.modules;"
        "out = io.StringIO(); log = logging.getLogger('t'); log.addHandler(logging.StreamHandler(out));"
        "exec('try:\\n  1/0\\nexcept ZeroDivisionError:\\n  log.exception(\\'dropped\\')');"
        "text = out.getvalue();"
        "print(quiet, text.splitlines()[0], 'Traceback (most recent call last)' in text,"
        " text.rstrip().endswith('ZeroDivisionError: division by zero'))"
    )
    assert printed_by(code) == "True dropped True True"


def test_an_ascii_host_is_looked_up_as_bytes():
    """lelect.backends.addresses.lookup_name: an ASCII name or address goes to getaddrinfo
    as bytes (no "idna" codec, no import of it); any other name as it is."""
    import socket

    from lelect.backends.addresses import lookup_name

    assert lookup_name("127.0.0.1") == b"127.0.0.1" and lookup_name("::1") == b"::1"
    assert lookup_name("etcd-1.example") == b"etcd-1.example"
    assert lookup_name("bücher.example") == "bücher.example"
    assert socket.getaddrinfo(lookup_name("localhost"), 80, type=socket.SOCK_STREAM)


def test_the_holders_note_is_what_json_writes_and_reads():
    """The --holders note is written and read without json on every start: the same
    bytes json.dumps makes, and what json.loads makes of any note."""
    import json

    from lelect.seats import MAX_HOLDERS, _decode, _encode

    for holders in (1, 2, 9, 10, MAX_HOLDERS):
        assert _encode(holders) == json.dumps({"holders": holders}, separators=(",", ":")).encode()
        assert _decode(_encode(holders)) == holders
    assert _decode(b'{ "holders": 3 }') == 3  # another writer's spacing: json reads it
    for bad in (b'{"holders":0}', b'{"holders":03}', b'{"holders":-1}', b'{"holders":true}',
                b'{"holders":2.5}', b'{"holders":}', b'{"holders":"2"}', b"[2]", b"", None,
                b'{"holders":' + b"9" * 60 + b"}"):
        assert _decode(bad) is None, bad


def test_the_url_codec_is_urllib_s_without_importing_it_for_plain_urls():
    """lelect.backends.urls quotes, unquotes and splits query strings as urllib.parse
    does, and a plain URL (the embedded backend's) is read and shown without it."""
    import urllib.parse

    from lelect.backends import urls

    texts = ["", "abc", "/srv/lelect", "a b", "p@ss:w/rd", "ü", "%41%zz", "x%2Fy", "~_.-",
             "/var/lib/lelect dir", "a+b=c&d", "100%"]
    for text in texts:
        for safe in ("/", "", urls._PATH_SAFE, urls._VALUE_SAFE):
            assert urls.quote(text, safe=safe) == urllib.parse.quote(text, safe=safe), (text, safe)
        assert urls.unquote(text) == urllib.parse.unquote(text), text
    for query in ("", "a=1", "a=1&b=", "prefix=x%20y&ttl=5"):
        assert urls.parse_qsl(query, keep_blank_values=True) == urllib.parse.parse_qsl(
            query, keep_blank_values=True)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from lelect.backends.urls import parse_url;"
         " u = parse_url('file:///srv/lelect'); str(u); u.revealed();"
         " print(sorted(m for m in ('urllib.parse', 'ipaddress') if m in sys.modules))"],
        capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out
