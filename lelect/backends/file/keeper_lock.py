"""The embedded backend's election, as the job's keeper runs it: take the election's
flock (giving up at the campaign's deadline), settle the term, start the job the moment
it wins, write the leader record, and close that record itself when lelect cannot.

A mixin of the keeper (``lelect/_keeper.py``): standard library only, and the state
code (:mod:`lelect.backends.file.state`) is imported while the keeper waits."""

import _signal as signal  # not signal.py: its enums cost a waiting keeper ~0.8 MB
import fcntl
import os
import select
import time

#: How long the keeper tries to close the embedded backend's record itself.
CLOSE_RECORD_BUDGET = 1.0
#: How often a keeper that stepped aside for a handover looks at the local database
#: (cheap, as observers do) for the named node's term or the note's end.
HANDOVER_POLL = 0.05


def tidy_up_slowly(thread=False):
    """Lower this process's (``thread``: this thread's) priority: what it does from now
    on is tidying up (a record, an exit), and on a small host the next leader's job,
    just started, must not wait for the CPU behind it. Best effort."""
    try:
        if thread:
            import _thread

            os.setpriority(os.PRIO_PROCESS, _thread.get_native_id(), 19)
        else:
            os.nice(19)
    except (OSError, AttributeError):
        pass


class _GiveUp(Exception):
    """The campaign's deadline passed while the keeper waited for the flock."""



class LocalElection:
    """The keeper's flock election; the keeper supplies ``options``, ``proto``, ``send``,
    ``read_ctrl``, ``start_job`` and the job's state."""

    def wait_for_lock(self):
        """Take the flock in the main thread (a blocked helper thread wakes up to ms
        later). While blocked, the kernel wakes it (SIGIO, O_ASYNC on the control
        socket) when lelect writes or goes, and a timer at the campaign's deadline,
        where it gives up: a job lelect reports as never started must never start, so
        only the keeper decides whether it won in time. Nothing else wakes it."""
        self.announced = False  # nothing about the job goes out before "locked"
        self.handover_spent = False  # won as the node a handover named
        # Import and open the state database now, while waiting, so winning costs only
        # the job's fork/exec (the leader record is written after).
        from lelect.backends.file import state as filestate
        from lelect.backends.notes import decode_handover  # noqa: F401 - read as it wins

        self.filestate = filestate
        self.stored_term = None  # the database's term, read under the flock as it won
        lock_name = os.path.basename(self.options["lock"])
        try:
            # lelect checked the directory (and the database); every file in it is opened
            # relative to it, never through a link.
            self.state = filestate.StateDir(self.options["db"], self.options.get("shared") == "1")
            self.db = filestate.open_db(self.state)
        except Exception as exc:  # noqa: BLE001 - reported as one line by lelect
            self.send(self.proto.Error(str(exc)))
            os._exit(0)
        try:
            # The read a win makes first, made once now: its statement is then compiled
            # (and the schema read) already, ~0.1 ms off the path to the job.
            filestate.handover_note(self.db, self.options["election"])
        except Exception:  # noqa: BLE001 - the win's own read reports it
            pass
        deadline = float(self.options["deadline"]) if self.options.get("deadline") else None
        nowait = self.options.get("nowait") == "1"
        if self.options.get("announce"):
            time.localtime()  # reads the time zone now, not on the way to starting the job

        def check(*_):
            ready, _, _ = select.select([self.ctrl], [], [], 0)
            if ready:
                messages = self.read_ctrl()
                if messages is None or any(isinstance(m, self.proto.Exit) for m in messages):
                    os._exit(0)  # nothing started yet: just go
                self.pending.extend(messages)
            if deadline is not None and time.monotonic() >= deadline:
                raise _GiveUp
            signal.setitimer(signal.ITIMER_REAL, self._tick(deadline))

        previous_term = signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        signal.signal(signal.SIGALRM, check)
        signal.signal(signal.SIGIO, check)
        self._check_ctrl = check
        ctrl_flags = fcntl.fcntl(self.ctrl, fcntl.F_GETFL)
        fcntl.fcntl(self.ctrl, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(self.ctrl, fcntl.F_SETFL, ctrl_flags | os.O_ASYNC)
        outcome = None
        self.seat = None
        seats = int(self.options.get("seats") or 1)
        election, lock = self.options["election"], self.options["lock"]
        waiting = False
        try:
            if deadline is not None and deadline <= time.monotonic():
                nowait = True  # --timeout 0: one try, as flock -w 0
            while True:
                if seats > 1:
                    self.lock_fd = self._take_seat(seats, nowait, deadline)
                else:
                    self.lock_fd = filestate.take_lock(self.state, lock_name, True)
                if self.lock_fd is None and not nowait and seats == 1:
                    if not waiting:
                        self.send(self.proto.Waiting())
                        waiting = True
                    check()  # what came before O_ASYNC was set; arms the deadline's timer
                    self.lock_fd = filestate.take_lock(self.state, lock_name, False)
                if self.lock_fd is None:
                    break
                barred = self.handover_bars()
                if barred is None:
                    break
                # Being handed to another node (resign --to): let go before anything
                # runs or any term is spent, and let it in.
                self.release()
                won = self.options["election"]  # a seat's election, with seats
                self.options["election"], self.options["lock"] = election, lock
                self.seat = None
                if nowait:
                    break
                if not waiting:
                    self.send(self.proto.Waiting())
                    waiting = True
                check()  # what came before O_ASYNC was set; arms the deadline's timer
                self.await_handover(won, *barred)
        except _GiveUp:
            outcome = self.proto.TimedOut()
        except OSError as exc:
            outcome = self.proto.Error(f"cannot open lock file {self.options['lock']}:"
                                       f" {exc.strerror or exc}")
        except Exception as exc:  # noqa: BLE001 - a file lelect must not use: one line
            outcome = self.proto.Error(str(exc))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            # No SIGIO from here on (the job must not inherit a disposition of ours).
            fcntl.fcntl(self.ctrl, fcntl.F_SETFL, ctrl_flags)
            signal.signal(signal.SIGIO, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, previous_term)
        if outcome is None and self.lock_fd is None:
            timed = deadline is not None and self.options.get("nowait") != "1"
            outcome = self.proto.TimedOut() if timed else self.proto.Busy()
        if outcome is not None:
            self.release()
            self.send(outcome)
            os._exit(0)
        self.on_locked()

    def handover_bars(self):
        """``(handover, last term)`` if a live handover note names another node and so
        bars this candidate, else None (and remember whether it names this one)."""
        from lelect.backends.notes import decode_handover

        data, last = self.filestate.handover_note(self.db, self.options["election"])
        self.stored_term = last
        handover = decode_handover(data)
        self.handover_spent = handover is not None and handover.to == self.options["node_id"]
        if handover is not None and handover.bars(self.options["node_id"], last + 1):
            return handover, last
        return None

    def await_handover(self, election, handover, last):
        """Until the named node has led ``election`` (a term above ``last``) or the note
        is gone (taken back, or expired: the handover is bounded). The deadline timer
        runs."""
        from lelect.backends.notes import decode_handover

        while True:
            time.sleep(HANDOVER_POLL)
            data, term = self.filestate.handover_note(self.db, election)
            if term > last or decode_handover(data) is None:
                return

    def _take_seat(self, seats, nowait, deadline):
        """An election with seats: the flock of the first free seat (None: all taken and
        ``nowait``). Somebody in line goes first; else wait in the line (its flock) and,
        at its head, look for a free seat every SEAT_LOOK (seats.py does the same for
        the other backends)."""
        from lelect.backends.notes import decode_handover
        from lelect.names import SEAT_LOOK, line_election, seat_election

        filestate, election = self.filestate, self.options["election"]
        names = [f"{seat_election(election, seat)}.lock" for seat in range(seats)]
        line = f"{line_election(election)}.lock"

        def reserved(seat):
            """A seat being handed to another node (resign --to --seat)."""
            data, last = filestate.handover_note(self.db, seat_election(election, seat))
            handover = decode_handover(data)
            return handover is not None and handover.bars(self.options["node_id"], last + 1)

        def free_seat():
            # A seat reserved for another node last: taking it (to be barred there and
            # let go of the line, so the named node reaches its head) only when no other
            # seat is free.
            kept = [seat for seat in range(seats) if reserved(seat)]
            for seat in [s for s in range(seats) if s not in kept] + kept:
                fd = filestate.take_lock(self.state, names[seat], True)
                if fd is not None:
                    return seat, fd
            return None

        got = None if filestate.lock_held(self.state, line) else free_seat()
        if got is None and not nowait:
            self.send(self.proto.Waiting())
            self._check_ctrl()  # what came before O_ASYNC was set; arms the deadline's timer
            line_fd = filestate.take_lock(self.state, line, False)
            try:
                while (got := free_seat()) is None:
                    time.sleep(SEAT_LOOK)
            finally:
                os.close(line_fd)
        if got is None:
            return None
        self.seat, fd = got
        self.options["election"] = seat_election(election, self.seat)
        self.options["lock"] = os.path.join(os.path.dirname(self.options["lock"]), names[self.seat])
        return fd

    @staticmethod
    def _tick(deadline):
        """The timer until the campaign's deadline (0: none, the timer is off)."""
        return 0 if deadline is None else max(deadline - time.monotonic(), 0.001)

    def on_locked(self):
        since = time.time()
        try:
            term = self.filestate.next_term(self.lock_fd, self.db, self.options["election"],
                                            self.options["lock"], self.stored_term)
        except Exception as exc:  # noqa: BLE001 - reported as one line by lelect
            self.release()
            self.send(self.proto.Error(str(exc)))
            os._exit(0)
        self.term = term
        # The term is settled (the lock file holds it), so start the job first.
        if self.command and self.options.get("autostart") == "1":
            self.start_job(term, None, self.seat, announce=False)
        # The leader record is for people (`leader`, `watch`) and the history: write it
        # in a thread, so a busy database (another process recovering the WAL) never
        # keeps the main loop from noticing the job's exit. lelect hears "locked" once
        # it is written. (A bare thread: the keeper never imports threading, whose
        # after-fork hook would run in every job it forks.)
        import _thread

        read_end, write_end = os.pipe()
        self.record_pipe = read_end
        self.locked = self.proto.Locked(term, since, -1 if self.seat is None else self.seat)
        _thread.start_new_thread(self._record_leader, (term, since, write_end))

    def _record_leader(self, term, since, done_fd):
        tidy_up_slowly(thread=True)  # the job just forked goes first
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
                history_limit=int(self.options.get("history", "1000")),
                handover_spent=self.handover_spent,
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
            self.send(self.proto.Error(data[1:].decode(errors="replace")))
            os._exit(0)
        self.send(self.locked)
        if self.job_pid is not None:
            self.send(self.proto.Started(self.job_pid))
        self.announced = True
        for message in self.held_back:
            self.send(message)
        self.held_back = []

    def release(self):
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def close_record(self, outcome, reason):
        """The embedded backend: lelect cannot close the leadership (it died, or was
        stopped before it heard that we won) and the job's group is gone. The keeper
        wrote the leadership's record, so it closes it too (after it let go of the
        flock: its own word overwrites the next leader's "vanished"), then forgets
        lelect's member."""
        try:
            if self.record_pipe is not None:  # the record is still being written
                select.select([self.record_pipe], [], [], CLOSE_RECORD_BUDGET)
            conn = self.filestate.open_db(self.state)
            # A busy database must not hold up the exit (nor the next leader) for long.
            conn.execute(f"PRAGMA busy_timeout={int(CLOSE_RECORD_BUDGET * 1000)}")
            try:
                self.filestate.close_leadership(
                    conn, self.options["election"], term=self.term, token=self.options["token"],
                    outcome=outcome, exit_status=self.job_status, reason=reason,
                    slot=None, ended=time.time(),
                )
                with self.filestate.transaction(conn):
                    conn.execute("DELETE FROM members WHERE election=? AND node_id=?",
                                 (self.options["election"], self.options["node_id"]))
            finally:
                conn.close()
        except Exception:  # noqa: BLE001 - the next leader closes it as vanished instead
            pass

