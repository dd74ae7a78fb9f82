# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database writer of the application-quiescer tests and benchmark: commits transaction n = 1, 2, ... (one row
in ``a`` and one in ``b``, so a half-applied transaction shows) through one session of the database's own client,
recording when each commit returned (epoch seconds, comparable with the module's clock)."""

import subprocess
import threading
import time


class Writer(threading.Thread):

    def __init__(self, argv, tables=""):
        """``argv``: the client (it must answer a ``SELECT 'text'`` with the bare text on one line); ``tables``:
        the tables' qualifier (``"w."``)."""
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.tables = tables
        self.done = []  # (n, epoch when its COMMIT returned)
        self.stop_event = threading.Event()
        self.error = None

    def run(self):
        n = 0
        try:
            while not self.stop_event.is_set():
                n += 1
                self.proc.stdin.write("BEGIN; INSERT INTO %sa VALUES (%d); INSERT INTO %sb VALUES (%d); COMMIT; "
                                      "SELECT 'ok-%d';\n" % (self.tables, n, self.tables, n, n))
                self.proc.stdin.flush()
                line = self.proc.stdout.readline().strip()
                if line != "ok-%d" % n:
                    raise AssertionError("writer: %r after transaction %d: %s" % (line, n, self.proc.stderr.read()))
                self.done.append((n, time.time()))
        except Exception as e:  # reported by the test
            self.error = e

    def count_at(self, epoch):
        return max([n for n, t in self.done if t <= epoch] or [0])

    def wait_for(self, count, timeout=30):
        deadline = time.monotonic() + timeout
        while len(self.done) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "writer stuck at %d commits" % len(self.done)
            time.sleep(0.01)

    def finish(self):
        self.stop_event.set()
        self.join(timeout=60)
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=30)
        assert self.error is None, self.error
