# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL quiescer: the server's own client (``psql``) as a coprocess (see _app_quiesce), host mode.

PostgreSQL has no lock that makes a storage snapshot consistent, and needs none: its documentation
("File System Level Backup") accepts a frozen snapshot taken while the server runs, provided the data
directory, ``pg_wal`` and every tablespace are snapshotted at one instant; the restored server sees a crash
and replays WAL from its last checkpoint. One ``CreateSnapshots`` call over filesystems frozen together is
such a simultaneous snapshot. The low-level API (``pg_backup_start``/``pg_backup_stop``) is not used: the
label it makes needs WAL up to ``pg_backup_stop``'s end point, which lies after a snapshot taken between
the two calls, so without archived WAL such a backup cannot be restored.

So this quiescer proves the documented rule's preconditions and bounds the recovery:

- ``pre()``: the data directory, ``pg_wal`` (followed if it is a symlink) and every tablespace location
  must lie on the frozen mountpoints, or the run is refused; then ``CHECKPOINT`` within the budget
  (``statement_timeout`` and ``lock_timeout`` = ``lock_wait_timeout``, plus a client-side deadline that
  ends the session), and in the same statement's wake the checkpoint's LSN, its redo LSN, the timeline and
  the WAL write position just before the freeze (``pg_current_wal_lsn()``);
- ``post()`` after the thaw, on the same session (same backend pid): the timeline and the latest checkpoint
  must be unchanged (no other checkpoint ran, so the snapshot's ``pg_control`` points at the recorded one and
  recovery starts at the recorded redo LSN), and the WAL write position after the thaw is read. The
  snapshot-time WAL position lies between the two positions read; it is not read while frozen because the
  run has no call inside the guardian's window, and a database round trip there would only lengthen it.
"""

from __future__ import annotations

import os
import re
import shutil
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import Coprocess
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import SqlQuiescer
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._mariadb import paths_outside

CLIENT_FLAGS = ["--no-psqlrc", "--no-align", "--tuples-only", "--quiet", "--no-password", "--field-separator=\t",
                "--set=ON_ERROR_STOP=0"]
ERROR_RE = re.compile(r"(^|: )(ERROR|FATAL|PANIC):  ", re.M)
LSN_RE = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$", re.I)
MIN_VERSION = 100000  # pg_current_wal_lsn(), pg_control_checkpoint()
INFO_SQL = ("SELECT pg_backend_pid(), current_setting('server_version'), current_setting('server_version_num'), "
            "current_setting('data_directory'), pg_is_in_recovery()")
TABLESPACES_SQL = ("SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                   "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1")
POSITION_SQL = ("SELECT pg_backend_pid(), checkpoint_lsn, redo_lsn, timeline_id, pg_current_wal_lsn() "
                "FROM pg_control_checkpoint()")


def lsn_int(text):
    """``'0/3A2B1C8'`` -> its byte position (int)."""
    if not LSN_RE.match(text or ""):
        raise StillpointError("not an LSN: %r" % text)
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def parse_row(text, ncols):
    """The one row a ``--no-align --tuples-only`` query printed, split on tabs; None when there is none."""
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) == ncols:
            return cols
    return None


def parse_tablespaces(text):
    """``[(name, location)]`` from TABLESPACES_SQL's output (a tablespace in the data directory has '')."""
    out = []
    for line in text.splitlines():
        if "\t" in line:
            name, location = line.split("\t", 1)
            out.append((name, location))
    return out


def database_paths(data_directory, tablespaces, realpath=os.path.realpath):
    """What the set must hold: the data directory, ``pg_wal`` (resolved: ``initdb --waldir`` makes it a symlink)
    and every tablespace's location (resolved too)."""
    paths = [("data_directory", data_directory), ("pg_wal", realpath(os.path.join(data_directory, "pg_wal")))]
    for name, location in tablespaces:
        if location:
            paths.append(("tablespace %s" % name, realpath(location)))
    return paths


class PostgreSQLQuiescer(SqlQuiescer):
    kind = "postgresql"
    CLIENT_FLAGS = CLIENT_FLAGS
    ERROR_RE = ERROR_RE
    lock = "checkpoint"  # no lock: CHECKPOINT, then the documented simultaneous-snapshot rule

    def __init__(self, client_argv, lock_wait_timeout=10.0, on_failure="abort", mountpoints=(), env=None):
        super().__init__(client_argv, lock_wait_timeout, on_failure, mountpoints, env)
        self.backend_pid = None

    def _end_session(self):
        """The server overstays the budget: terminate the backend from a second session, then the client.
        (A waiting CHECKPOINT holds no lock anyone queues behind; this only tidies up.)"""
        if self.backend_pid:
            killer = Coprocess(self.argv, env=self.env).start()
            killer.send("SELECT pg_terminate_backend(%d);\n" % int(self.backend_pid))
            killer.finish(timeout=5.0)
        return self.co.kill()

    def _positions(self, out):
        cols = parse_row(out, 5)
        if cols is None:
            return None
        return {"pid": int(cols[0]), "checkpoint_lsn": cols[1], "redo_lsn": cols[2], "timeline": int(cols[3]),
                "wal_lsn": cols[4]}

    def pre(self):
        t0 = time.monotonic()
        action = dict(what="postgresql: open a session, check the paths, CHECKPOINT", cmd=list(self.argv), rc=None,
                      ms=None, planned=False)
        self.co = Coprocess(self.argv, env=self.env).start()
        status, out, err = self.ask(INFO_SQL, max(self.lock_wait_timeout, 10.0))
        cols = parse_row(out, 5) if status == "ok" else None
        if cols is None:
            action.update(rc=self.co.kill(), ms=ms_since(t0), stderr=err)
            return self.refuse_or_continue("postgresql: no session (%s): %s" % (status, err or out.strip()), action)
        self.backend_pid, version, version_num, data_directory, in_recovery = int(cols[0]), cols[1], int(cols[2]), \
            cols[3], cols[4]
        self.recorded["server_version"] = version
        refused = None
        if version_num < MIN_VERSION:
            refused = "postgresql %s is older than 10 (no pg_current_wal_lsn); not supported" % version
        elif in_recovery == "t":
            refused = ("postgresql: this server is a standby (in recovery); take the set on the primary, or with "
                       "pre_hook/post_hook at the filesystem level")
        if refused is None:
            status, out, err = self.ask(TABLESPACES_SQL, 10.0)
            if status != "ok":
                refused = "postgresql: cannot list the tablespaces: %s" % (err or status)
        if refused is None:
            paths = database_paths(data_directory, parse_tablespaces(out))
            self.recorded["paths"] = dict(paths)
            outside = paths_outside(sorted(set(p for _n, p in paths)), self.mountpoints)
            if outside:
                refused = ("postgresql keeps %s outside the filesystems this set freezes (%s): the snapshot would not "
                           "hold the whole database at one instant. Add their mountpoints"
                           % (", ".join("%s (%s)" % (n, p) for n, p in paths if p in outside),
                              ", ".join(self.mountpoints) or "none"))
        if refused is not None:
            action.update(rc=self.co.finish(), ms=ms_since(t0))
            raise StillpointError(refused + "; nothing was frozen or snapshotted", application=self.summary(),
                                  actions=[action])
        budget_ms = max(1, int(self.lock_wait_timeout * 1000))
        status, out, err = self.ask("SET statement_timeout = %d; SET lock_timeout = %d" % (budget_ms, budget_ms), 10.0)
        t_lock = time.monotonic()
        if status == "ok":
            status, out, err = self.ask("CHECKPOINT", self.lock_wait_timeout + 2.0)  # the server's timeout fires first
        self.lock_wait_ms = ms_since(t_lock)
        if status != "ok":
            action.update(rc=self._end_session() if status == "timeout" else self.co.finish(), ms=ms_since(t0),
                          stderr=err)
            why = ("postgresql: CHECKPOINT did not finish within lock_wait_timeout=%gs (%s); the session was ended, "
                   "nothing waits behind it" % (self.lock_wait_timeout, err or status))
            return self.refuse_or_continue(why, action)
        status, out, err = self.ask("RESET statement_timeout; RESET lock_timeout; " + POSITION_SQL, 10.0)
        pos = self._positions(out) if status == "ok" else None
        if pos is None or pos["pid"] != self.backend_pid:
            action.update(rc=self.co.finish(), ms=ms_since(t0), stderr=err)
            return self.refuse_or_continue("postgresql: cannot read the checkpoint position: %s" % (err or out), action)
        self.mark_locked()
        self.recorded.update(checkpoint_lsn=pos["checkpoint_lsn"], redo_lsn=pos["redo_lsn"], timeline=pos["timeline"],
                             wal_lsn_before_freeze=pos["wal_lsn"], backend_pid=self.backend_pid)
        action.update(rc=0, ms=ms_since(t0))
        return True, action

    def post(self):
        if not self.locked:  # pre() failed and the run went on (continue)
            return False, None
        t0 = time.monotonic()
        action = dict(what="postgresql: confirm on the same session (pid, timeline, checkpoint) after the thaw",
                      cmd=list(self.argv), rc=None, ms=None, planned=False)
        problems = []
        if not self.co.alive():
            problems.append("the client exited during the call (rc=%s)" % self.co.proc.poll())
        else:
            status, out, err = self.ask(POSITION_SQL, 10.0)
            pos = self._positions(out) if status == "ok" else None
            if pos is None:
                problems.append("the session did not answer (%s: %s)" % (status, err or out.strip()))
            else:
                self.recorded["wal_lsn_after_thaw"] = pos["wal_lsn"]
                if pos["pid"] != self.backend_pid:
                    problems.append("another backend answered (pid %s, not %s)" % (pos["pid"], self.backend_pid))
                if pos["timeline"] != self.recorded["timeline"]:
                    problems.append("the timeline changed (%s -> %s)" % (self.recorded["timeline"], pos["timeline"]))
                if pos["checkpoint_lsn"] != self.recorded["checkpoint_lsn"]:
                    problems.append("another checkpoint (%s) completed around the call: the snapshot's pg_control may "
                                    "not point at the recorded %s" % (pos["checkpoint_lsn"], self.recorded["checkpoint_lsn"]))
        return self.close(action, t0, problems)


def client_argv(params):
    """psql and its connection options; the password never (PGPASSWORD in the environment, or a password file)."""
    client = params.get("application_client") or shutil.which(
        "psql", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"]))
    if not client:
        raise StillpointError("application=postgresql needs the psql client on the host; none was found: install it "
                              "(Debian: postgresql-client) or give application_client")
    argv = [client]
    socket = params.get("application_login_unix_socket")
    port = params.get("application_login_port")
    if socket:
        # psql takes the socket's directory as its host; a socket file path (.s.PGSQL.<port>) gives the port too
        base = os.path.basename(socket)
        if base.startswith(".s.PGSQL."):
            socket, port = os.path.dirname(socket), port or int(base.rsplit(".", 1)[1])
        argv.append("--host=%s" % socket)
    elif params.get("application_login_host"):
        argv.append("--host=%s" % params["application_login_host"])
    if port:
        argv.append("--port=%d" % int(port))
    if params.get("application_login_user"):
        argv.append("--username=%s" % params["application_login_user"])
    if "PGDATABASE" not in os.environ:
        argv.append("--dbname=postgres")
    return argv


def from_params(params, mountpoints=()):
    env = {}
    if params.get("application_login_password"):
        env["PGPASSWORD"] = params["application_login_password"]
    if params.get("application_config_file"):
        env["PGPASSFILE"] = params["application_config_file"]
    return PostgreSQLQuiescer(client_argv(params), params["lock_wait_timeout"], params["on_quiesce_failure"],
                              mountpoints=mountpoints, env=env or None)
