# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small QMP client (QEMU Machine Protocol over a unix socket), standard library only.

    with QMP("/path/qmp.sock") as q:
        q.execute("blockdev-add", driver="raw", **{"node-name": "n1", "file": {...}})
        q.execute("device_del", id="dev1")
        q.wait_event("DEVICE_DELETED", lambda e: e["data"].get("device") == "dev1")

``execute`` returns the command's ``return`` value or raises :class:`QMPError` with QEMU's
``desc``. Events that arrive while waiting for a reply are kept for ``wait_event``. One
connection is safe to share between threads (a lock serialises commands).
"""

from __future__ import annotations

import json
import socket
import threading
import time


class QMPError(Exception):
    """QEMU refused a command (``desc`` is its message), or the monitor is gone."""

    def __init__(self, message, error_class=None):
        super().__init__(message)
        self.error_class = error_class


class QMP:
    def __init__(self, path, timeout=30.0):
        self.path = path
        self.timeout = timeout
        self.events = []
        self._lock = threading.RLock()
        self._buf = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
            greeting = self._read()
            if "QMP" not in greeting:
                raise QMPError("%s did not greet with QMP: %r" % (path, greeting))
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as e:
            self._sock.close()
            raise QMPError("cannot talk QMP on %s: %s" % (path, e)) from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self._sock.close()
        except OSError:
            pass

    def _read(self, deadline=None):
        while b"\n" not in self._buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("no QMP message")
                self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection to %s closed" % self.path)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        with self._lock:
            try:
                self._sock.settimeout(self.timeout)
                self._sock.sendall(json.dumps(msg).encode() + b"\n")
                deadline = time.monotonic() + self.timeout
                while True:
                    reply = self._read(deadline)
                    if "event" in reply:
                        self.events.append(reply)
                        continue
                    if "error" in reply:
                        raise QMPError("%s: %s" % (command, reply["error"].get("desc")),
                                       reply["error"].get("class"))
                    return reply.get("return")
            except (OSError, ValueError) as e:
                raise QMPError("%s on %s: %s" % (command, self.path, e)) from e

    def wait_event(self, name, match=None, timeout=30.0):
        """The first event ``name`` (for which ``match(event)`` is true), kept or still to come."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for i, ev in enumerate(self.events):
                    if ev.get("event") == name and (match is None or match(ev)):
                        return self.events.pop(i)
                try:
                    ev = self._read(deadline)
                except socket.timeout:
                    raise QMPError("no %s event within %.0f s on %s" % (name, timeout, self.path)) from None
                except OSError as e:
                    raise QMPError("waiting for %s on %s: %s" % (name, self.path, e)) from e
                if "event" in ev:
                    self.events.append(ev)
