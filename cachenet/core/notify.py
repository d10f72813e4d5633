"""systemd's readiness protocol (``sd_notify``), in the standard library only.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket)
and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. A daemon sends ``READY=1`` once it
serves, ``WATCHDOG=1`` at least every half watchdog period while it is healthy,
``STATUS=...`` for ``systemctl status``, and ``STOPPING=1`` as it shuts down. Without
``NOTIFY_SOCKET`` every call does nothing, so the daemons call it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        #: seconds between watchdog pings (half the period systemd allows), or None
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine \
            else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``KEY=value``) in one datagram; False if there is no socket
        or sending failed (logged once: the daemon serves on regardless)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.sendall("\n".join(fields).encode())
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
                self._failed = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.watchdog_s is not None and self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")
