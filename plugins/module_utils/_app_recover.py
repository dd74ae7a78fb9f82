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
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
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
                 clock=time.monotonic, env=None, spawn=None):
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
        self.watch = None  # () -> None, or why the server cannot come up any more (a private server that died)
        self.spawn = spawn or spawn_detached
        self.spawned = None  # the Popen of a server started detached (start_detached)

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
        if self.params.get("start_detached"):  # a server that does not detach by itself (mariadbd)
            t0 = self._t_start = self.clock()
            self.changed = True
            try:
                self.spawned = self.spawn(cmd)
            except OSError as exc:
                self.note("start the server detached", cmd, 127, t0)
                self.fail("cannot start %s: %s. Nothing runs" % (cmd[0], exc))
            self.result["started"] = True
            if self.params.get("start_pid_file"):  # the PID on the copy at once: the server writes it only later
                with open(self.params["start_pid_file"], "w") as handle:
                    handle.write("%d\n" % self.spawned.pid)
            self.note("start the server detached (PID %d)" % self.spawned.pid, cmd, 0, t0)
            return True
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
            dead = self.watch() if self.watch else None
            if dead:
                self.note(what, t0=t0, rc=1)
                self.fail("%s: the server is gone (%s)" % (what, dead))
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


def spawn_detached(argv):
    """Start a server that stays in the foreground (``mariadbd``) as a daemon: its own session, no terminal, stdio on
    /dev/null (its error log is a file), so that it outlives this module and holds none of its pipes. ``run_command``
    cannot start it: it waits for the pipes the server would keep. Returns the Popen (its ``pid`` is the server's)."""
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True, start_new_session=True, cwd="/",
                            env=dict(os.environ, LC_ALL="C", LANG="C"))


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
            if p.get("check_timeout"):  # a bounded check: the whole CHECK TABLE run within check_timeout, else failed
                cmd = [ctx.timeout_bin(), "--kill-after=5", "%g" % float(p["check_timeout"])] + cmd
            t0 = ctx.clock()
            rc, out, err = ctx.run(cmd)
            if p.get("check_timeout") and rc in (124, 137):
                out += "\nerror: the check did not finish within check_timeout=%gs (every table is checked in full: " \
                       "raise the budget)" % float(p["check_timeout"])
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


def _refuse_other_record(app, record):
    if app not in RECOVER:
        raise StillpointError("application must be one of %s, not %r" % (", ".join(APPLICATIONS), app))
    if record and record.get("kind") and record["kind"] != app and {record["kind"], app} != {"mariadb", "mysql"}:
        raise StillpointError("the set's record is of a %s server, not %s: refusing to compare; nothing was started"
                              % (record["kind"], app))


def recover(run_command, params, record=None, check_mode=False, which=None, sleep=time.sleep, clock=time.monotonic):
    """Start, wait, check, report and compare for ``params["application"]``; returns the module's result.

    ``run_command(argv, environ_update=...) -> (rc, out, err)`` (AnsibleModule.run_command); ``record`` is the
    catalog's ``stillpoint:app`` record of the set ({} or None without one). Raises StillpointError, with the
    result so far under ``app_recover``, when the server does not come up, the check fails or the position
    differs from the record."""
    app = params.get("application")
    _refuse_other_record(app, record)
    ctx = Recovery(run_command, params, record, check_mode, which, sleep, clock, env=client_env(params))
    return verify(ctx, "It is left running for inspection.")


def verify(ctx, failed_note):
    """``RECOVER[app](ctx)``, then the verdict: fails (``failed_note`` appended) when the check found problems or
    the position differs from the record; else the result with its one-line ``msg``."""
    app, params = ctx.params["application"], ctx.params
    result = RECOVER[app](ctx)
    out = dict(result, changed=ctx.changed, actions=ctx.actions)
    if ctx.check_mode:
        out["msg"] = "check mode: would start %s and verify it (%d steps)" % (app, len(ctx.actions))
        return out
    failures = []
    if result["check"] and result["check"]["status"] == "failed":
        failures.append("%s found problems: %s" % (result["check"]["tool"], "; ".join(result["check"]["problems"])))
    if result["position"] and result["position"]["matches"] is False and params.get("compare_position", True):
        failures.append("the restored position differs from the catalog's record: %s"
                        % "; ".join(result["position"]["problems"]))
    if failures:
        ctx.fail("the restored %s server is running but its verification failed: %s. %s"
                 % (app, " ".join(failures), failed_note))
    rec = result["recovery"] or {}
    out["msg"] = "%s %s, ready in %s ms; recovery %s (%s bytes, from the %s); check %s; position %s" % (
        app, "started" if result["started"] else "already running", result["ready_ms"],
        "by crash recovery" if rec.get("crash_recovery") else "none" if rec.get("crash_recovery") is False else "unknown",
        rec.get("bytes"), rec.get("source"), result["check"]["status"] if result["check"] else "n/a",
        {True: "matches the record", False: "differs", None: "not recorded"}[result["position"]["matches"]])
    return out


# a private server on a restore drill's scratch copy ---------------------------------------------------------
#
# The drill (role restore_drill) restores a set onto scratch volumes and mounts them under its root; the copy holds
# the database as the snapshot caught it. recover_private() starts a server of the recorded kind on that copy and
# nowhere else: the copy's own files only (its symlinks into the set's filesystems repointed at the copy, the
# source server's lock file of the snapshot removed), a private configuration (no network: a unix socket in a
# private directory; no archiving, no replication, no preloaded libraries), run as the owner of the data directory;
# then verify() as for a restore, and the server is stopped by its PID whatever happened. Its pid file and a marker
# (RUN_DIR/MARKER) lie on the scratch copy, so stop_private() finds a server a killed drill left running there.

PRIVATE_APPLICATIONS = ("postgresql", "mariadb", "mysql")
RUN_DIR = ".stillpoint-drill-app"  # at the top of the scratch filesystem of the data directory
MARKER = "server.json"
SOCKET_PREFIX = "stillpoint-drill-app-"
PG_PRIVATE_PORT = 5432  # names the socket in the private directory only: no TCP listener
STOP_SIGNALS = {"postgresql": ("SIGINT", "SIGQUIT", "SIGKILL"),  # fast shutdown, immediate shutdown, kill
                "mariadb": ("SIGTERM", "SIGKILL")}  # clean shutdown, kill
MARIADB_PID = "mariadbd.pid"  # in the private run directory on the copy
MARIADB_LOG = "error.log"
MARIADB_ERROR_RE = re.compile(r"^.*\[ERROR\].*$", re.M)
PG_FATAL_RE = re.compile(r"^.*\b(FATAL|PANIC):.*$", re.M)


def _under(path, top):
    return top == "/" or path == top or path.startswith(top + "/")


def scratch_path(path, mountpoint_map):
    """The scratch copy's path of ``path`` (a path on the source): mapped from the longest recorded mountpoint of
    ``mountpoint_map`` (recorded -> scratch) that holds it; None when none does (it lies outside the set)."""
    path = os.path.normpath(path)
    hits = [mp for mp in mountpoint_map if _under(path, os.path.normpath(mp))]
    if not hits:
        return None
    mp = max(hits, key=lambda m: len(os.path.normpath(m)))
    rest = os.path.relpath(path, os.path.normpath(mp))
    return mountpoint_map[mp] if rest == "." else os.path.join(mountpoint_map[mp], rest)


def scratch_mount(path, mountpoint_map):
    """The scratch mountpoint (a value of ``mountpoint_map``) that holds ``path``, or None."""
    hits = [v for v in mountpoint_map.values() if _under(os.path.normpath(path), os.path.normpath(v))]
    return max(hits, key=len) if hits else None


def repoint(target, mountpoint_map):
    """Where a symlink of the copy that points at ``target`` must point: ``target`` when relative or already on the
    copy, its scratch path when it lies on one of the set's filesystems, None (refuse) when it lies outside."""
    if not target.startswith("/") or scratch_mount(target, mountpoint_map):
        return target
    return scratch_path(target, mountpoint_map)


def parse_pid_file(text):
    """The first line of a server's pid file (PostgreSQL's postmaster.pid: the PID, then the data directory)."""
    lines = text.splitlines()
    pid = int(lines[0].strip()) if lines and lines[0].strip().isdigit() else None
    return pid, (lines[1].strip() if len(lines) > 1 else None)


def pg_private_settings(run_dir, socket_dir, port=PG_PRIVATE_PORT):
    """The command-line settings of a private PostgreSQL server on a copy (they override postgresql.auto.conf)."""
    return ["config_file=%s/postgresql.conf" % run_dir, "hba_file=%s/pg_hba.conf" % run_dir,
            "ident_file=%s/pg_ident.conf" % run_dir, "port=%d" % port, "listen_addresses=",
            "unix_socket_directories=%s" % socket_dir, "archive_mode=off", "synchronous_standby_names=",
            "shared_preload_libraries=", "external_pid_file=", "logging_collector=off", "log_destination=stderr",
            "ssl=off", "shared_buffers=128MB", "cluster_name=stillpoint-drill"]


def _alive(pid, proc="/proc"):
    try:
        with open("%s/%d/stat" % (proc, pid)) as handle:
            return handle.read().rsplit(") ", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cwd(pid, proc="/proc"):
    try:
        return os.path.realpath(os.readlink("%s/%d/cwd" % (proc, pid)))
    except OSError:
        return None


def _children(pid, proc="/proc"):
    out = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open("%s/%s/stat" % (proc, entry)) as handle:
                    if int(handle.read().rsplit(") ", 1)[-1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def stop_server(pid_file, data_directory, signals, timeout=60.0, kill=os.kill, sleep=time.sleep,
                clock=time.monotonic, proc="/proc"):
    """Stop the server whose pid file is ``pid_file``, by its PID only, and only when that process works in
    ``data_directory`` (a server's working directory is its data directory: a PID reused by anything else is never
    signalled). ``signals`` in order, each given ``timeout`` (the last one 10 s); the last one also reaches the
    server's children. Returns None when no such server runs, else what was done."""
    import signal as signal_

    try:
        with open(pid_file) as handle:
            pid, _named = parse_pid_file(handle.read())
    except OSError:
        return None
    if pid is None or not _alive(pid, proc):
        return None
    cwd = _cwd(pid, proc)
    if cwd != os.path.realpath(data_directory):
        raise StillpointError("%s names PID %d, which works in %s, not in the copy's data directory %s: refusing to "
                              "signal it" % (pid_file, pid, cwd, data_directory))
    t0 = clock()
    sent = []
    for i, name in enumerate(signals):
        last = i == len(signals) - 1
        targets = [pid] + ([c for c in _children(pid, proc) if _cwd(c, proc) == cwd] if last else [])
        for target in targets:
            try:
                kill(target, getattr(signal_, name))
            except ProcessLookupError:
                pass
        sent.append(name)
        deadline = clock() + (10.0 if last else timeout)
        while _alive(pid, proc) and clock() < deadline:
            sleep(POLL_S)
        if not _alive(pid, proc):
            return {"pid": pid, "signals": sent, "ms": ms_since(t0, clock()), "pid_file": pid_file}
    raise StillpointError("the server PID %d (%s) is still running after %s" % (pid, pid_file, ", ".join(sent)))


def _marker_path(scratch_mp):
    return os.path.join(scratch_mp, RUN_DIR, MARKER)


def stop_private(mountpoint_map, timeout=60.0, check_mode=False, kill=os.kill, sleep=time.sleep, clock=time.monotonic):
    """Stop every private server a drill started on the copies of ``mountpoint_map`` (recorded -> scratch), found
    by the marker and pid file on the copy, and remove its private socket directory and the marker. Idempotent:
    nothing running, nothing done (``changed`` false)."""
    out = {"changed": False, "stopped": [], "planned": []}
    for scratch_mp in sorted(set(mountpoint_map.values())):
        marker = _marker_path(scratch_mp)
        try:
            with open(marker) as handle:
                info = json.load(handle)
        except (OSError, ValueError):
            continue
        datadir, pid_file = info.get("data_directory") or "", info.get("pid_file") or ""
        if not (scratch_mount(datadir, mountpoint_map) and scratch_mount(pid_file, mountpoint_map)):
            raise StillpointError("%s names %s / %s, outside the drill's copies: refusing to act on it"
                                  % (marker, datadir, pid_file))
        if check_mode:
            out["planned"].append({"marker": marker, "pid_file": pid_file})
            continue
        stopped = stop_server(pid_file, datadir, tuple(info.get("signals") or ("SIGTERM", "SIGKILL")), timeout,
                              kill=kill, sleep=sleep, clock=clock)
        sock = info.get("socket_dir") or ""
        if os.path.basename(sock).startswith(SOCKET_PREFIX):
            shutil.rmtree(sock, ignore_errors=True)
        os.unlink(marker)
        out["changed"] = True
        if stopped:
            out["stopped"].append(dict(stopped, kind=info.get("kind"), data_directory=datadir))
    return out


def _pg_bindir(major, params, run):
    """The directory of ``postgres`` and ``pg_ctl`` of major version ``major`` (the copy's PG_VERSION)."""
    candidates = [params["bin_dir"]] if params.get("bin_dir") else []
    candidates.append("/usr/lib/postgresql/%s/bin" % major)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(os.path.dirname(found))
    seen = []
    for d in candidates:
        if d in seen or not all(os.path.exists(os.path.join(d, b)) for b in ("postgres", "pg_ctl")):
            continue
        seen.append(d)
        rc, out, _err = run([os.path.join(d, "postgres"), "--version"], env=False)
        m = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", out)
        if rc == 0 and m and (m.group(1) == major or "%s.%s" % (m.group(1), m.group(2)) == major):
            return d
    raise StillpointError("the copy is a PostgreSQL %s cluster (PG_VERSION) and this host has no PostgreSQL %s "
                          "server (postgres and pg_ctl; looked in %s): install it (Debian: postgresql-%s) or give "
                          "bin_dir. Nothing was started" % (major, major, ", ".join(candidates) or "PATH", major))


def _mapped(ctx, what, recorded, mountpoint_map):
    """The copy's path of a path the set recorded; refused (nothing started) when it lies outside the set."""
    path = scratch_path(recorded, mountpoint_map)
    if path is None:
        ctx.fail("the recorded %s %s lies on none of the set's filesystems (%s): a server started on the copy would "
                 "use the source's. Nothing was started" % (what, recorded, ", ".join(sorted(mountpoint_map))))
    return path


def _owner(ctx, datadir):
    """``(user, stat)`` of the copy's data directory: its server runs as that user (this module is root or it)."""
    st = os.stat(datadir)
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        ctx.fail("the copy's data directory %s belongs to uid %d, which no user of this host has" % (datadir, st.st_uid))
    if os.geteuid() not in (0, st.st_uid):
        ctx.fail("the copy's data directory belongs to %s; starting its server takes root or %s" % (user, user))
    return user, st


def _remount_rw(ctx, mounts):
    """The copy's filesystems the server writes to (its recovery), read-only after the drill's mount: read-write."""
    for mp in sorted(m for m in mounts if m):
        if os.statvfs(mp).f_flag & os.ST_RDONLY:
            cmd = [ctx.which("mount", required=False) or "mount", "-o", "remount,rw", mp]
            t0 = ctx.clock()
            rc, out, err = ctx.run(cmd, env=False)
            ctx.note("remount the scratch copy %s read-write (the recovery writes to the copy)" % mp, cmd, rc, t0)
            if rc != 0:
                ctx.fail("cannot remount the scratch copy %s read-write (rc=%s)" % (mp, rc), rc=rc, stdout=out,
                         stderr=err)


def _remove_stale_pid(ctx, pid_file, datadir, what):
    """Remove a pid file the snapshot caught (the source server's, no process of the copy); refuse when a live
    process works in the copy's data directory and no marker names it."""
    with open(pid_file) as handle:
        pid, named = parse_pid_file(handle.read())
    if pid is not None and _alive(pid) and _cwd(pid) == os.path.realpath(datadir):
        ctx.fail("a server (PID %d) runs on the copy's data directory %s and no marker names it" % (pid, datadir))
    os.unlink(pid_file)
    ctx.note("remove the copy's %s (PID %s%s: the %s the snapshot caught, no process of the copy)"
             % (os.path.basename(pid_file), pid, " of %s" % named if named else "", what))


def _private_dirs(mount, st, files, marker):
    """The private run directory (0700, the owner's) at the top of the copy's filesystem ``mount`` with
    ``files`` (name -> text), a private socket directory (0700) and the marker a re-run finds a killed drill's
    server by. ``marker`` (kind, data_directory, pid_file, signals; ``{run_dir}`` and ``{socket_dir}`` filled in) is
    returned completed."""
    run_dir = os.path.join(mount, RUN_DIR)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    os.chmod(run_dir, 0o700)
    for name, text in files.items():
        with open(os.path.join(run_dir, name), "w") as handle:
            handle.write(text)
        os.chown(os.path.join(run_dir, name), st.st_uid, st.st_gid)
    os.chown(run_dir, st.st_uid, st.st_gid)
    sock = tempfile.mkdtemp(prefix=SOCKET_PREFIX)
    os.chown(sock, st.st_uid, st.st_gid)
    marker = {k: v.format(run_dir=run_dir, socket_dir=sock) if isinstance(v, str) else v for k, v in marker.items()}
    marker.update(run_dir=run_dir, socket_dir=sock)
    with open(os.path.join(run_dir, MARKER), "w") as handle:
        json.dump(marker, handle)
    return marker


def prepare_postgresql(ctx, mountpoint_map):
    """Make the copy startable as a private server: remount its filesystems read-write, repoint its symlinks at the
    copy, remove the source server's lock file the snapshot holds, write the private configuration and the marker.
    Sets the connection parameters and the start command on ``ctx.params``; returns the marker."""
    p, rec = ctx.params, ctx.record
    recorded = (rec.get("paths") or {}).get("data_directory")
    if not recorded:
        ctx.fail("the set's application record names no data directory (paths.data_directory): nothing to start")
    pgdata = _mapped(ctx, "data directory", recorded, mountpoint_map)
    try:
        with open(os.path.join(pgdata, "PG_VERSION")) as handle:
            major = handle.read().strip()
    except OSError as exc:
        ctx.fail("the copy holds no PostgreSQL data directory at %s (%s); is the copy mounted?" % (pgdata, exc))
    bindir = _pg_bindir(major, p, ctx.run)
    user, st = _owner(ctx, pgdata)
    as_user = [] if os.geteuid() == st.st_uid else [ctx.which("runuser", required=False) or "runuser", "-u", user, "--"]

    # the copy's symlinks (pg_wal, tablespaces) point at the source's paths: at the copy from now on
    links = [os.path.join(pgdata, "pg_wal")] + sorted(glob.glob(os.path.join(pgdata, "pg_tblspc", "*")))
    mounts = set([scratch_mount(pgdata, mountpoint_map)])
    repoints = []
    for link in links:
        if not os.path.islink(link):
            continue
        target = os.readlink(link)
        new = repoint(target, mountpoint_map)
        if new is None:
            ctx.fail("%s points at %s, which lies on none of the set's filesystems: a server started on the copy "
                     "would write there. Nothing was started" % (link, target))
        mounts.add(scratch_mount(new, mountpoint_map) or scratch_mount(pgdata, mountpoint_map))
        if new != target:
            repoints.append((link, target, new))
    _remount_rw(ctx, mounts)
    for link, target, new in repoints:
        _replace_link(link, new)
        ctx.note("repoint the copy's %s from %s to %s" % (os.path.relpath(link, pgdata), target, new))
    lock = os.path.join(pgdata, "postmaster.pid")
    if os.path.exists(lock):
        _remove_stale_pid(ctx, lock, pgdata, "lock file")

    marker = _private_dirs(scratch_mount(pgdata, mountpoint_map), st, {
        "postgresql.conf": "# stillpoint restore drill: private server, settings on the command line\n",
        "pg_hba.conf": "# the private socket directory is the access control (0700, %s)\nlocal all all trust\n" % user,
        "pg_ident.conf": "", "server.log": ""},
        {"kind": "postgresql", "data_directory": pgdata, "pid_file": lock, "signals": list(STOP_SIGNALS["postgresql"])})
    run_dir, sock = marker["run_dir"], marker["socket_dir"]
    opts = " ".join("-c %s" % shlex.quote(s) for s in pg_private_settings(run_dir, sock))
    p.update(start_command=as_user + [ctx.which("env", required=False) or "env", "-C", run_dir,
                                      os.path.join(bindir, "pg_ctl"), "start", "-W", "-D", pgdata, "-l",
                                      os.path.join(run_dir, "server.log"), "-o", opts],
             data_directory=pgdata, bin_dir=bindir, log_file=os.path.join(run_dir, "server.log"),
             application_login_unix_socket=sock, application_login_port=PG_PRIVATE_PORT,
             application_login_user=p.get("application_login_user") or user, application_login_host=None,
             application_login_password=None, application_config_file=None)

    def watch():
        try:
            with open(lock) as handle:
                pid, _named = parse_pid_file(handle.read())
        except OSError:
            pid = None
        if pid is not None and _alive(pid):
            return None
        # a dead server's pid file (an abort leaves it), or none and the log says why it did not start
        lines = [m.group(0).strip() for m in PG_FATAL_RE.finditer(Recovery.read_log(p["log_file"], 0, PG_START_RE) or "")]
        if pid is not None or lines:
            return "; ".join(lines[-3:]) or "PID %s exited" % pid
        return None

    ctx.watch = watch
    return marker


def _replace_link(link, new):
    tmp = link + ".stillpoint-drill"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(new, tmp)
    os.rename(tmp, link)


def _replace_text(path, text):
    st = os.stat(path)
    tmp = path + ".stillpoint-drill"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.rename(tmp, path)


def mariadb_server_bin(version_text, params, run, which):
    """The ``mariadbd`` (or MySQL's ``mysqld``) of the recorded server's flavour and major.minor version: InnoDB does
    not recover a redo log across those (MariaDB refuses an upgrade after a crash)."""
    flavor, version = _mariadb.parse_version(version_text)
    names = ("mariadbd", "mysqld") if flavor == "mariadb" else ("mysqld",)
    candidates = []
    for d in ([params["bin_dir"]] if params.get("bin_dir") else []) + ["/usr/sbin", "/usr/local/sbin"]:
        candidates += [os.path.join(d, n) for n in names]
    candidates += [found for found in (which(n, required=False) for n in names) if found]
    seen = []
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen or not os.path.exists(path):
            continue
        seen.append(real)
        rc, out, _err = run([path, "--version"], env=False)
        m = re.search(r"Ver (\S+)", out)
        if rc == 0 and m:
            got_flavor, got = _mariadb.parse_version(m.group(1)) if re.match(r"\d", m.group(1)) else (None, ())
            if got_flavor == flavor and got[:2] == version[:2]:
                return path, m.group(1)
    raise StillpointError("the set was taken from %s %s and this host has no %s %d.%d server (%s; looked at %s): a "
                          "crash recovery across versions is not supported. Install it or give bin_dir. Nothing was "
                          "started" % (flavor, version_text, flavor, version[0], version[1], " or ".join(names),
                                       ", ".join(candidates) or "PATH"))


def mariadb_private_options(flavor, datadir, run_dir, socket_dir, user, paths, innodb):
    """The command line of a private ``mariadbd``/``mysqld`` on a copy: no option files, no TCP, its socket, pid file
    and error log in private directories, no replication started, no events run, no grant tables (the 0700 socket
    directory is the access control: the drill holds no credentials), the copy's binary log as the transaction
    coordinator of the crash recovery, InnoDB's paths and sizes as recorded (``paths`` already the copy's).
    InnoDB's read-only mode is not used: its crash recovery must run."""
    opts = ["--no-defaults", "--datadir=%s" % datadir, "--user=%s" % user, "--skip-networking",
            "--socket=%s" % os.path.join(socket_dir, "mysqld.sock"), "--pid-file=%s" % os.path.join(run_dir, MARIADB_PID),
            "--log-error=%s" % os.path.join(run_dir, MARIADB_LOG), "--skip-grant-tables", "--event-scheduler=DISABLED",
            "--skip-replica-start" if flavor == "mysql" else "--skip-slave-start"]
    if paths.get("log_bin_basename"):
        opts += ["--log-bin=%s" % paths["log_bin_basename"],
                 "--log-bin-index=%s" % (paths.get("log_bin_index") or paths["log_bin_basename"] + ".index")]
    else:
        opts.append("--skip-log-bin")
    for key in ("innodb_log_group_home_dir", "innodb_data_home_dir", "innodb_undo_directory"):
        if paths.get(key):
            opts.append("--%s=%s" % (key.replace("_", "-"), paths[key]))
    for key in ("page_size", "log_file_size"):
        if innodb.get(key):
            opts.append("--innodb-%s=%d" % (key.replace("_", "-"), innodb[key]))
    return opts


def prepare_mariadb(ctx, mountpoint_map):
    """Make the copy startable as a private ``mariadbd``: every recorded path mapped onto the copy (refused outside
    the set), its filesystems remounted read-write, the binary log index and InnoDB/MyISAM links that name the
    source's paths repointed at the copy, the source's pid and socket files the snapshot caught removed, the private
    directories and the marker written. Sets the start command (started detached) and the connection."""
    p, rec = ctx.params, ctx.record
    recorded = dict(rec.get("paths") or {})
    if not recorded.get("data_directory") or not rec.get("server_version"):
        ctx.fail("the set's application record names no data directory or server version (paths.data_directory, "
                 "server_version: a set taken before the MariaDB quiescer recorded them): nothing to start")
    paths = {k: _mapped(ctx, k.replace("_", " "), v, mountpoint_map) for k, v in recorded.items()}
    datadir = paths["data_directory"]
    if not os.path.isdir(os.path.join(datadir, "mysql")):
        ctx.fail("the copy holds no MariaDB/MySQL data directory at %s (no mysql schema); is the copy mounted?" % datadir)
    binary, version = mariadb_server_bin(rec["server_version"], p, ctx.run, ctx.which)
    user, st = _owner(ctx, datadir)
    dirs = [datadir] + [os.path.dirname(v) if k.startswith("log_bin") else v for k, v in paths.items()]
    _remount_rw(ctx, set(scratch_mount(d, mountpoint_map) for d in dirs))

    # the copy's own references to the source's paths: the binary log index, DATA DIRECTORY links (.isl, symlinks)
    index = paths.get("log_bin_index") or (paths["log_bin_basename"] + ".index" if paths.get("log_bin_basename") else None)
    if index and os.path.exists(index):
        with open(index) as handle:
            lines = handle.read().splitlines()
        new = [repoint(line, mountpoint_map) if line.strip() else line for line in lines]
        if None in new:
            ctx.fail("the copy's binary log index %s names %s, outside the set's filesystems. Nothing was started"
                     % (index, ", ".join(l for l, n in zip(lines, new) if n is None)))
        if new != lines:
            _replace_text(index, "".join(line + "\n" for line in new))
            ctx.note("repoint the copy's binary log index %s at the copy (%d of %d entries)"
                     % (index, sum(a != b for a, b in zip(lines, new)), len(lines)))
    for entry in sorted(glob.glob(os.path.join(datadir, "*", "*"))):
        target = os.readlink(entry) if os.path.islink(entry) else None
        if target is None and entry.endswith(".isl"):
            with open(entry) as handle:
                target = handle.read().strip()
        if target is None:
            continue
        new = repoint(target, mountpoint_map)
        if new is None:
            ctx.fail("%s points at %s, which lies on none of the set's filesystems: a server started on the copy "
                     "would use it. Nothing was started" % (entry, target))
        if new != target:
            _replace_link(entry, new) if os.path.islink(entry) else _replace_text(entry, new + "\n")
            ctx.note("repoint the copy's %s from %s to %s" % (os.path.relpath(entry, datadir), target, new))
    for name in sorted(os.listdir(datadir)):
        path = os.path.join(datadir, name)
        if name.endswith(".pid") and os.path.isfile(path):
            _remove_stale_pid(ctx, path, datadir, "source server's pid file")
        elif stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
            ctx.note("remove the copy's %s (the source server's socket the snapshot caught)" % name)

    flavor = _mariadb.parse_version(version)[0]
    marker = _private_dirs(scratch_mount(datadir, mountpoint_map), st, {MARIADB_LOG: "", MARIADB_PID: ""}, {
        "kind": p["application"], "data_directory": datadir, "pid_file": "{run_dir}/" + MARIADB_PID,
        "signals": list(STOP_SIGNALS["mariadb"])})
    run_dir = marker["run_dir"]
    argv = [binary] + mariadb_private_options(flavor, datadir, run_dir, marker["socket_dir"], user, paths,
                                              rec.get("innodb") or {})
    p.update(start_command=argv, start_detached=True, start_pid_file=marker["pid_file"],
             log_file=os.path.join(run_dir, MARIADB_LOG),
             application_login_unix_socket=os.path.join(marker["socket_dir"], "mysqld.sock"),
             application_login_user="root", application_login_host=None, application_login_port=None,
             application_login_password=None, application_config_file="/dev/null", server_binary=binary)

    def watch():
        proc = ctx.spawned
        if proc is None or proc.poll() is None:
            return None
        text = Recovery.read_log(p["log_file"], 0, MARIADB_START_RE) or ""
        lines = [m.group(0).strip() for m in MARIADB_ERROR_RE.finditer(text)]
        lines = lines[:2] + lines[2:][-1:]  # the first errors name the cause, the last one the end
        return "; ".join(lines) or "%s exited (rc=%s)" % (os.path.basename(binary), proc.returncode)

    ctx.watch = watch
    return marker


PREPARE = {"postgresql": prepare_postgresql, "mariadb": prepare_mariadb, "mysql": prepare_mariadb}


def recover_private(run_command, params, mountpoint_map, record=None, check_mode=False, which=None,
                    sleep=time.sleep, clock=time.monotonic, kill=os.kill, spawn=None):
    """A restore drill's application check: a private server of the recorded kind on the scratch copy (the
    copies of ``mountpoint_map``, recorded -> scratch), then :func:`verify`, then the server stopped by its PID,
    also when anything failed. The result has ``stopped`` and ``summary`` (one line for the drill's verdict)."""
    app = params.get("application")
    _refuse_other_record(app, record)
    if app not in PRIVATE_APPLICATIONS:
        raise StillpointError("a private %s server on a copy is not supported (only %s); nothing was started"
                              % (app, ", ".join(PRIVATE_APPLICATIONS)))
    params = dict(params, start_command=[], compare_position=params.get("compare_position", True))
    ctx = Recovery(run_command, params, record, check_mode, which, sleep, clock, spawn=spawn)
    if check_mode:
        for step in ("stop a private server an earlier drill left on the copy (marker %s/%s)" % (RUN_DIR, MARKER),
                     "remount the copy's filesystems of the data read-write, repoint its symlinks at the copy, "
                     "remove the source server's lock file the snapshot caught",
                     "start a private %s server on the copy (no network, a private socket directory)" % app):
            ctx.note(step)
        out = verify(ctx, "")
        ctx.note("stop it by its PID (pid file on the copy)")
        out.update(actions=ctx.actions, changed=True, stopped=[], summary=None)
        return out
    earlier = stop_private(mountpoint_map, params.get("stop_timeout") or 60.0, kill=kill, sleep=sleep, clock=clock)
    for s in earlier["stopped"]:
        ctx.note("stop the private server an earlier drill left running (PID %d: %s)" % (s["pid"], ", ".join(
            s["signals"])), t0=None)
    try:
        PREPARE[app](ctx, mountpoint_map)
        ctx.env = client_env(ctx.params)
        out = verify(ctx, "It was stopped (by its PID) with the drill.")
    except StillpointError as exc:
        stops = stop_private(mountpoint_map, params.get("stop_timeout") or 60.0, kill=kill, sleep=sleep, clock=clock)
        exc.details.setdefault("actions", ctx.actions)
        exc.details.setdefault("app_recover", ctx.result)
        exc.details.update(stopped=stops["stopped"], changed=True,
                           summary="failed: %s%s" % (exc.msg, _stopped_text(stops["stopped"])))
        _reap(ctx)
        raise
    except Exception:
        stop_private(mountpoint_map, params.get("stop_timeout") or 60.0, kill=kill, sleep=sleep, clock=clock)
        _reap(ctx)
        raise
    stops = stop_private(mountpoint_map, params.get("stop_timeout") or 60.0, kill=kill, sleep=sleep, clock=clock)
    _reap(ctx)
    for s in stops["stopped"]:
        ctx.note("stop the private server (PID %d: %s)" % (s["pid"], ", ".join(s["signals"])), ms=s["ms"])
    out.update(actions=ctx.actions, changed=True, stopped=stops["stopped"], summary=drill_summary(out, stops["stopped"]))
    return out


def _reap(ctx):
    """A detached server this module started and stopped is its child until it exits: collect its exit status."""
    if ctx.spawned is not None:
        ctx.spawned.poll()


def _stopped_text(stopped):
    if not stopped:
        return "; no server left running"
    return "; stopped PID %s (%s)" % (", ".join(str(s["pid"]) for s in stopped),
                                      ", ".join(sorted(set(x for s in stopped for x in s["signals"]))))


def position_text(position):
    """The recorded position against the restored server's, one line."""
    if not position:
        return "position not compared"
    rec, got = position.get("recorded") or {}, position.get("restored") or {}
    if position.get("matches") is None:
        return "position: %s" % "; ".join(position.get("problems") or ["nothing recorded"])
    if "checkpoint_lsn" in rec:
        control = got.get("pg_control_before_start") or {}
        text = ("recorded checkpoint %s / redo %s / timeline %s, the copy's pg_control %s / %s / %s; redo replayed "
                "%s..%s (recorded WAL position after the thaw %s)"
                % (rec.get("checkpoint_lsn"), rec.get("redo_lsn"), rec.get("timeline"), control.get("checkpoint_lsn"),
                   control.get("redo_lsn"), control.get("timeline"), got.get("redo_start_lsn"),
                   got.get("redo_end_lsn"), rec.get("wal_lsn_after_thaw")))
    else:
        text = "recorded binary log %s:%s GTID %s, restored %s:%s GTID %s" % (
            rec.get("binlog_file"), rec.get("binlog_position"), rec.get("gtid"), rec.get("binlog_file"),
            got.get("binlog_position"), got.get("gtid"))
    return "position %s (%s)" % ("matches" if position["matches"] else "differs", text)


def drill_summary(out, stopped):
    """The drill's ``application`` check line of a verified private server."""
    rec, check = out.get("recovery") or {}, out.get("check") or {}
    recovery = ("crash recovery replayed %s bytes (%s..%s)" % (rec.get("bytes"), rec.get("start_lsn"), rec.get("end_lsn"))
                if rec.get("crash_recovery") else "no crash recovery" if rec.get("crash_recovery") is False
                else "recovery unknown")
    own = ("%s %s" % (check.get("tool"), check.get("status")) + (" (%s)" % check["reason"] if check.get("reason") else "")
           if check else "no check")
    verdict = "passed" if check.get("status") == "passed" else "recovered, own check %s" % check.get("status")
    remounted = [a["what"].split(" ")[4] for a in out.get("actions") or [] if a["what"].startswith("remount the scratch copy ")]
    return "%s: private %s server on the scratch copy%s, ready in %s ms, %s; %s; %s%s" % (
        verdict, out["application"], " (remounted read-write: %s)" % ", ".join(remounted) if remounted else "",
        out.get("ready_ms"), recovery, own, position_text(out.get("position")), _stopped_text(stopped))
