"""The job's keeper: a small process between lelect and the job.

Run as ``python -S -I _keeper.py CTRL_FD [OPTIONS] -- CMD [ARGS...]``; it imports only
the standard library (and, on the file backend, lelect.backends.filestate once it wins).

- It starts the job in its own process group and is its child subreaper, so nothing the
  job starts can escape it. The job dies with it (PR_SET_PDEATHSIG), even if somebody
  SIGKILLs the keeper itself.
- It kills the whole group (SIGKILL, grandchildren too) the moment lelect dies, which it
  learns from EOF on CTRL_FD.
- It is a dead-man switch: lelect sends the lease deadline after every renew; if the
  deadline passes without news it stops the job (stop signal at deadline - grace,
  SIGKILL at the deadline) on its own.
- On the file backend it takes and holds the election's flock itself, bumps the term
  and starts the job the moment it wins, so the election is freed only once the job's
  group is gone.

Protocol on CTRL_FD, one line per message. lelect -> keeper: ``start TERM``,
``lease DEADLINE GRACE`` (DEADLINE on the monotonic clock, shared by all processes),
``signal N``, ``stop SIGNAL GRACE REASON``, ``release``, ``exit``.
keeper -> lelect: ``locked TERM SINCE``, ``busy``, ``error MESSAGE``, ``started PID``,
``execfail MESSAGE``, ``exited STATUS REASON``, ``released``.
"""

import errno
import os
import select
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTOU, signal.SIGTTIN,
           signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)


def shell_status(status):
    """A wait status as shells report it: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


PR_SET_PDEATHSIG = 1
LIBC = None


def set_subreaper():
    """Become the child subreaper of our descendants; True if that worked."""
    global LIBC
    try:
        import ctypes

        LIBC = ctypes.CDLL(None, use_errno=True)
        return LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - best effort; the process group still covers the job
        return False


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


class Launcher:
    """The job's process, forked while the keeper still waits for leadership.

    It sets itself up at once (its own process group; PR_SET_PDEATHSIG, so the kernel
    kills it if the keeper dies, even by SIGKILL, which posix_spawn cannot ask for;
    default signal dispositions) and blocks on a pipe. Winning writes the term to
    that pipe and the launcher execs the job: no fork on the hot path, and the
    job's pid is known before it runs. It inherits no fd of ours past its exec (the
    lock fd least of all: a job holding the flock would keep the election taken
    after lelect is gone), and it is forked before the keeper opens the lock file."""

    def __init__(self, program, argv, env, close=()):
        keeper = os.getpid()
        go_r, self.go = os.pipe()  # both close-on-exec
        self.report, report_w = os.pipe()  # EOF on it means the exec worked
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self.pid = os.fork()
            if self.pid == 0:
                self._child(keeper, program, argv, env, go_r, report_w, blocked, close)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(go_r)
        os.close(report_w)

    def _child(self, keeper, program, argv, env, go_r, report_w, blocked, close):
        try:
            os.setpgid(0, 0)
            if LIBC is not None:
                LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != keeper:  # the keeper died before prctl
                os._exit(0)
            signal.set_wakeup_fd(-1)
            for sig in (*IGNORED, signal.SIGCHLD, signal.SIGTERM, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self.go, self.report, *close):
                os.close(fd)
            # Every signal stays blocked until the exec: one sent meanwhile acts then.
            term = b""
            while not term.endswith(b"\n"):
                chunk = os.read(go_r, 64)
                if not chunk:  # the keeper is done without winning
                    os._exit(0)
                term += chunk
            env[b"LELECT_TERM"] = term.strip()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            if "/" in program:
                os.execve(program, argv, env)
            else:
                os.execvpe(program, argv, env)
        except OSError as exc:
            try:
                os.write(report_w, str(exc.errno or 0).encode())
            except OSError:
                pass
        finally:
            os._exit(127)

    def launch(self, term):
        """Run the job with ``term``; raise OSError if it could not be run."""
        try:
            os.write(self.go, f"{term}\n".encode())
            failure = b""
            while chunk := os.read(self.report, 64):
                failure += chunk
        finally:
            os.close(self.go)
            os.close(self.report)
        if failure:
            code = int(failure)
            raise OSError(code, os.strerror(code))


class Keeper:
    def __init__(self, ctrl, options, command):
        self.ctrl = ctrl
        self.options = options
        self.command = command
        self.inbuf = b""
        self.job_pid = None
        self.job_status = None
        self.job_done = False
        self.reason = "exit"
        self.stop_signal = signal.SIGTERM
        self.stop_at = None
        self.kill_at = None
        self.stopping = False
        self.lease_stop_at = None
        self.lease_kill_at = None
        self.lock_fd = None
        self.record_pipe = None
        self.announced = True  # file backend: False until "locked" is sent
        self.held_back = []
        self.childless = False
        self.job_pidfd = None
        self.launcher = None
        self.tty = None
        self.terminated = False
        self.exit_when_done = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    # -- plumbing ---------------------------------------------------------

    def send(self, line):
        try:
            os.write(self.ctrl, (line + "\n").encode())
        except OSError:
            pass

    def install_signals(self):
        for sig in IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _on_term(self, *_):
        self.terminated = True

    # -- the flock (file backend) -------------------------------------------

    def wait_for_lock(self):
        """Take the flock in the main thread (a blocked helper thread wakes up to ms
        later). While blocked, a timer checks every half second that lelect is alive."""
        self.announced = False  # nothing about the job goes out before "locked"
        import fcntl

        # Import and open the state database now, while waiting, so winning costs only
        # one small SQLite transaction and the job's fork/exec.
        sys.path.insert(0, self.options["pythonpath"])
        import threading  # noqa: F401 - imported now, used after winning

        from lelect.backends import filestate

        self.filestate = filestate
        try:
            self.db = filestate.open_db(self.options["db"])
        except Exception as exc:  # noqa: BLE001 - reported as one line by lelect
            self.send("error " + str(exc).replace("\n", " "))
            os._exit(0)

        def check_lelect(*_):
            ready, _, _ = select.select([self.ctrl], [], [], 0)
            if ready:
                data = os.read(self.ctrl, 65536)
                if not data or data.startswith(b"exit"):
                    os._exit(0)  # nothing started yet: just go
                self.inbuf += data

        previous_term = signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        signal.signal(signal.SIGALRM, check_lelect)
        signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
        try:
            result = self._lock(fcntl, self.options["lock"], self.options.get("nowait") == "1")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGTERM, previous_term)
        self.on_lock_result(result)

    def _lock(self, fcntl, path, nowait):
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                return "E" + str(exc)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if nowait else 0))
            except BlockingIOError:
                os.close(fd)
                return "B"
            # A cleaner or a user may have unlinked the file while we waited: then we
            # hold a lock on an inode nobody else will ever look at.
            try:
                on_disk = os.stat(path)
            except FileNotFoundError:
                os.close(fd)
                continue
            held = os.fstat(fd)
            if (on_disk.st_dev, on_disk.st_ino) != (held.st_dev, held.st_ino):
                os.close(fd)
                continue
            self.lock_fd = fd
            return "L"

    def on_lock_result(self, result):
        if result == "B":
            self.send("busy")
            os._exit(0)
        if result.startswith("E"):
            self.send("error cannot open lock file: " + result[1:])
            os._exit(0)
        since = time.time()
        try:
            term = self.next_term()
        except Exception as exc:  # noqa: BLE001 - reported as one line by lelect
            self.release()
            self.send("error " + str(exc).replace("\n", " "))
            os._exit(0)
        # The term is settled (the lock file holds it), so start the job first.
        if self.command:
            self.start_job(term, announce=False)
        # The leader record is for people (`leader`, `watch`): write it in a thread, so a
        # busy database (another process recovering the WAL) never keeps the main loop
        # from noticing the job's exit. lelect hears "locked" once it is written.
        import threading

        read_end, write_end = os.pipe()
        self.record_pipe = read_end
        self.locked_line = f"locked {term} {since!r}"
        threading.Thread(
            target=self._record_leader, args=(term, since, write_end), daemon=True
        ).start()

    def _record_leader(self, term, since, done_fd):
        try:
            self.filestate.record_leader(
                self.db,
                self.options["election"],
                term=term,
                node_id=self.options["node_id"],
                token=self.options["token"],
                host=self.options.get("host"),
                pid=int(self.options["pid"]) if self.options.get("pid") else None,
                since=since,
            )
            outcome = b"K"
        except Exception as exc:  # noqa: BLE001 - reported as one line by lelect
            outcome = b"E" + str(exc).replace("\n", " ").encode()
        finally:
            self.db.close()
        os.write(done_fd, outcome)
        os.close(done_fd)

    def on_recorded(self):
        data = os.read(self.record_pipe, 65536)
        os.close(self.record_pipe)
        self.record_pipe = None
        if not data.startswith(b"K"):
            self.kill_everything()
            self.release()
            self.send("error " + data[1:].decode(errors="replace"))
            os._exit(0)
        self.send(self.locked_line)
        if self.job_pid is not None:
            self.send(f"started {self.job_pid}")
        self.announced = True
        for line in self.held_back:
            self.send(line)
        self.held_back = []

    def next_term(self):
        """The election's next term, written to the lock file before anything runs.

        Every leader writes its term into the lock file while holding the flock, so
        the file alone settles the next term. A new (or replaced) lock file is empty:
        then the database, which keeps every term too, says where to go on from."""
        try:
            content = os.pread(self.lock_fd, 64, 0)
            text = content.split(b"\n", 1)[0].strip()
            last = int(text) if text else 0
        except (OSError, ValueError):
            content, last = b"", 0
        if last <= 0:
            last = self.filestate.read_term(self.db, self.options["election"])
        term = last + 1
        data = f"{term}\n".encode()
        os.pwrite(self.lock_fd, data, 0)
        if len(content) > len(data):
            os.ftruncate(self.lock_fd, len(data))
        return term

    def release(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- the job ------------------------------------------------------------

    def start_job(self, term, announce=True):
        if self.job_pid is not None or self.job_done:
            return
        launcher, self.launcher = self.launcher, None
        try:
            if launcher is None:
                raise OSError(errno.ECHILD, "no job to start")
            launcher.launch(term)
        except OSError as exc:
            if launcher is not None:
                self.forget(launcher.pid)
            self.release()
            reason = exc.strerror or str(exc)
            if isinstance(exc, BrokenPipeError):
                reason = "its process was killed before it could start"
            self.report(f"execfail {self.command[0]}: {reason}")
            self.job_done = True
            return
        pid = self.job_pid = launcher.pid
        try:
            # Readable the moment the job exits: quicker than SIGCHLD via the wakeup fd.
            self.job_pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.job_pidfd = None
        self.give_terminal(pid)
        if announce:
            self.send(f"started {pid}")

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

    def children(self):
        return child_pids()

    def reap(self):
        self.childless = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                # No child left: orphaned descendants are re-parented to us (we are
                # their subreaper) before we hear of their parent's death.
                self.childless = True
                return
            if pid == 0:
                return
            if pid == self.job_pid and self.job_status is None:
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
        return self.group_alive() or (not self.childless and bool(self.children()))

    def signal_all(self, sig):
        if self.job_pid is not None:
            try:
                os.killpg(self.job_pid, sig)
            except OSError:
                pass
        # Descendants that left the group (setsid) were re-parented to us.
        for pid in self.children():
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def kill_everything(self):
        """SIGKILL the group and every descendant, and wait until all are gone."""
        deadline = time.monotonic() + 10
        while True:
            self.reap()
            if not self.anything_alive():
                return
            self.signal_all(signal.SIGKILL)
            if time.monotonic() > deadline:
                return
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
            self.stop_signal = sig
            self.signal_all(sig)
        kill_at = now + grace
        self.kill_at = kill_at if self.kill_at is None else min(self.kill_at, kill_at)

    # -- the loop -------------------------------------------------------------

    def handle_line(self, line):
        parts = line.split(" ", 3)
        verb = parts[0]
        if verb == "start":
            self.start_job(int(parts[1]))
        elif verb == "lease":
            deadline, grace = float(parts[1]), float(parts[2])
            if self.reason != "lease":
                self.lease_stop_at = deadline - grace
                self.lease_kill_at = deadline
        elif verb == "signal":
            if self.job_pid is not None and not self.job_done:
                try:
                    os.killpg(self.job_pid, int(parts[1]))
                except OSError:
                    pass
        elif verb == "stop":
            self.begin_stop(int(parts[1]), float(parts[2]), parts[3] if len(parts) > 3 else "stop")
        elif verb == "release":
            self.release()
            self.send("released")
        elif verb == "exit":
            self.shutdown()

    def on_terminate(self):
        """SIGTERM (lelect gives up its campaign): a job that already runs gets the
        stop signal and the grace like any stopped job, then we go."""
        self.terminated = False
        if self.job_pid is None or self.job_done:
            self.shutdown()
        self.exit_when_done = True
        self.begin_stop(self.stop_signal_for_lease, self.grace, "stop")

    def shutdown(self):
        self.kill_everything()
        self.release()
        self.take_terminal_back()
        os._exit(0)

    def timers(self, now):
        if self.job_pid is None or self.job_done:
            return None
        if self.lease_stop_at is not None and now >= self.lease_stop_at and not self.stopping:
            self.begin_stop(self.stop_signal_for_lease, max(0.0, self.lease_kill_at - now), "lease")
        if self.lease_kill_at is not None and now >= self.lease_kill_at:
            self.reason = "lease"
            self.signal_all(signal.SIGKILL)
        if self.kill_at is not None and now >= self.kill_at:
            self.signal_all(signal.SIGKILL)
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
                self.begin_stop(self.stop_signal_for_lease, self.grace, self.reason)
            return
        self.job_done = True
        if self.job_pidfd is not None:
            os.close(self.job_pidfd)
            self.job_pidfd = None
        if self.options.get("autorelease") == "1":
            self.release()
        self.take_terminal_back()
        self.report(f"exited {self.job_status} {self.reason}")
        if self.exit_when_done:
            self.shutdown()

    def report(self, line):
        """News of the job; on the file backend it waits until "locked" is sent."""
        if self.announced:
            self.send(line)
        else:
            self.held_back.append(line)

    def prepare_job(self):
        """The environment now, not after winning (lelect resolved the program)."""
        self.job_env = dict(os.environb)
        self.program = self.options.get("program") or (self.command[0] if self.command else None)

    def forget(self, pid):
        """Reap a launcher that never became the job."""
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def run(self):
        self.install_signals()
        set_subreaper()
        self.prepare_job()
        if self.command:
            self.launcher = Launcher(self.program, self.command, self.job_env,
                                     close=(self.ctrl, self.wake_r, self.wake_w))
        self.stop_signal_for_lease = int(self.options.get("stop_signal", signal.SIGTERM))
        self.grace = float(self.options.get("grace", "10"))
        if "lock" in self.options:
            self.wait_for_lock()
        while True:
            if self.terminated:
                self.on_terminate()
            now = time.monotonic()
            next_timer = self.timers(now)
            timeout = None if next_timer is None else max(0.0, next_timer - now)
            if b"\n" in self.inbuf:
                line, self.inbuf = self.inbuf.split(b"\n", 1)
                self.handle_line(line.decode())
                continue
            try:
                readers = [self.ctrl, self.wake_r]
                if self.record_pipe is not None:
                    readers.append(self.record_pipe)
                if self.job_pidfd is not None and self.job_status is None:
                    readers.append(self.job_pidfd)
                ready, _, _ = select.select(readers, [], [], timeout)
            except InterruptedError:
                continue
            if self.wake_r in ready:
                self.drain_wakeups()
            if self.record_pipe is not None and self.record_pipe in ready:
                self.on_recorded()
            self.check_job()
            if self.ctrl in ready:
                try:
                    data = os.read(self.ctrl, 65536)
                except OSError as exc:
                    data = b"" if exc.errno in (errno.ECONNRESET, errno.EBADF) else b""
                if not data:
                    # lelect is gone (killed, crashed): nothing it guarded may outlive it.
                    self.shutdown()
                self.inbuf += data
                while b"\n" in self.inbuf:
                    line, self.inbuf = self.inbuf.split(b"\n", 1)
                    self.handle_line(line.decode())
                self.check_job()


def parse_args(argv):
    ctrl = int(argv[1])
    options = {}
    rest = argv[2:]
    while rest and rest[0] != "--":
        key, _, value = rest[0].partition("=")
        options[key.lstrip("-")] = value
        rest = rest[1:]
    return ctrl, options, rest[1:]


def main():
    ctrl, options, command = parse_args(sys.argv)
    os.set_inheritable(ctrl, False)
    Keeper(ctrl, options, command).run()


if __name__ == "__main__":
    main()
