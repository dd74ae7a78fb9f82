# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""MariaDB / MySQL held quiescer: the backup lock held by the server's own client (``mariadb``/``mysql``)
running as a coprocess, across the freeze and the CreateSnapshots call (see _app_quiesce).

MariaDB >= 10.4: ``BACKUP STAGE START``, ``FLUSH``, ``BLOCK_DDL``, ``BLOCK_COMMIT`` (commits wait, the
binary log is flushed; writes to transactional tables go on until they commit), released with
``BACKUP STAGE END``. Older MariaDB and MySQL: ``FLUSH TABLES WITH READ LOCK`` / ``UNLOCK TABLES``
(MySQL 8's ``LOCK INSTANCE FOR BACKUP`` does not block commits, so it is not enough for a snapshot).
Each lock statement waits at most ``lock_wait_timeout`` (the session's own ``lock_wait_timeout``, and a
client-side deadline that kills the session if the server overstays it).

Under the lock the binary log position and the GTID position are read; after the thaw the same session
answers again (same connection id: the lock was never released) and the positions must be unchanged
(no commit slipped through). Only then is the lock confirmed.

Before the lock the server's own settings are read and recorded (:func:`server_record`) for a restore drill that
starts a private server on a copy of the set (``_app_recover.prepare_mariadb``): ``paths`` (``data_directory``, and
where they differ from the defaults the binary log's base name and index, ``innodb_log_group_home_dir``,
``innodb_data_home_dir``, ``innodb_undo_directory``) and ``innodb`` (page size, redo log file size). No credentials.
Every one of those paths must lie on the set's filesystems.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import Coprocess
from ansible_collections.stillpoint.snapshots.plugins.module_utils._app_quiesce import SqlQuiescer
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since

CLIENTS = {"mariadb": ("mariadb", "mysql"), "mysql": ("mysql", "mariadb")}
CLIENT_FLAGS = ["--batch", "--skip-column-names", "--unbuffered", "--force", "--skip-reconnect"]
BACKUP_STAGES = ("BACKUP STAGE START", "BACKUP STAGE FLUSH", "BACKUP STAGE BLOCK_DDL", "BACKUP STAGE BLOCK_COMMIT")
ERROR_RE = re.compile(r"^ERROR (\d+)", re.M)
INFO_SQL = ("SELECT CONNECTION_ID(), VERSION(), @@datadir, @@log_bin, IFNULL(@@log_bin_basename, ''), "
            "IFNULL(@@innodb_log_group_home_dir, ''), IFNULL(@@log_bin_index, ''), IFNULL(@@innodb_data_home_dir, ''), "
            "IFNULL(@@innodb_undo_directory, ''), @@innodb_page_size, @@innodb_log_file_size")
INFO_COLUMNS = ("connection_id", "version", "datadir", "log_bin", "log_bin_basename", "innodb_log_group_home_dir",
                "log_bin_index", "innodb_data_home_dir", "innodb_undo_directory", "innodb_page_size",
                "innodb_log_file_size")
DRILL_FIELDS = ("paths", "innodb")  # what a drill's private server needs; dropped when the record would not fit


def parse_version(text):
    """``(flavor, (major, minor, patch))`` from ``VERSION()``: ``10.11.19-MariaDB-0+deb12u1-log``."""
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", text or "")
    if not match:
        raise StillpointError("cannot read the server version from %r" % text)
    flavor = "mariadb" if "mariadb" in text.lower() else "mysql"
    return flavor, tuple(int(x) for x in match.groups())


def lock_plan(version_text):
    """The lock statements and the release statement for the server that answered ``VERSION()``."""
    flavor, version = parse_version(version_text)
    if flavor == "mariadb" and version >= (10, 4, 0):
        return "backup_stage", list(BACKUP_STAGES), "BACKUP STAGE END"
    return "ftwrl", ["FLUSH TABLES WITH READ LOCK"], "UNLOCK TABLES"


def parse_master_status(text):
    """``SHOW MASTER STATUS`` in batch mode (tab separated, no header): file and position, or Nones (no binlog)."""
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[1].isdigit():
            return cols[0], int(cols[1])
    return None, None


def server_record(cols):
    """The ``INFO_SQL`` answer (tab-separated columns) -> ``(connection id, version, record)``: ``record`` holds
    ``server_version``, ``paths`` (absolute, normalised; a relative setting is relative to the data directory; the
    defaults - redo and InnoDB data in the data directory, the binlog index beside the binlog - left out) and
    ``innodb`` (``page_size``, ``log_file_size``: a server started on a copy must use the same)."""
    row = dict(zip(INFO_COLUMNS, cols + [""] * (len(INFO_COLUMNS) - len(cols))))
    datadir = os.path.normpath(row["datadir"])

    def absolute(value):
        return os.path.normpath(value if os.path.isabs(value) else os.path.join(datadir, value))

    paths = {"data_directory": datadir}
    if row["log_bin"] == "1" and row["log_bin_basename"]:
        paths["log_bin_basename"] = absolute(row["log_bin_basename"])
        if row["log_bin_index"] and absolute(row["log_bin_index"]) != paths["log_bin_basename"] + ".index":
            paths["log_bin_index"] = absolute(row["log_bin_index"])
    for key in ("innodb_log_group_home_dir", "innodb_data_home_dir", "innodb_undo_directory"):
        if row[key] and absolute(row[key]) != datadir:
            paths[key] = absolute(row[key])
    innodb = {k: int(row["innodb_" + k]) for k in ("page_size", "log_file_size") if row["innodb_" + k].isdigit()}
    return int(row["connection_id"]), row["version"], {"server_version": row["version"], "paths": paths,
                                                       "innodb": innodb}


def fit_record(record):
    """The record as the catalog stores it (``stillpoint:app``, chunked by _catalog.encode_json). When the drill's
    fields would make it too long for the catalog, they are left out (and ``drill`` says why), never the lock's."""
    try:
        _catalog.encode_json(_catalog.K_APP, record, what="application record")
        return record
    except StillpointError:
        out = {k: v for k, v in record.items() if k not in DRILL_FIELDS}
        out["drill"] = "paths not recorded: %d characters of JSON would exceed the catalog's tags" % len(
            json.dumps(record, separators=(",", ":"), sort_keys=True))
        return out


def paths_outside(paths, mountpoints, stat=os.stat):
    """The paths that lie on none of the filesystems of ``mountpoints`` (compared by device number)."""
    devs = set()
    for mp in mountpoints:
        devs.add(stat(mp).st_dev)
    out = []
    for path in paths:
        try:
            if stat(path).st_dev not in devs:
                out.append(path)
        except OSError:
            out.append(path)
    return out


class MariaDBQuiescer(SqlQuiescer):
    kind = "mariadb"
    CLIENT_FLAGS = CLIENT_FLAGS
    ERROR_RE = ERROR_RE

    def __init__(self, client_argv, lock_wait_timeout=10.0, on_failure="abort", mountpoints=(), env=None,
                 kind="mariadb"):
        super().__init__(client_argv, lock_wait_timeout, on_failure, mountpoints, env)
        self.kind = kind
        self.connection_id = None
        self.release_sql = None

    # ------------------------------------------------------------------ the session
    def _kill_session(self):
        """The server overstays the budget: end the session from outside (KILL), then the client."""
        if self.connection_id:
            killer = Coprocess(self.argv, env=self.env).start()
            killer.send("KILL %d;\n" % int(self.connection_id))
            killer.finish(timeout=5.0)
        return self.co.kill()

    def pre(self):
        t0 = time.monotonic()
        action = dict(what="%s: open a session and take the backup lock" % self.kind, cmd=list(self.argv), rc=None,
                      ms=None, planned=False)
        self.co = Coprocess(self.argv, env=self.env).start()
        status, out, err = self.ask(INFO_SQL, max(self.lock_wait_timeout, 10.0))
        if status != "ok":
            action.update(rc=self.co.kill(), ms=ms_since(t0), stderr=err)
            return self.refuse_or_continue("%s: no session (%s): %s" % (self.kind, status, err or out), action)
        self.connection_id, version, server = server_record(out.strip("\n").split("\t"))
        self.recorded.update(server)
        paths = [os.path.dirname(p) if k in ("log_bin_basename", "log_bin_index") else p
                 for k, p in server["paths"].items()]
        outside = paths_outside(sorted(set(paths)), self.mountpoints)
        if outside:
            action.update(rc=self.co.finish(), ms=ms_since(t0))
            raise StillpointError(
                "%s keeps %s outside the filesystems this set freezes (%s): the set would not hold the whole "
                "database. Add their mountpoints; nothing was frozen or snapshotted"
                % (self.kind, ", ".join(outside), ", ".join(self.mountpoints) or "none"),
                application=self.summary(), actions=[action])
        self.lock, statements, self.release_sql = lock_plan(version)
        status, out, err = self.ask("SET SESSION lock_wait_timeout = %d" % max(1, int(math.ceil(self.lock_wait_timeout))),
                                    10.0)
        t_lock = time.monotonic()
        budget_end = t_lock + self.lock_wait_timeout + 2.0  # the server's own timeout fires first
        for sql in statements:
            if status != "ok":
                break
            status, out, err = self.ask(sql, max(0.1, budget_end - time.monotonic()))
        self.lock_wait_ms = ms_since(t_lock)
        if status != "ok":
            action.update(rc=self._kill_session() if status == "timeout" else self.co.finish(), ms=ms_since(t0),
                          stderr=err)
            why = ("%s: the %s lock was not granted within lock_wait_timeout=%gs (%s); the session was ended, "
                   "so nothing waits behind it" % (self.kind, self.lock, self.lock_wait_timeout, err or status))
            return self.refuse_or_continue(why, action)
        self.mark_locked()
        status, out, err = self.ask("SHOW MASTER STATUS", 10.0)
        self.recorded["binlog_file"], self.recorded["binlog_position"] = parse_master_status(out)
        gtid_sql = "SELECT @@gtid_binlog_pos" if "mariadb" in version.lower() else "SELECT @@global.gtid_executed"
        status, out, err = self.ask(gtid_sql, 10.0)
        self.recorded["gtid"] = out.strip().replace("\n", "") if status == "ok" else None
        action.update(rc=0, ms=ms_since(t0))
        return True, action

    def post(self):
        if not self.locked:  # pre() failed and the run went on (continue): nothing to confirm or release
            return False, None
        t0 = time.monotonic()
        action = dict(what="%s: confirm the lock on the same session, then release it" % self.kind,
                      cmd=list(self.argv), rc=None, ms=None, planned=False)
        problems = []
        if not self.co.alive():
            problems.append("the client exited during the call (rc=%s)" % self.co.proc.poll())
        else:
            status, out, err = self.ask("SELECT CONNECTION_ID()", 10.0)
            if status != "ok" or out.strip() != str(self.connection_id):
                problems.append("the session did not answer as connection %s (%s: %s)"
                                % (self.connection_id, status, err or out.strip()))
            status, out, _err = self.ask("SHOW MASTER STATUS", 10.0)
            if parse_master_status(out) != (self.recorded["binlog_file"], self.recorded["binlog_position"]):
                problems.append("the binary log moved while the lock was held (%s)" % out.strip())
            status, out, err = self.ask(self.release_sql, 10.0)
            if status != "ok":
                problems.append("%s failed: %s" % (self.release_sql, err or status))
        return self.close(action, t0, problems)

    def catalog_record(self):
        return fit_record(super().catalog_record())


def client_argv(params, kind):
    """The client and its connection options (never the password: that goes through MYSQL_PWD)."""
    client = params.get("application_client")
    if not client:
        for name in CLIENTS[kind]:
            client = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"]))
            if client:
                break
    if not client:
        raise StillpointError("application=%s needs the %s client (%s) on the host; none was found: install it or give "
                              "application_client" % (kind, kind, " or ".join(CLIENTS[kind])))
    argv = [client]
    if params.get("application_config_file"):
        argv.append("--defaults-file=%s" % params["application_config_file"])
    for key, flag in (("application_login_user", "--user"), ("application_login_host", "--host"),
                      ("application_login_port", "--port"), ("application_login_unix_socket", "--socket")):
        if params.get(key) not in (None, ""):
            argv.append("%s=%s" % (flag, params[key]))
    return argv


def from_params(params, mountpoints=()):
    kind = params["application"]
    if kind not in CLIENTS:
        raise StillpointError("unknown application %r" % kind)
    env = {"MYSQL_PWD": params["application_login_password"]} if params.get("application_login_password") else None
    return MariaDBQuiescer(client_argv(params, kind), params["lock_wait_timeout"], params["on_quiesce_failure"],
                           mountpoints=mountpoints, env=env, kind=kind)
