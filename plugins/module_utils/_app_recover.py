# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The application side of a restore: start the restored database, wait until its recovery is over, check it
with its own tool, report the recovery work it did and compare where it stands with what the catalog recorded.

One function per application, one interface: ``recover_<app>(ctx)`` takes a :class:`Recovery` (the commands,
the parameters, the catalog record, the recorder) and returns the result's application part:

- ``started`` (the start hook ran) / ``already_running`` (the server answered before it, so nothing was started),
  ``ready_ms`` (from the start until the server answered and its recovery was over);
- ``recovery``: what the server's own log (or, without one, its status) says it replayed: ``crash_recovery``,
  ``source`` (``log``, ``innodb_status``, ``pg_control``), ``start_lsn``/``end_lsn`` and ``bytes`` (MariaDB: the
  checkpoint LSN and the end of the redo log; PostgreSQL: ``redo starts at``/``redo done at``, bytes of WAL);
- ``check``: the application's own check (``mariadb-check``/``mysqlcheck``, ``pg_amcheck``): ``status`` passed,
  failed or skipped (with ``reason``), ``problems``;
- ``position``: the catalog's record (``stillpoint:app``) against the restored server: ``matches`` true, false or
  None (nothing recorded: a set without a quiescer), ``problems``.

:func:`recover` dispatches and raises :class:`StillpointError` (never exits) when the server does not come up, its
check fails or its position differs from the record; the error carries the result so far.
"""

from __future__ import annotations

import glob
import os
import re
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _mariadb
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _postgresql
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since

APPLICATIONS = ("mariadb", "mysql", "postgresql")
POLL_S = 0.2
MAX_PROBLEMS = 20

# MariaDB / MySQL error log (InnoDB crash recovery and the binary log's own recovery)
MARIADB_START_RE = re.compile(r"(Starting MariaDB .* as process \d+|starting as process \d+)")
MARIADB_CKPT_RE = re.compile(r"Starting crash recovery from checkpoint LSN=(\d+)")
MARIADB_END_RE = re.compile(r"End of log at LSN=(\d+)")
MARIADB_PAGES_RE = re.compile(r"To recover: (\d+) pages")
MARIADB_BINLOG_RE = re.compile(r"Recovering after a crash using (\S+)")
MARIADB_PREPARED_RE = re.compile(r"Found (\d+) prepared transaction")
MARIADB_LSN_RE = re.compile(r"InnoDB: log sequence number (\d+)")
INNODB_STATUS_RE = {"lsn": re.compile(r"^Log sequence number\s+(\d+)", re.M),
                    "checkpoint": re.compile(r"^Last checkpoint at\s+(\d+)", re.M)}
# PostgreSQL server log
PG_START_RE = re.compile(r"LOG:\s+starting PostgreSQL")
PG_CRASH_RE = re.compile(r"database system was (not properly shut down|interrupted)")
PG_REDO_START_RE = re.compile(r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
PG_REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
PG_NO_REDO_RE = re.compile(r"redo is not required")


class Recovery:
    """What a ``recover_<app>`` function works with: commands (``run``), parameters, the catalog's record
    (``record``, {} for a set without a quiescer), the actions taken, check mode and the clock."""

    def __init__(self, run_command, params, record=None, check_mode=False, which=None, sleep=time.sleep,
                 clock=time.monotonic, env=None):
        self._run = run_command
        self.params = params
        self.record = dict(record or {})
        self.check_mode = check_mode
        self.which = which or (lambda name, required=False: None)
        self.sleep = sleep
        self.clock = clock
        self.env = dict(env or {})
        self.actions = []
        self.changed = False
        self.result = {"application": params["application"], "started": False, "already_running": False,
                       "ready_ms": None, "recovery": None, "check": None, "position": None}
        self._t_start = None

    # commands -----------------------------------------------------------------------------

    def run(self, argv, env=True):
        """A command (argv list); the password reaches it through ``env``, never its argv. ``(rc, out, err)``."""
        extra = {"LC_ALL": "C", "LANG": "C"}
        if env:
            extra.update(self.env)
        return self._run(list(argv), environ_update=extra)

    def note(self, what, cmd=None, rc=None, t0=None, **extra):
        entry = dict(what=what, cmd=list(cmd or []), rc=rc, ms=None if t0 is None else ms_since(t0, self.clock()),
                     planned=self.check_mode)
        entry.update(extra)
        self.actions.append(entry)
        return entry

    def fail(self, msg, **details):
        details.update(actions=self.actions, changed=self.changed, **{"app_recover": self.result})
        raise StillpointError(msg, **details)

    def timeout_bin(self):
        return self.which("timeout", required=False) or "timeout"

    def start(self, answers):
        """Run the start hook unless ``answers()`` says the server is already up. True when it ran."""
        cmd = list(self.params.get("start_command") or [])
        if answers():
            self.result["already_running"] = True
            self.note("start hook: not run, the server already answers", cmd)
            return False
        if not cmd:
            self.fail("the %s server does not answer and no start_command was given to start it: give the start "
                      "hook (for example [systemctl, start, mariadb])" % self.params["application"])
        timeout = float(self.params.get("hook_timeout") or 60.0)
        argv = [self.timeout_bin(), "--kill-after=5", "%g" % timeout] + cmd
        t0 = self._t_start = self.clock()
        rc, out, err = self.run(argv, env=False)
        self.changed = True
        self.result["started"] = True
        self.note("start hook", cmd, rc, t0, timed_out=rc in (124, 137))
        if rc != 0:
            self.fail("start hook %s %s (rc=%s); the filesystems are mounted, the server may not be running"
                      % (cmd, "timed out after %gs" % timeout if rc in (124, 137) else "failed", rc),
                      rc=rc, stdout=out, stderr=err)
        return True

    def wait(self, what, probe, timeout=None):
        """Poll ``probe() -> (done, detail)`` until done or ``recovery_timeout``; fail with the last detail."""
        timeout = float(self.params.get("recovery_timeout") or 600.0) if timeout is None else timeout
        t0 = self.clock()
        deadline = t0 + timeout
        while True:
            done, detail = probe()
            if done:
                self.note(what, t0=t0)
                return detail
            if self.clock() >= deadline:
                self.note(what, t0=t0, rc=1)
                self.fail("%s: not within recovery_timeout=%gs (%s)" % (what, timeout, detail))
            self.sleep(POLL_S)

    def ready(self):
        if self._t_start is not None:
            self.result["ready_ms"] = ms_since(self._t_start, self.clock())

    # logs ---------------------------------------------------------------------------------

    def log_offset(self):
        """The size of ``log_file`` before the start (what the new start writes lies after it)."""
        path = self.params.get("log_file")
        if not path:
            return None
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    @staticmethod
    def read_log(path, offset, start_re):
        """The log's text written by the last start: from ``offset`` when known, else from its last start line."""
        try:
            with open(path, "rb") as handle:
                if offset:
                    handle.seek(offset)
                text = handle.read().decode(errors="replace")
        except OSError:
            return None
        if offset is None:
            starts = [m.start() for m in start_re.finditer(text)]
            if starts:
                text = text[starts[-1]:]
        return text


def _limit(lines):
    lines = [line for line in lines if line.strip()]
    return lines[:MAX_PROBLEMS] + (["... %d more" % (len(lines) - MAX_PROBLEMS)] if len(lines) > MAX_PROBLEMS else [])


# MariaDB / MySQL --------------------------------------------------------------------------------

def parse_mariadb_log(text):
    """Recovery work from the part of the error log the last start wrote."""
    ckpt, end = MARIADB_CKPT_RE.search(text), MARIADB_END_RE.search(text)
    out = {"source": "log", "crash_recovery": bool(ckpt), "start_lsn": None, "end_lsn": None, "bytes": 0,
           "pages": None, "binlog_recovery": None, "prepared_transactions": 0}
    if ckpt:
        out["start_lsn"] = int(ckpt.group(1))
        out["end_lsn"] = int(end.group(1)) if end else None
        out["bytes"] = out["end_lsn"] - out["start_lsn"] if end else None
    else:
        lsn = MARIADB_LSN_RE.search(text)
        if lsn:
            out["start_lsn"] = out["end_lsn"] = int(lsn.group(1))
    pages = MARIADB_PAGES_RE.search(text)
    if pages:
        out["pages"] = int(pages.group(1))
    binlog = MARIADB_BINLOG_RE.search(text)
    if binlog:
        out["binlog_recovery"] = binlog.group(1)
    prepared = MARIADB_PREPARED_RE.search(text)
    if prepared:
        out["prepared_transactions"] = int(prepared.group(1))
    return out


def parse_innodb_status(text):
    """``SHOW ENGINE INNODB STATUS``: the current LSN and the last checkpoint (their difference bounds the redo
    a recovery right now would replay)."""
    out = {}
    for key, regex in INNODB_STATUS_RE.items():
        m = regex.search(text.replace("\\n", "\n"))
        if m:
            out[key] = int(m.group(1))
    return out


def parse_binary_logs(text):
    """``SHOW BINARY LOGS`` (batch, no column names) -> {file: size}."""
    out = {}
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) >= 2 and cols[1].strip().isdigit():
            out[cols[0]] = int(cols[1])
    return out


def parse_mariadb_check(rc, text):
    """``mariadb-check --check`` output -> (tables OK, problem lines)."""
    ok, problems, current = 0, [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        if re.match(r"^\S+\.\S+\s+OK\s*$", line):
            ok += 1
        elif re.match(r"^\S+\.\S+\s*$", line):
            current = line.strip()
        elif re.match(r"^(error|warning)\s*:", line.strip(), re.I) or re.search(r"\b(corrupt|crashed)\b", line, re.I):
            problems.append("%s: %s" % (current, line.strip()) if current else line.strip())
    if rc != 0 and not problems:
        problems.append("exit status %s" % rc)
    return ok, _limit(problems)


def _mariadb_sql(ctx, argv, sql):
    return ctx.run(argv + ["--batch", "--skip-column-names", "-e", sql])


def recover_mariadb(ctx):
    p = ctx.params
    kind = p["application"]
    argv = _mariadb.client_argv(p, kind)
    if ctx.check_mode:
        return _plan(ctx, argv, "%s-check --all-databases --check" % ("mariadb" if kind == "mariadb" else "mysql"))

    def answers():
        rc, out, _err = _mariadb_sql(ctx, argv, "SELECT 1")
        return rc == 0 and out.strip() == "1"

    offset = ctx.log_offset()
    ctx.start(answers)
    ctx.wait("wait until the server answers (InnoDB recovery applied)", lambda: (answers(), "no answer"))
    sql = "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'ROLLING BACK'"

    def rolled_back():
        rc, out, err = _mariadb_sql(ctx, argv, sql)
        return rc == 0 and out.strip() == "0", (err.strip() or "%s recovered transactions still rolling back" % out.strip())

    ctx.wait("wait for the rollback of recovered transactions", rolled_back)
    ctx.ready()

    # recovery work: the error log of this start, else the InnoDB status (an upper bound)
    log = p.get("log_file")
    if not log:
        rc, out, _err = _mariadb_sql(ctx, argv, "SELECT @@log_error, @@datadir")
        cols = out.strip().split("\t") if rc == 0 else []
        if len(cols) == 2 and cols[0] and cols[0] != "stderr":
            log = cols[0] if os.path.isabs(cols[0]) else os.path.join(cols[1], cols[0])
            if not log.endswith(".err") and not os.path.exists(log):
                log += ".err"
    text = Recovery.read_log(log, offset, MARIADB_START_RE) if log else None
    if text is not None and MARIADB_START_RE.search(text):
        recovery = parse_mariadb_log(text)
        recovery["log_file"] = log
    else:
        rc, out, _err = _mariadb_sql(ctx, argv, "SHOW ENGINE INNODB STATUS")
        status = parse_innodb_status(out) if rc == 0 else {}
        recovery = {"source": "innodb_status", "crash_recovery": None, "start_lsn": status.get("checkpoint"),
                    "end_lsn": status.get("lsn"), "log_file": log,
                    "bytes": (status["lsn"] - status["checkpoint"]) if len(status) == 2 else None,
                    "note": "no error log of this start was readable: the bytes are the redo between the last "
                            "checkpoint and the current LSN, an upper bound of what the recovery replayed"}
    ctx.result["recovery"] = recovery

    # the application's own check
    if p.get("run_check", True):
        names = ("mariadb-check", "mysqlcheck") if kind == "mariadb" else ("mysqlcheck", "mariadb-check")
        tool = _sibling(argv[0], names, ctx.which)
        if tool is None:
            ctx.result["check"] = {"tool": names[0], "status": "skipped",
                                   "reason": "neither %s found on the host" % " nor ".join(names)}
        else:
            cmd = [tool] + argv[1:] + ["--all-databases", "--check"]
            t0 = ctx.clock()
            rc, out, err = ctx.run(cmd)
            ctx.note("check every table (%s)" % os.path.basename(tool), cmd, rc, t0)
            ok, problems = parse_mariadb_check(rc, out + "\n" + err)
            ctx.result["check"] = {"tool": os.path.basename(tool), "status": "failed" if problems else "passed",
                                   "tables_ok": ok, "problems": problems, "ms": ms_since(t0, ctx.clock())}
    else:
        ctx.result["check"] = {"tool": None, "status": "skipped", "reason": "run_check=false"}

    # the restored server's binary log against the record
    rec = ctx.record
    rc, out, _err = _mariadb_sql(ctx, argv, "SHOW BINARY LOGS")
    logs = parse_binary_logs(out) if rc == 0 else {}
    rc, out, _err = _mariadb_sql(ctx, argv, "SELECT @@gtid_binlog_pos" if kind == "mariadb"
                                 else "SELECT @@global.gtid_executed")
    gtid = out.strip() if rc == 0 else None
    restored = {"binlog_sizes": logs, "gtid": gtid}
    problems = []
    if not rec.get("binlog_file"):
        matches = None
        problems.append("the set records no binary log position (taken without a quiescer): nothing to compare")
    else:
        restored["binlog_position"] = logs.get(rec["binlog_file"])
        if rec["binlog_file"] not in logs:
            problems.append("the recorded binary log %s is not among the restored server's (%s)"
                            % (rec["binlog_file"], ", ".join(sorted(logs)) or "none"))
        elif logs[rec["binlog_file"]] != rec.get("binlog_position"):
            problems.append("%s ends at %s, the record says %s" % (rec["binlog_file"], logs[rec["binlog_file"]],
                                                                   rec.get("binlog_position")))
        if "gtid" in rec and (rec["gtid"] or "") != (gtid or ""):
            problems.append("GTID position %r, the record says %r" % (gtid, rec["gtid"]))
        matches = not problems
    ctx.result["position"] = {"recorded": {k: rec.get(k) for k in ("binlog_file", "binlog_position", "gtid")},
                              "restored": restored, "matches": matches, "problems": problems}
    return ctx.result


# PostgreSQL -------------------------------------------------------------------------------------

def parse_controldata(text):
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def parse_pg_log(text):
    """Recovery work from the part of the server log the last start wrote."""
    start, done = PG_REDO_START_RE.search(text), PG_REDO_DONE_RE.search(text)
    out = {"source": "log", "crash_recovery": bool(PG_CRASH_RE.search(text)), "start_lsn": None, "end_lsn": None,
           "bytes": None}
    if start:
        out["start_lsn"] = start.group(1)
    if done:
        out["end_lsn"] = done.group(1)
    if start and done:
        out["bytes"] = _postgresql.lsn_int(done.group(1)) - _postgresql.lsn_int(start.group(1))
    elif PG_NO_REDO_RE.search(text) or not out["crash_recovery"]:
        out["bytes"] = 0
    return out


def redo_starts_at_record(start, rec):
    """``redo starts at`` is the recorded redo LSN; when the redo LSN is the checkpoint record itself (nothing was
    written while the checkpoint ran), replay starts at the record after it."""
    if start == rec.get("redo_lsn"):
        return True
    return rec.get("redo_lsn") == rec.get("checkpoint_lsn") and _postgresql.lsn_int(start) > _postgresql.lsn_int(
        rec["redo_lsn"]) and _postgresql.lsn_int(start) - _postgresql.lsn_int(rec["redo_lsn"]) <= 8192


def pg_bin(ctx, name):
    """A PostgreSQL program: bin_dir, PATH, then Debian's /usr/lib/postgresql/<newest>/bin."""
    if ctx.params.get("bin_dir"):
        path = os.path.join(ctx.params["bin_dir"], name)
        return path if os.path.exists(path) else None
    found = ctx.which(name, required=False)
    if found:
        return found
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(re.sub(r"\D", "", d) or 0), reverse=True):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def recover_postgresql(ctx):
    p = ctx.params
    argv = _postgresql.client_argv(p)
    conn = [a for a in argv[1:] if not a.startswith("--dbname=")]
    if ctx.check_mode:
        return _plan(ctx, argv, "pg_amcheck --all")
    rec = ctx.record
    problems = []

    def sql(statement):
        return ctx.run(argv + ["-X", "-A", "-t", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "-c", statement])

    isready = pg_bin(ctx, "pg_isready")

    def answers():
        if isready:
            return ctx.run([isready] + conn)[0] == 0
        return sql("SELECT 1")[0] == 0

    # before the start: what pg_control says the recovery will start from
    datadir = p.get("data_directory") or (rec.get("paths") or {}).get("data_directory")
    control = None
    controldata = pg_bin(ctx, "pg_controldata")
    running = answers()
    if datadir and controldata and not running:
        cmd = [controldata, "-D", datadir]
        t0 = ctx.clock()
        rc, out, err = ctx.run(cmd, env=False)
        ctx.note("read pg_control before the start", cmd, rc, t0)
        if rc == 0:
            parsed = parse_controldata(out)
            control = {"state": parsed.get("Database cluster state"),
                       "checkpoint_lsn": parsed.get("Latest checkpoint location"),
                       "redo_lsn": parsed.get("Latest checkpoint's REDO location"),
                       "timeline": int(parsed.get("Latest checkpoint's TimeLineID") or 0) or None}
    offset = ctx.log_offset()
    ctx.start(lambda: running)
    ctx.wait("wait until the server accepts connections (pg_isready)", lambda: (answers(), "not accepting"))

    def out_of_recovery():
        rc, out, err = sql("SELECT pg_is_in_recovery()")
        return rc == 0 and out.strip() == "f", (err.strip() or "pg_is_in_recovery() = %s" % out.strip())

    ctx.wait("wait until recovery is over (pg_is_in_recovery() false)", out_of_recovery)
    ctx.ready()

    # recovery work: the server log of this start, else the end-of-recovery checkpoint against pg_control
    log = p.get("log_file")
    if not log:
        rc, out, _err = sql("SELECT coalesce(pg_current_logfile(), ''), current_setting('data_directory')")
        cols = out.strip().split("|") if rc == 0 else []
        if len(cols) == 2 and cols[0]:
            log = cols[0] if os.path.isabs(cols[0]) else os.path.join(cols[1], cols[0])
    text = Recovery.read_log(log, offset, PG_START_RE) if log else None
    if text is not None and (PG_START_RE.search(text) or offset is not None):
        recovery = parse_pg_log(text)
        recovery["log_file"] = log
    else:
        rc, out, _err = sql("SELECT checkpoint_lsn, redo_lsn FROM pg_control_checkpoint()")
        cols = out.strip().split("|") if rc == 0 else []
        start = (control or {}).get("redo_lsn")
        recovery = {"source": "pg_control", "crash_recovery": (control or {}).get("state") == "in production",
                    "start_lsn": start, "end_lsn": cols[1] if len(cols) == 2 else None, "log_file": log,
                    "note": "no server log of this start was readable: from the REDO location before the start to "
                            "the redo location of the checkpoint after it (an upper bound)"}
        recovery["bytes"] = (_postgresql.lsn_int(recovery["end_lsn"]) - _postgresql.lsn_int(start)
                             if start and recovery["end_lsn"] else None)
    recovery["pg_control_before_start"] = control
    ctx.result["recovery"] = recovery

    # the application's own check
    if not p.get("run_check", True):
        ctx.result["check"] = {"tool": None, "status": "skipped", "reason": "run_check=false"}
    else:
        amcheck = pg_bin(ctx, "pg_amcheck")
        rc, out, _err = sql("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'")
        if amcheck is None:
            ctx.result["check"] = {"tool": "pg_amcheck", "status": "skipped",
                                   "reason": "pg_amcheck (PostgreSQL 14 or later) is not on the host"}
        elif rc != 0 or out.strip() != "1":
            ctx.result["check"] = {"tool": "pg_amcheck", "status": "skipped",
                                   "reason": "the amcheck extension is not available on the server (its contrib "
                                             "package is not installed)"}
        else:
            cmd = [amcheck] + conn + ["--all", "--heapallindexed", "--no-password"]
            if p.get("check_install_missing", True):
                # into every checked database; template1 is left out so that new databases do not inherit it
                cmd += ["--install-missing", "--exclude-database=template1"]
            t0 = ctx.clock()
            rc, out, err = ctx.run(cmd)
            ctx.note("check every relation (pg_amcheck)", cmd, rc, t0)
            bad = _limit((out + "\n" + err).splitlines()) if rc != 0 else []
            ctx.result["check"] = {"tool": "pg_amcheck", "status": "failed" if rc != 0 else "passed",
                                   "problems": bad or ([] if rc == 0 else ["exit status %s" % rc]),
                                   "ms": ms_since(t0, ctx.clock())}

    # where the restored server stands against the record
    rc, out, _err = sql("SELECT timeline_id FROM pg_control_checkpoint()")
    restored = {"pg_control_before_start": control, "redo_start_lsn": recovery.get("start_lsn") if
                recovery["source"] == "log" else None,
                "redo_end_lsn": recovery.get("end_lsn") if recovery["source"] == "log" else None,
                "timeline": int(out.strip()) if rc == 0 and out.strip().isdigit() else None}
    keys = ("checkpoint_lsn", "redo_lsn", "timeline", "wal_lsn_before_freeze", "wal_lsn_after_thaw")
    if not rec.get("checkpoint_lsn"):
        matches = None
        problems.append("the set records no checkpoint (taken without a quiescer): nothing to compare")
    else:
        if control is None:
            problems.append("pg_control was not read before the start (%s)" % (
                "the server was already running" if running else "no data_directory or no pg_controldata"))
        else:
            for key in ("checkpoint_lsn", "redo_lsn", "timeline"):
                if control[key] != rec.get(key):
                    problems.append("pg_control's %s is %s, the record says %s" % (key, control[key], rec.get(key)))
        start = restored["redo_start_lsn"]
        if start is not None and not redo_starts_at_record(start, rec):
            problems.append("redo started at %s, not at the recorded redo LSN %s" % (start, rec.get("redo_lsn")))
        end = restored["redo_end_lsn"]
        if end is not None and rec.get("wal_lsn_after_thaw") and not (
                _postgresql.lsn_int(rec["redo_lsn"]) <= _postgresql.lsn_int(end)
                < _postgresql.lsn_int(rec["wal_lsn_after_thaw"])):
            problems.append("redo done at %s, outside the recorded %s .. %s (after the thaw)"
                            % (end, rec["redo_lsn"], rec["wal_lsn_after_thaw"]))
        if restored["timeline"] is not None and restored["timeline"] != rec.get("timeline"):
            problems.append("timeline %s, the record says %s" % (restored["timeline"], rec.get("timeline")))
        matches = not problems
    ctx.result["position"] = {"recorded": {k: rec.get(k) for k in keys}, "restored": restored, "matches": matches,
                              "problems": problems}
    return ctx.result


# shared -----------------------------------------------------------------------------------------

def _sibling(client, names, which):
    """The check program beside the client, else from PATH."""
    for name in names:
        path = os.path.join(os.path.dirname(client), name)
        if os.path.isabs(client) and os.path.exists(path):
            return path
    for name in names:
        found = which(name, required=False)
        if found:
            return found
    return None


def _plan(ctx, argv, check):
    """Check mode: what would run, nothing run."""
    if ctx.params.get("start_command"):
        ctx.note("start hook (unless the server already answers)", ctx.params["start_command"])
        ctx.changed = True
    ctx.note("wait until the server answers and its recovery is over (recovery_timeout %gs)"
             % float(ctx.params.get("recovery_timeout") or 600.0), argv)
    ctx.note("report the recovery work from %s" % (ctx.params.get("log_file") or "the server's log"))
    if ctx.params.get("run_check", True):
        ctx.note("check: %s" % check)
    ctx.note("compare the restored server's position with the catalog's record (%s)"
             % (", ".join(sorted(k for k in ctx.record if k not in ("kind", "lock", "confirmed", "held_ms")))
                or "nothing recorded"))
    return ctx.result


RECOVER = {"mariadb": recover_mariadb, "mysql": recover_mariadb, "postgresql": recover_postgresql}


def client_env(params):
    """The password (and PostgreSQL's password file) for the client's environment, never its argv."""
    env = {}
    if params.get("application_login_password"):
        env["MYSQL_PWD" if params["application"] in ("mariadb", "mysql") else "PGPASSWORD"] = \
            params["application_login_password"]
    if params["application"] == "postgresql" and params.get("application_config_file"):
        env["PGPASSFILE"] = params["application_config_file"]
    return env


def recover(run_command, params, record=None, check_mode=False, which=None, sleep=time.sleep, clock=time.monotonic):
    """Start, wait, check, report and compare for ``params["application"]``; returns the module's result.

    ``run_command(argv, environ_update=...) -> (rc, out, err)`` (AnsibleModule.run_command); ``record`` is the
    catalog's ``stillpoint:app`` record of the set ({} or None without one). Raises StillpointError, with the
    result so far under ``app_recover``, when the server does not come up, the check fails or the position
    differs from the record."""
    app = params.get("application")
    if app not in RECOVER:
        raise StillpointError("application must be one of %s, not %r" % (", ".join(APPLICATIONS), app))
    if record and record.get("kind") and record["kind"] != app and {record["kind"], app} != {"mariadb", "mysql"}:
        raise StillpointError("the set's record is of a %s server, not %s: refusing to compare; nothing was started"
                              % (record["kind"], app))
    ctx = Recovery(run_command, params, record, check_mode, which, sleep, clock, env=client_env(params))
    result = RECOVER[app](ctx)
    out = dict(result, changed=ctx.changed, actions=ctx.actions)
    if check_mode:
        out["msg"] = "check mode: would start %s and verify it (%d steps)" % (app, len(ctx.actions))
        return out
    failures = []
    if result["check"] and result["check"]["status"] == "failed":
        failures.append("%s found problems: %s" % (result["check"]["tool"], "; ".join(result["check"]["problems"])))
    if result["position"] and result["position"]["matches"] is False and params.get("compare_position", True):
        failures.append("the restored position differs from the catalog's record: %s"
                        % "; ".join(result["position"]["problems"]))
    if failures:
        ctx.fail("the restored %s server is running but its verification failed: %s. It is left running for "
                 "inspection." % (app, " ".join(failures)))
    rec = result["recovery"] or {}
    out["msg"] = "%s %s, ready in %s ms; recovery %s (%s bytes, from the %s); check %s; position %s" % (
        app, "started" if result["started"] else "already running", result["ready_ms"],
        "by crash recovery" if rec.get("crash_recovery") else "none" if rec.get("crash_recovery") is False else "unknown",
        rec.get("bytes"), rec.get("source"), result["check"]["status"] if result["check"] else "n/a",
        {True: "matches the record", False: "differs", None: "not recorded"}[result["position"]["matches"]])
    return out
