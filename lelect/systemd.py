"""systemd's notify protocol (``Type=notify``), in the standard library: each message is
one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket).

``lelect campaign`` says READY=1 once it campaigns (a waiting standby is ready), STATUS=
lines as things change, WATCHDOG=1 every half ``$WATCHDOG_USEC`` from the loop that
drives the campaign (so a stuck loop stops the pings and systemd restarts lelect; the
keeper still guards the job), and STOPPING=1 on the way out.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Talks to systemd when it is listening (``NOTIFY_SOCKET`` set); else does nothing."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6  # half the watchdog timeout
        self._sock: socket.socket | None = None
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *assignments: str) -> None:
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError:
            pass  # systemd gone or the socket full: nothing to do about it

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
