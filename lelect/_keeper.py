"""The job's keeper: a small process between lelect and the job.

Run as ``python -S -I -c "…main()" CTRL_FD [KEY=VALUE...] -- CMD [ARGS...]`` (see
lelect.supervisor); it imports
only the standard library and lelect.keeper_protocol, and its two other parts:
lelect.backends.file.keeper_lock (the embedded backend's flock election; it imports
lelect.backends.file.state while it waits) and lelect.keeper_handback (the hand-back
after lelect died; the backend's hand-back module loads a moment after the job
started, when the keeper is idle).

- It starts the job in its own process group and is its child subreaper, so nothing the
  job starts can escape it. The job dies with it (PR_SET_PDEATHSIG), even if somebody
  SIGKILLs the keeper itself.
- It kills the whole group (SIGKILL, grandchildren too) the moment lelect dies, which it
  learns from EOF on CTRL_FD; once every process of it is gone, it hands the leadership
  back by its token (the recipe lelect sent), so the next leader need not wait for the
  lease to run out.
- It is a dead-man switch: lelect sends the lease deadline after every renew; if the
  deadline passes without news it stops the job (stop signal at deadline - grace,
  SIGKILL at the deadline) on its own.
- On the embedded backend it takes and holds the election's flock itself (giving up at
  the campaign's deadline), bumps the term and starts the job the moment it wins, so
  the election is freed only once the job's group is gone.
- Ctrl-Z stops the job: the keeper takes the terminal back and tells lelect, which stops
  itself so the shell regains the prompt; ``fg`` continues lelect, and the keeper the job.

The messages on CTRL_FD are in lelect/keeper_protocol.py.
"""

import _signal
import errno
import os
import select
import sys
import time

# The C module under signal.py, which turns every signal number it hands out into an enum
# member (enum alone costs a waiting keeper ~0.8 MB and ~2 ms of start-up).
signal = _signal

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTOU, signal.SIGTTIN,
           signal.SIGTSTP, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH)
TERMINAL_STOPS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
LIBC = None
#: Every signal (fork_job blocks them all from the fork to the exec).
ALL_SIGNALS = signal.valid_signals()
#: Seconds after the job started before the hand-back recipe's module is loaded (json,
#: importlib, the backend's module: 10-25 ms of CPU), so that it does not compete with
#: the job's own start on a small host; a hand-back before then loads it itself.
HAND_BACK_LOAD_DELAY = 0.25
#: Seconds after a Prepare (next in line) before the job's process is forked: a waiter
#: most often learns it is next as the leader ahead of it starts its job, and the fork
#: (about 1 ms of CPU) must not compete with that job's start.
PREPARE_DELAY = 0.25


def shell_status(status):
    """A wait status as shells report it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def looks_like_text(path):
    """A file to hand to /bin/sh: not a binary (bash's test: no NUL in its first line,
    and not an ELF header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return False
    return not head.startswith(b"\x7fELF") and b"\0" not in head.split(b"\n", 1)[0]


def set_subreaper():
    """Become the child subreaper of our descendants; True if that worked."""
    global LIBC
    try:
        import ctypes

        LIBC = ctypes.CDLL(None, use_errno=True)
        return LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - best effort; the process group still covers the job
        return False


def trim_heap():
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``): what
    start-up allocated and freed (imports, compiling) would otherwise stay resident in
    every waiting candidate, about 0.8 MB of lelect's (the keeper's own gained nothing
    measurable). Called as lelect starts to wait; best effort."""
    try:
        libc = LIBC
        if libc is None:
            import ctypes

            libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except Exception:  # noqa: BLE001 - not glibc: nothing to gain
        pass


def child_pids():
    """The pids of this process's children (of all its threads)."""
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            pass
    return found


#: lelect_spawn of lelect/libspawn.so (built from _spawn.c when lelect was installed):
#: vfork and exec, the child set up as :func:`fork_job` describes; None: fork in Python.
SPAWN = None
#: lelect_spawn_gate of the same library: the job's process started, set up, as the gate
#: program (:data:`GATE_PROGRAM`), to wait for lelect's own word (:func:`spawn_gated`);
#: None: not there.
SPAWN_GATE = None
#: Where the keeper finds it (beside this file).
SPAWN_LIBRARY = "libspawn.so"
#: The gate program, built from the same source (beside this file too).
GATE_PROGRAM = "lelect-gate"


def spawn_library():
    """The path of lelect's vfork spawn, or None where the keeper forks in Python (not
    built, or ``LELECT_SPAWN=fork``)."""
    if os.environ.get("LELECT_SPAWN") == "fork":
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), SPAWN_LIBRARY)
    return path if os.path.exists(path) else None


def load_spawn():
    """Load lelect's vfork spawn (``SPAWN``), unless ``LELECT_SPAWN=fork`` asks for the
    fork in Python or it was not built (no compiler where lelect was installed): then
    the job is forked in Python, as before. True if loaded."""
    global SPAWN
    path = spawn_library()
    if path is None:
        return False
    global SPAWN_GATE
    try:
        import ctypes

        library = ctypes.CDLL(path)
        spawn = library.lelect_spawn
    except (OSError, AttributeError):
        return False
    strings = ctypes.POINTER(ctypes.c_char_p)
    spawn.argtypes = [strings, strings, strings, strings, ctypes.POINTER(ctypes.c_int)]
    spawn.restype = ctypes.c_int
    SPAWN = spawn
    gated = getattr(library, "lelect_spawn_gate", None)
    if gated is not None and os.access(os.path.join(os.path.dirname(path), GATE_PROGRAM),
                                       os.X_OK):
        gated.argtypes = [ctypes.c_char_p, strings, strings, ctypes.c_int, ctypes.c_int,
                          ctypes.POINTER(ctypes.c_int)]
        gated.restype = ctypes.c_int
        SPAWN_GATE = gated
    return True


def _exec_lists(program, argv, env):
    """``(paths, argv, envp, fallback)`` as lists of bytes: the candidates to exec (the
    program, or it on each directory of the job's ``PATH``), the arguments, the
    environment, and the ``/bin/sh`` command for a text without ``#!`` (None where the
    program was looked up); OSError if a string holds a NUL."""
    program = os.fsencode(program)
    argv = [os.fsencode(arg) for arg in argv]
    if b"/" in program:
        paths = [program]
        fallback = [b"/bin/sh", program, *argv[1:]]  # no #! line: /bin/sh runs a text
    else:  # execvpe's search, over the job's own PATH
        paths = [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]
        fallback = None
    envp = [name + b"=" + value for name, value in env.items()]
    if any(b"\0" in item for item in (program, *argv, *envp)):  # C strings end there
        raise OSError(errno.EINVAL, "embedded null byte")
    return paths, argv, envp, fallback


def _c_strings(items):
    """A NULL-ended C array of ``items`` (bytes), or None for None."""
    import ctypes

    return (ctypes.c_char_p * (len(items) + 1))(*items, None) if items is not None else None


def prepare_spawn(program, argv, env):
    """What lelect_spawn is given that no win changes (the C arrays of the paths, the
    arguments and the fallback; the environment's items and where each name is): the
    keeper builds it while it waits, ~60-100 us of Python off the path from a win to the
    job's exec (:func:`spawn_job`). OSError if a string holds a NUL."""
    paths, args, envp, fallback = _exec_lists(program, argv, env)
    where = {item.partition(b"=")[0]: at for at, item in enumerate(envp)}
    return _c_strings(paths), _c_strings(args), envp, where, _c_strings(fallback)


def _vspawn(prepared, term, slot, seat):
    """The job's pid, started by lelect_spawn with ``term`` (and ``slot``, ``seat``) in
    the environment ``prepared`` holds (OSError if it could not be run)."""
    import ctypes

    paths, args, envp, where, fallback = prepared
    envp = list(envp)
    for item in _job_vars(term, slot, seat):  # replacing any of the same name
        at = where.get(item.partition(b"=")[0])
        if at is None:
            envp.append(item)
        else:
            envp[at] = item
    error = ctypes.c_int(0)
    pid = SPAWN(paths, args, _c_strings(envp), fallback, ctypes.byref(error))
    if pid < 0:
        raise OSError(error.value, os.strerror(error.value))
    return pid


def spawn_gated(program, argv, env, gate):
    """Start the job's process as the gate program (lelect_spawn_gate: a vfork and exec
    of a few pages of C, set up as :func:`fork_job` describes, every signal blocked), to
    wait until lelect itself writes its word to the ``gate`` pipe (the times after which
    the job must not start and its lease ends, and its term: :func:`gate_word`) and
    closes it; then it execs the job, which needs no wake-up of the keeper.
    ``(pid, report)``: the process reports on ``report`` as :func:`read_report` reads
    it. OSError if it could not be started."""
    import ctypes

    paths, args, envp, fallback = _exec_lists(program, argv, env)
    report, report_w = os.pipe()  # close-on-exec: the job's exec (or the end) ends it
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    mask = ",".join(str(int(sig)) for sig in sorted(blocked)) or "-"
    helper = os.fsencode(os.path.join(os.path.dirname(os.path.abspath(__file__)), GATE_PROGRAM))
    words = [helper, str(gate).encode(), str(report_w).encode(), mask.encode(),
             str(len(paths)).encode(), *paths, str(len(fallback or ())).encode(),
             *(fallback or ()), b"--", *args]
    error = ctypes.c_int(0)
    try:
        pid = SPAWN_GATE(helper, _c_strings(words), _c_strings(envp), gate, report_w,
                         ctypes.byref(error))
    finally:
        os.close(report_w)
    if pid < 0:
        os.close(report)
        raise OSError(error.value, os.strerror(error.value))
    return pid, report


def gate_word(stop_at, deadline, term, slot=None, seat=None):
    """What lelect writes to a gated job's gate: ``stop_at`` (after it the job must not
    start) and the lease's ``deadline`` (monotonic seconds; None: no bound) in
    nanoseconds, then the job's variables, NUL-separated."""
    def ns(at):
        return 0 if at is None else max(1, int(at * 1e9))

    return b"\0".join([f"{ns(stop_at)},{ns(deadline)}".encode(), *_job_vars(term, slot, seat)])


def read_report(heard, ended):
    """What a gated child's report says so far: ``(lease, outcome)``. ``lease`` is
    ``(stop_at, deadline)`` (monotonic seconds, None for no bound) once its first line
    came (None before: it was not told yet); ``outcome``, once it ``ended`` (None
    before): "run" (told, and its exec worked), "untold" (it exited without a word),
    "unstarted" (told too late: the lease could have run out) or the exec's errno."""
    head, newline, rest = heard.partition(b"\n")
    lease = None
    if newline and head.startswith(b"R"):
        try:
            stop, deadline = (int(field) for field in head[1:].split(b","))
            lease = (stop / 1e9 if stop else None, deadline / 1e9 if deadline else None)
        except ValueError:
            lease = (None, None)  # garbled: the lease comes from lelect itself
    if not ended:
        return lease, None
    if lease is None:
        return None, "untold"
    if not rest:
        return lease, "run"
    if rest == b"U":
        return lease, "unstarted"
    try:
        return lease, int(rest) or errno.ENOEXEC
    except ValueError:
        return lease, errno.EPROTO


def spawn_job(program, argv, env, term, slot=None, seat=None, prepared=None):
    """Start the job with ``term`` (and ``slot``, ``seat``) in its environment; its pid,
    once it runs (OSError if it could not be run). ``slot`` "-" is none; ``prepared``:
    what :func:`prepare_spawn` built of the same ``program``, ``argv`` and ``env``.

    With lelect's vfork spawn (``SPAWN``) the child only makes system calls until its
    exec; else it is forked in Python, told everything before the fork (no pipe to wait
    on). Either way, from the fork to the exec it only sets itself up, as
    :func:`fork_job` describes."""
    if SPAWN is not None:
        return _vspawn(prepared or prepare_spawn(program, argv, env), term, slot, seat)
    env = dict(env)
    for item in _job_vars(term, slot, seat):
        name, _, value = item.partition(b"=")
        env[name] = value
    pid, report, _ = _fork(program, argv, env, told=True)
    return _exec_reported(pid, report)


def fork_job(program, argv, env):
    """Fork the job's process, which waits (every signal blocked) to be told its term:
    ``(pid, go, report)`` for :func:`run_forked_job` or :func:`drop_forked_job`: the
    fork overlaps what must still be settled. (The embedded backend no longer forks
    early: the fork's copy-on-write faults slowed the checks and the term more than
    the overlap gained; it settles them first and calls :func:`spawn_job`.)

    Before it waits, the child takes its own process group, asks for PR_SET_PDEATHSIG
    (the kernel kills it if the keeper dies, even by SIGKILL, which posix_spawn cannot
    ask for) and checks the keeper is still its parent, restores default signal
    dispositions and closes every fd but 0-2 (and its two pipes, both close-on-exec):
    the lock fd above all (a job holding the flock would keep the election taken after
    lelect is gone). Every signal stays blocked from the fork to the exec, so one sent
    meanwhile acts on the job. The pid is known (and its group made) before the job's
    first instruction."""
    pid, report, go = _fork(program, argv, dict(env), told=False)  # the child adds the term
    return pid, go, report


def _fork(program, argv, env, told):
    """Fork the job's process: ``(pid, report, go)``, ``go`` the pipe that tells it its
    term (None if ``told``: ``env`` has it already)."""
    keeper = os.getpid()
    go_r = go = None
    if not told:
        go_r, go = os.pipe()
    report, report_w = os.pipe()  # both close-on-exec: EOF on it means the exec worked
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            _exec_job(keeper, program, argv, env, report_w, blocked, go_r)
        try:
            os.setpgid(pid, pid)  # as shells do: the group exists whoever runs first
        except OSError:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(report_w)
    if go_r is not None:
        os.close(go_r)
    return pid, report, go


def _job_vars(term, slot=None, seat=None):
    """``LELECT_TERM=…`` (and ``LELECT_SLOT``, ``LELECT_SEAT``) as bytes."""
    extra = [b"LELECT_TERM=" + str(term).encode()]
    if slot and slot != "-":
        extra.append(b"LELECT_SLOT=" + str(slot).encode())
    if seat is not None:
        extra.append(b"LELECT_SEAT=" + str(seat).encode())
    return extra


def run_forked_job(forked, term, slot=None, seat=None):
    """Let the job :func:`fork_job` made run with ``term`` (and ``slot``, ``seat``) in
    its environment; its pid, once it runs. An exec that fails is reported here (an
    OSError), through the close-on-exec report pipe."""
    pid, go, report = forked
    try:
        os.write(go, b"\0".join(_job_vars(term, slot, seat)))
    finally:
        os.close(go)
    return _exec_reported(pid, report)


def _exec_reported(pid, report):
    """``pid`` once its exec worked (EOF on the close-on-exec ``report`` pipe); an
    OSError with the errno the child wrote there if it failed."""
    try:
        failure = b""
        while chunk := os.read(report, 64):
            failure += chunk
    finally:
        os.close(report)
    if failure:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        code = int(failure)
        raise OSError(code, os.strerror(code))
    return pid


def drop_forked_job(forked):
    """The job :func:`fork_job` made never runs: it exits (0) when told nothing, or is
    killed (it may have been stopped from outside: the wait must not hang on it)."""
    pid, go, report = forked
    os.close(go)
    os.close(report)
    end_child(pid, kill=True)


def kill_group(pid):
    """SIGKILL ``pid`` and its process group (it may have become the job, and the job
    may have started others)."""
    for kill_one in (os.killpg, os.kill):
        try:
            kill_one(pid, signal.SIGKILL)
        except OSError:
            pass


def end_child(pid, kill=False):
    """Wait for our child ``pid`` to end; ``kill``: :func:`kill_group` it first."""
    if kill:
        kill_group(pid)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _exec_job(keeper, program, argv, env, report_w, blocked, go_r):
    """The forked child of :func:`_fork`: never returns."""
    try:
        os.setpgid(0, 0)
        if LIBC is not None:
            LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != keeper:  # the keeper died before prctl
            os._exit(0)
        # The exec resets the signals the keeper catches; those it ignores, it does not.
        for sig in IGNORED:
            signal.signal(sig, signal.SIG_DFL)
        # Only 0-2 pass (and the pipes, closed by the exec itself).
        if go_r is None:  # told before the fork
            os.closerange(3, report_w)
            os.closerange(report_w + 1, 1 << 20)
        else:
            low, high = sorted((report_w, go_r))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, 1 << 20)
            told = b""
            while chunk := os.read(go_r, 4096):  # until the keeper closes its end
                told += chunk
            if not told:
                os._exit(0)  # not to run (or the keeper is gone)
            for item in told.split(b"\0"):
                name, _, value = item.partition(b"=")
                env[name] = value
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if "/" in program:
            try:
                os.execve(program, argv, env)
            except OSError as exc:
                if exc.errno != errno.ENOEXEC or not looks_like_text(program):
                    raise
                # No #! line: run it through /bin/sh, as execvp(3) and flock(1) do.
                os.execve("/bin/sh", [b"/bin/sh", os.fsencode(program),
                                      *map(os.fsencode, argv[1:])], env)
        else:
            os.execvpe(program, argv, env)
    except OSError as exc:
        try:
            os.write(report_w, str(exc.errno or 0).encode())
        except OSError:
            pass
    finally:
        os._exit(127)


from lelect.backends.file.keeper_lock import LocalElection, tidy_up_slowly  # noqa: E402 - stdlib only
from lelect.keeper_handback import HandBackRunner  # noqa: E402 - stdlib only


class Keeper(LocalElection):
    """The keeper: job supervision and the dead-man switch (here); the embedded
    backend's flock election (:class:`LocalElection`); the hand-back after lelect died
    (:class:`HandBackRunner`)."""

    def __init__(self, ctrl, options, command, proto):
        self.ctrl = ctrl
        self.options = options
        self.command = command
        self.proto = proto
        self.reader = proto.LineReader()
        self.pending = []  # messages read but not yet handled
        self.job_pid = None
        self.job_status = None
        self.job_done = False
        self.job_suspended = False
        self.reason = "exit"
        self.kill_at = None
        self.stopping = False
        self.lease_stop_at = None
        self.lease_kill_at = None
        self.lock_fd = None
        self.record_pipe = None
        self.announced = True  # embedded backend: False until "locked" is sent
        self.held_back = []
        self.childless = False
        self.job_pidfd = None
        self.job_env = None  # the environment and the program, read before winning
        self.spawn_ready = None  # and what the spawn makes of them (prepare_spawn)
        self.forked = None  # the job's process forked as the flock was won (fork_job)
        self.gate = None  # the read end of lelect's gate (spawn_gated), until a child has it
        self.gated = None  # (pid, report) of the job's process waiting at the gate
        self.gated_heard = b""  # what it reported so far (read_report)
        self.gated_armed = False  # its report gave the lease: the dead-man switch has it
        self.gated_status = None  # its wait status, if it was reaped before its report ended
        self.start_pending = None  # a Start that came while it had not reported yet
        self.fork_at = None  # when to fork it, next in line (Prepare; PREPARE_DELAY)
        self.program = None
        self.tty = None
        self.terminated = False
        self.continued = False
        self.exit_when_done = False
        self.hand_back_runner = None  # what lelect sent; its module loads once the job runs
        self.load_at = None  # when to load it: HAND_BACK_LOAD_DELAY after the job started
        self.released_by_lelect = False
        self.stop_signal = int(options.get("stop_signal", signal.SIGTERM))
        self.grace = float(options.get("grace", "10"))
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # -- plumbing ---------------------------------------------------------

    def send(self, message):
        try:
            os.write(self.ctrl, message.encode())
        except OSError:
            pass

    def install_signals(self):
        for sig in IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGCONT, self._on_continue)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _on_term(self, *_):
        self.terminated = True

    def _on_continue(self, *_):
        self.continued = True

    def read_ctrl(self):
        """What lelect sent; None once it is gone (EOF)."""
        try:
            data = os.read(self.ctrl, 65536)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EBADF):
                raise
            data = b""
        if not data:
            return None
        try:
            return self.reader.feed(data)
        except self.proto.ProtocolError as exc:
            self.send(self.proto.Error(f"keeper: {exc}"))
            return []

    # -- the job ------------------------------------------------------------

    def start_job(self, term, slot, seat=None, announce=True):
        if self.job_pid is not None or self.job_done:
            return
        try:
            if self.job_env is None:
                raise OSError(errno.ECHILD, "no job to start")
            line = self.options.get("announce")
            if line:  # lelect's "elected" line, before anything the job prints
                stamp = time.time()
                line = (line.replace("{term}", str(term)).replace("{seat}", str(seat))
                        .replace("{hms}", time.strftime("%H:%M:%S", time.localtime(stamp)))
                        .replace("{ts}", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
                                 + f".{int(stamp * 1000) % 1000:03d}+00:00"))
                try:
                    os.write(2, (line + "\n").encode())
                except OSError:
                    pass
            pid = None
            if self.forked is not None:
                forked, self.forked = self.forked, None
                try:
                    pid = run_forked_job(forked, term, slot, seat)
                except BrokenPipeError:  # it died untold just now (killed from outside)
                    os.close(forked[2])
                    pid = None
            if pid is None:
                pid = spawn_job(self.program, self.command, self.job_env, term, slot, seat,
                                self.spawn_ready)
        except OSError as exc:
            self.release()
            reason = exc.strerror or str(exc)
            self.report(self.proto.ExecFailed(f"{self.command[0]}: {reason}"))
            self.job_done = True
            return
        self.began(pid, announce=announce)

    def began(self, pid, early=None, announce=True):
        """The job runs as ``pid`` (``early``: its wait status, reaped already)."""
        self.job_pid = pid
        if early is not None:  # it ran and ended before we could look
            self.job_status = shell_status(early)
        self.load_at = time.monotonic() + HAND_BACK_LOAD_DELAY
        try:
            # Readable the moment the job exits: quicker than SIGCHLD via the wakeup fd.
            # (Not for a job already reaped: its pid may be somebody else's by now.)
            self.job_pidfd = os.pidfd_open(pid) if early is None else None
        except (AttributeError, OSError):
            self.job_pidfd = None
        self.give_terminal(pid)
        if announce:
            self.send(self.proto.Started(pid))
        if early is not None:
            self.check_job()  # no exit, no SIGCHLD left to wake us for it

    def fork_early(self, prepare=False):
        """Won (the embedded backend, which starts the job itself) or next in line
        (``prepare``: lelect said Prepare): fork the job's process now (it waits for its
        term), so the fork and the child's preparations overlap the checks and the term
        (the database, the lock file), or come before the win. Nothing runs before a
        Start (or, embedded, before the checks pass)."""
        asked = prepare or self.options.get("autostart") == "1"
        if prepare and SPAWN is not None:
            # A vfork start costs less than waking a process forked early: only one that
            # lelect wakes itself (no hop through the keeper) is worth starting early.
            self.spawn_gated_job()
            return
        if self.command and asked and self.forked is None:
            try:
                self.forked = fork_job(self.program, self.command, self.job_env)
            except OSError:
                self.forked = None  # forked again when the job starts: it says why not

    def drop_early(self):
        """The checks failed (or the flock goes back; or no longer next in line): the
        early child never runs."""
        if self.forked is not None:
            forked, self.forked = self.forked, None
            drop_forked_job(forked)
        if self.gated is not None:
            (pid, report), self.gated = self.gated, None
            os.close(report)
            self.end_gated(pid, kill=True)

    def spawn_gated_job(self):
        """Next in line: start the job's process to wait at lelect's gate (one per
        keeper: the gate goes with it)."""
        if self.gate is None or self.gated is not None or not self.command:
            return
        try:
            self.gated = spawn_gated(self.program, self.command, self.job_env, self.gate)
        except OSError:
            self.gated = None  # the Start spawns the job as without a gate
        finally:
            os.close(self.gate)
            self.gate = None
        self.forget_gated()

    def on_gated_report(self):
        """The gated child said something, or ended its report. Its first line gives the
        dead-man switch the lease (lelect opens the gate before it tells us the Start: the
        lease must not wait on lelect); its end says whether the job runs."""
        pid, report = self.gated
        chunk = os.read(report, 256)
        if chunk and len(self.gated_heard) < 256:  # (more is not the child's: ignored)
            self.gated_heard += chunk
            lease, _ = read_report(self.gated_heard, False)
            if lease is not None and not self.gated_armed:
                self.gated_armed = True
                stop_at, deadline = lease
                if deadline is not None and self.reason != "lease" and (
                        self.lease_kill_at is None or deadline > self.lease_kill_at):
                    self.lease_kill_at = deadline
                    self.lease_stop_at = stop_at if stop_at is not None else deadline
            return
        if chunk:
            return
        os.close(report)
        self.gated = None
        _, outcome = read_report(self.gated_heard, True)
        start = self.start_pending
        if outcome == "run":
            status = self.gated_status
            self.forget_gated()
            self.fork_at = None
            self.began(pid, early=status)
            return
        self.end_gated(pid, kill=False)  # it exits by itself (untold, too late, no exec)
        if outcome == "untold":  # (killed from outside): a Start spawns the job itself
            if start is not None:
                self.handle(start)
            return
        self.fork_at = None
        self.job_done = True
        if outcome == "unstarted":
            self.report(self.proto.Exited(0, "unstarted"))
        else:
            self.release()
            self.report(self.proto.ExecFailed(f"{self.command[0]}: {os.strerror(outcome)}"))

    def end_gated(self, pid, kill):
        """Reap the gated child that will not run the job (``kill``: it may still wait)."""
        if self.gated_status is None:
            end_child(pid, kill=kill)
        self.forget_gated()

    def forget_gated(self):
        """What the keeper knew of a gated child: nothing (a new one, or it is gone)."""
        self.gated_heard, self.gated_armed, self.gated_status = b"", False, None
        self.start_pending = None

    def give_terminal(self, pgid):
        """An interactive job reads the terminal: give its group the foreground."""
        try:
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                os.tcsetpgrp(0, pgid)
                self.tty = 0
                os.killpg(pgid, signal.SIGCONT)  # in case it hit SIGTTIN first
        except OSError:
            pass

    def take_terminal_back(self):
        if self.tty is not None:
            try:
                os.tcsetpgrp(self.tty, os.getpgrp())
            except OSError:
                pass
            self.tty = None

    def on_continue(self):
        """SIGCONT: the shell continued lelect (``fg`` or ``bg``). A job stopped from the
        terminal goes on too, in the foreground if the shell gave us the terminal."""
        self.continued = False
        if not self.job_suspended or self.job_pid is None or self.job_done:
            return
        self.job_suspended = False
        self.give_terminal(self.job_pid)
        try:
            os.killpg(self.job_pid, signal.SIGCONT)
        except OSError:
            pass

    def reap(self):
        self.childless = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                # No child left: orphaned descendants are re-parented to us (we are
                # their subreaper) before we hear of their parent's death.
                self.childless = True
                return
            if pid == 0:
                return
            if self.gated is not None and pid == self.gated[0] and not os.WIFSTOPPED(status):
                self.gated_status = status  # what its report's end makes of it
                continue
            if self.forked is not None and pid == self.forked[0] and not os.WIFSTOPPED(status):
                # The early child died untold (killed from outside): a start forks anew.
                forked, self.forked = self.forked, None
                for fd in forked[1:]:
                    os.close(fd)
                continue
            if pid != self.job_pid:
                continue
            if os.WIFSTOPPED(status):
                if os.WSTOPSIG(status) in TERMINAL_STOPS and self.tty is not None:
                    # Ctrl-Z: the shell must get the terminal (and its prompt) back.
                    self.job_suspended = True
                    self.take_terminal_back()
                    self.send(self.proto.Suspended())
            elif self.job_status is None:
                self.job_status = shell_status(status)

    def group_alive(self):
        if self.job_pid is None:
            return False
        try:
            os.killpg(self.job_pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def anything_alive(self):
        return self.group_alive() or (not self.childless and bool(child_pids()))

    def signal_all(self, sig):
        if self.job_pid is not None:
            try:
                os.killpg(self.job_pid, sig)
            except OSError:
                pass
        # Descendants that left the group (setsid) were re-parented to us; those still in
        # the group (the job itself above all) had their one signal already.
        for pid in child_pids():
            try:
                if self.job_pid is not None and os.getpgid(pid) == self.job_pid:
                    continue
                os.kill(pid, sig)
            except OSError:
                pass

    def kill_everything(self):
        """SIGKILL the group and every descendant, and wait until all are gone; True
        when nothing is left."""
        deadline = time.monotonic() + 10
        while True:
            self.reap()
            if not self.anything_alive():
                return True
            self.signal_all(signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            select.select([self.wake_r], [], [], 0.005)
            self.drain_wakeups()

    def drain_wakeups(self):
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def begin_stop(self, sig, grace, reason):
        if self.job_pid is None or self.job_done:
            return
        now = time.monotonic()
        if not self.stopping:
            self.stopping = True
            self.reason = reason
            self.signal_all(sig)
            if self.job_suspended:
                self.signal_all(signal.SIGCONT)  # a stopped job cannot act on its signal
        kill_at = now + grace
        self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)

    # -- the loop -------------------------------------------------------------

    def handle(self, message):
        proto = self.proto
        if isinstance(message, proto.Prepare):
            if self.job_pid is None and not self.job_done and self.fork_at is None:
                self.fork_at = time.monotonic() + PREPARE_DELAY
        elif isinstance(message, proto.Unprepare):
            self.fork_at = None
            self.drop_early()
        elif isinstance(message, proto.Start):
            if self.job_pid is not None or self.job_done:
                return  # (a gated job told us itself that it runs)
            self.fork_at = None
            if self.gated is not None:
                self.start_pending = message  # its report says what became of it
                return
            if self.lease_stop_at is not None and time.monotonic() >= self.lease_stop_at:
                # The lease could run out before the job got anywhere (lelect stalled
                # between its renew and this message): a job never starts on it.
                self.job_done = True
                self.drop_early()
                self.report(proto.Exited(0, "unstarted"))
                return
            self.start_job(message.term, message.slot,
                           None if message.seat < 0 else message.seat)
        elif isinstance(message, proto.Lease):
            if self.reason != "lease":
                self.lease_stop_at = message.deadline - message.grace
                self.lease_kill_at = message.deadline
        elif isinstance(message, proto.Signal):
            if self.job_pid is not None and not self.job_done:
                try:
                    os.killpg(self.job_pid, message.signum)
                except OSError:
                    pass
        elif isinstance(message, proto.Stop):
            self.begin_stop(message.signum, message.grace, message.reason)
        elif isinstance(message, proto.Recipe):
            self.hand_back_runner = HandBackRunner(message.json)
        elif isinstance(message, proto.Release):
            self.released_by_lelect = True
            self.release()
            self.send(proto.Released())
        elif isinstance(message, proto.Exit):
            self.released_by_lelect = True
            self.shutdown()

    def on_terminate(self):
        """SIGTERM (lelect gives up its campaign): a job that already runs gets the
        stop signal and the grace like any stopped job, then we go."""
        self.terminated = False
        if self.job_pid is None or self.job_done:
            self.shutdown()
        self.exit_when_done = True
        self.begin_stop(self.stop_signal, self.grace, "stop")

    def shutdown(self, lelect_died=False):
        gone = self.kill_everything()
        held = self.lock_fd is not None
        self.release()  # the next leader goes ahead at once
        self.take_terminal_back()
        if gone and not self.released_by_lelect and self.job_pid is None:
            if lelect_died and self.hand_back_runner is not None:
                # No job ran: lelect held the head of an election's line (seats.py).
                self.hand_back_runner.run(self.job_status)
        elif gone and not self.released_by_lelect:
            if held and (lelect_died or self.exit_when_done):
                # lelect died, or was stopped before it heard that we won.
                from lelect.backends.words import HAND_BACK_REASON

                tidy_up_slowly()  # the next leader's job goes first
                if lelect_died:
                    self.close_record("lost", HAND_BACK_REASON)
                else:
                    self.close_record("stopped", "lelect was stopped as it won")
            elif lelect_died and self.hand_back_runner is not None:
                self.hand_back_runner.run(self.job_status)
        os._exit(0)

    def timers(self, now):
        if (self.gated is not None and self.lease_kill_at is not None
                and (self.gated_armed or self.start_pending is not None)):
            # Told (the job may run), or won and still untold: dead by the deadline.
            if now < self.lease_kill_at:
                return self.lease_kill_at
            if self.gated_armed:
                self.reason = "lease"
            kill_group(self.gated[0])  # (reaped as its report ends)
            return None
        if self.job_pid is None or self.job_done:
            return None
        if self.lease_stop_at is not None and now >= self.lease_stop_at and not self.stopping:
            self.begin_stop(self.stop_signal, max(0.0, self.lease_kill_at - now), "lease")
        if self.lease_kill_at is not None and now >= self.lease_kill_at:
            self.reason = "lease"
            self.signal_all(signal.SIGKILL)
            self.signal_all(signal.SIGCONT)
        if self.kill_at is not None and now >= self.kill_at:
            self.signal_all(signal.SIGKILL)
            self.signal_all(signal.SIGCONT)
        pending = [t for t in (self.lease_stop_at, self.lease_kill_at, self.kill_at) if t is not None]
        pending = [t for t in pending if t > now]
        return min(pending) if pending else None

    def check_job(self):
        """After a SIGCHLD: once the job itself exits, stop what is left of its group;
        once everything is gone, release and report."""
        self.reap()
        if self.job_pid is None or self.job_done or self.job_status is None:
            return
        if self.anything_alive():
            if not self.stopping:
                left = len(child_pids()) or 1
                self.report(self.proto.Leftovers(left, self.grace))
                self.begin_stop(self.stop_signal, self.grace, self.reason)
            return
        self.job_done = True
        if self.job_pidfd is not None:
            os.close(self.job_pidfd)
            self.job_pidfd = None
        self.take_terminal_back()
        if self.exit_when_done:  # told to stop: the record is closed before the lock goes
            self.report(self.proto.Exited(self.job_status, self.reason))
            self.shutdown()
        if self.options.get("autorelease") == "1":
            self.release()
            tidy_up_slowly()  # the next leader's job goes first: the rest is reporting
        self.report(self.proto.Exited(self.job_status, self.reason))

    def report(self, message):
        """News of the job; on the embedded backend it waits until "locked" is sent."""
        if self.announced:
            self.send(message)
        else:
            self.held_back.append(message)

    def run(self):
        self.install_signals()
        set_subreaper()
        if self.command:
            # The environment and the program now, not after winning.
            self.program = self.options.get("program") or self.command[0]
            self.job_env = dict(os.environb)
            load_spawn()
            if SPAWN is not None:
                try:
                    self.spawn_ready = prepare_spawn(self.program, self.command, self.job_env)
                except OSError:
                    pass  # its start says why
            gate = self.options.get("gate")
            if gate:
                self.gate = int(gate)
                os.set_inheritable(self.gate, False)
                if SPAWN_GATE is None:  # the job starts as without a gate
                    os.close(self.gate)
                    self.gate = None
        if "lock" in self.options:
            self.wait_for_lock()
        while True:
            if self.terminated:
                self.on_terminate()
            if self.continued:
                self.on_continue()
            if self.pending:
                self.handle(self.pending.pop(0))
                continue
            now = time.monotonic()
            next_timer = self.timers(now)
            if self.fork_at is not None:
                if now >= self.fork_at:
                    self.fork_at = None
                    self.fork_early(prepare=True)
                elif next_timer is None or self.fork_at < next_timer:
                    next_timer = self.fork_at
            if self.hand_back_runner is not None and self.load_at is not None:
                if now >= self.load_at:  # the job is under way: the keeper is idle
                    self.load_at = None
                    self.hand_back_runner.load()
                elif next_timer is None or self.load_at < next_timer:
                    next_timer = self.load_at
            timeout = None if next_timer is None else max(0.0, next_timer - now)
            readers = [self.ctrl, self.wake_r]
            if self.record_pipe is not None:
                readers.append(self.record_pipe)
            if self.job_pidfd is not None and self.job_status is None:
                readers.append(self.job_pidfd)
            if self.gated is not None:
                readers.append(self.gated[1])
            try:
                ready, _, _ = select.select(readers, [], [], timeout)
            except InterruptedError:
                continue
            if self.wake_r in ready:
                self.drain_wakeups()
            if self.record_pipe is not None and self.record_pipe in ready:
                self.on_recorded()
            if self.gated is not None and self.gated[1] in ready:
                self.on_gated_report()
            self.check_job()
            if self.ctrl in ready:
                messages = self.read_ctrl()
                if messages is None:
                    # lelect is gone (killed, crashed): nothing it guarded may outlive it.
                    self.shutdown(lelect_died=True)
                self.pending.extend(messages)


def main():
    ctrl = int(sys.argv[1])
    os.set_inheritable(ctrl, False)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if here not in sys.path:
        sys.path.insert(0, here)  # lelect's parent: the package itself
    from lelect import keeper_protocol as proto

    options, command = proto.decode_config(sys.argv[2:])
    if options.get("pythonpath"):
        sys.path.insert(0, options["pythonpath"])
    Keeper(ctrl, options, command, proto).run()


if __name__ == "__main__":
    main()
