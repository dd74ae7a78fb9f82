# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private database servers for the application tests and the app-stall benchmark: Debian's MariaDB and
PostgreSQL, run from the test's own data and log directories (on loop-device filesystems the test made), on a unix
socket (PostgreSQL also 127.0.0.1), never the system's instance. Each is started either as this process's child
(``start()``) or by the restore's start hook (``start_command()``: a daemon that returns at once, then ``adopt()``
reads its pid file), and stopped by its PID only (``stop()``)."""

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

from tests.support import dbwriter
from tests.support.loopfs import missing_requirements
from tests.support.procs import alive

MARIADB_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")
PG_BINARIES = ("initdb", "postgres", "pg_controldata", "psql")


TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"


def mariadb_bin(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin")


def _pg_bindir():
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True):
        if all(os.path.exists(os.path.join(d, b)) for b in PG_BINARIES[:3]):
            return d
    found = shutil.which("postgres", path="/usr/local/bin:/usr/bin")
    return os.path.dirname(found) if found else None


PG_BINDIR = _pg_bindir()


def pg_bin(name):
    path = os.path.join(PG_BINDIR or "", name)
    return path if os.path.exists(path) else shutil.which(name)


def mariadb_missing():
    why = missing_requirements()
    if why:
        return why
    gone = [b for b in MARIADB_BINARIES if mariadb_bin(b) is None]
    if gone:
        return "MariaDB server binaries missing (%s): apt-get install mariadb-server" % ", ".join(gone)
    return None


def postgresql_missing():
    why = missing_requirements()
    if why:
        return why
    if PG_BINDIR is None or shutil.which("psql") is None:
        return "PostgreSQL server binaries missing (initdb, postgres, pg_controldata, psql): apt-get install postgresql"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run the server as (apt-get install postgresql makes one)"
    return None


def app_tag(ec2, set_id):
    """The catalog's ``stillpoint:app`` record (chunked JSON) and ``stillpoint:level`` of a set, from its tags."""
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    tags = {t["Key"]: t["Value"] for t in snaps[0]["Tags"]}
    if "stillpoint:app" not in tags:
        return None, tags["stillpoint:level"]
    parts, i = [tags["stillpoint:app"]], 1
    while "stillpoint:app.%d" % i in tags:
        parts.append(tags["stillpoint:app.%d" % i])
        i += 1
    return json.loads("".join(parts)), tags["stillpoint:level"]


def backup_playbook(ec2, inst, name, extra):
    """playbooks/backup.yml on the local instance ``inst`` (host mode, no retention) with the role variables
    ``extra``; asserts the set is complete and returns (the set's record, the playbook's seconds)."""
    from tests.support.world import ROOT, run_playbook, task

    t0 = time.monotonic()
    rc, res, _raw = run_playbook(os.path.join(ROOT, "playbooks", "backup.yml"), ec2, dict({
        "backup_hosts": "localhost", "backup_become": False,
        "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
        "array_backup_name": name, "array_backup_keep_last": 0,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2}, **extra))
    assert rc == 0, res
    taken = task(res, TAKE)
    assert taken["state"] == "complete", taken
    return taken, time.monotonic() - t0


def snapshot_set_argv(tmp_path, inst, ec2, **args):
    """argv and environment that run ebs_snapshot_set's module file directly on the local instance ``inst`` (no
    waiting for completion) with ``args`` added, for tests that time or kill the module process itself."""
    from tests.support.world import COLLECTIONS, ROOT

    full = {"mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
            "region": ec2.region, "wait": False, "instance_id": inst.instance_id,
            "_ansible_remote_tmp": str(tmp_path), "_ansible_keep_remote_files": False}
    full.update(args)
    path = tmp_path / ("args-%d.json" % len(os.listdir(str(tmp_path))))
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": full}))
    env = dict(os.environ, **ec2.env())
    env["PYTHONPATH"] = os.pathsep.join([COLLECTIONS, ROOT])
    env["AWS_EC2_METADATA_DISABLED"] = "false"
    module = os.path.join(ROOT, "plugins", "modules", "ebs_snapshot_set.py")
    return [sys.executable, module, str(path)], env


@contextlib.contextmanager
def killed_in_its_call(ec2, argv, env, cwd, writer):
    """ebs_snapshot_set run by ``argv`` with its CreateSnapshots call held 6 s by the endpoint (and then failed, so
    that a call that still lands creates nothing); yields once the call is in flight and the writer is seen
    stalled: ``(proc, stalled)`` (the writer's count). The caller SIGKILLs the module; on the way out the call must
    have failed and no snapshot may exist beyond those of before."""
    from tests.support.world import own_snapshots, wait_for_call

    before = own_snapshots(ec2)
    ec2.latency("CreateSnapshots", 6000)
    ec2.fail_next("CreateSnapshots", "InternalError", "killed run: create nothing")
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_call(ec2, proc, "CreateSnapshots", timeout=60)
        stalled = len(writer.done)
        time.sleep(0.5)
        assert len(writer.done) == stalled, "commits went on while the run held the application and its filesystems"
        yield proc, stalled
        deadline = time.monotonic() + 30
        while not ec2.calls("CreateSnapshots") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [c["error_code"] for c in ec2.calls("CreateSnapshots")] == ["InternalError"]
        assert own_snapshots(ec2) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ec2.latency("CreateSnapshots", 0)


def children_matching(ppid=None, needle=""):
    """PIDs (and parent PIDs) of processes whose command line holds ``needle`` (and whose parent is ``ppid``)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open("/proc/%s/stat" % pid) as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if needle in cmd and (ppid is None or parent == ppid):
            out.append((int(pid), parent))
    return out


def freeze_bounds(writer, taken):
    """The writer's count when the filesystems froze and (0.1 s slack for the commit in flight) after the thaw."""
    # frozen_at is the module's CLOCK_MONOTONIC, which is system-wide: as an epoch through this process's offset
    frozen_at = taken["freeze"]["frozen_at"] + (time.time() - time.monotonic())
    return writer.count_at(frozen_at), writer.count_at(frozen_at + taken["freeze_window_ms"] / 1000.0 + 0.1)


def boundary(server):
    """Rows 1..k in both tables (no gap, no half transaction); returns k."""
    a, b = server.rows("a"), server.rows("b")
    k = len(a)
    assert a == list(range(1, k + 1)), "gap in a"
    assert b == a, "a two-table transaction is half applied"
    return k


@contextlib.contextmanager
def serving(server, start, rows=50):
    """``server`` started by ``start()`` (e.g. ``server.install().start``), its tables made and a writer running
    that has committed ``rows``; yields the writer. On the way out a writer still alive is stopped (killed) and
    the server cleaned up, whatever happened."""
    writer = None
    try:
        start()
        server.create_tables()
        writer = server.writer()
        writer.start()
        writer.wait_for(rows)
        yield writer
    finally:
        if writer is not None and writer.is_alive():
            writer.stop_event.set()
            writer.proc.kill()
        server.cleanup()


def _setup_step(argv, reset=None, **kwargs):
    """Run a server's set-up command (mariadb-install-db, initdb); a failure says what the command printed.

    With ``reset`` (which removes what the command made) a failed run is tried once more, and the first failure is
    reported as a warning (pytest's warnings summary), never dropped: a CI run (b50da6c) once saw
    mariadb-install-db exit 1 in a fixture, with its output lost, and nothing here has reproduced it since
    (9 concurrent runs, the fixture 4 times over)."""
    failures = []
    for attempt in range(2 if reset else 1):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)
        if proc.returncode == 0:
            for failure in failures:
                warnings.warn("set-up step failed once, passed when run again: %s" % failure)
            return proc
        failures.append("%s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(argv), proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        if reset and attempt == 0:
            reset()
    raise AssertionError("\n".join(failures))


def _recreate(directory):
    shutil.rmtree(directory)
    os.makedirs(directory)


class _Server:
    """Start/stop plumbing shared by both: a child process or an adopted daemon, stopped by PID."""

    STOP_SIGNAL = signal.SIGTERM
    NAME = "server"

    def __init__(self):
        self.proc = None
        self.pid = None

    def pid_file(self):
        raise NotImplementedError

    def _wait_answer(self, timeout, answers):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("%s exited (rc=%s): %s" % (self.NAME, self.proc.returncode, self.log_text()[-3000:]))
            if answers():
                return self
            if time.monotonic() > deadline:
                raise AssertionError("%s did not answer within %ss: %s" % (self.NAME, timeout, self.log_text()[-3000:]))
            time.sleep(0.1)

    def adopt(self):
        """After the start hook launched the server as a daemon: its PID from its pid file."""
        with open(self.pid_file()) as handle:
            self.pid = int(handle.readline().strip())
        self.proc = None
        return self

    def log_text(self):
        try:
            with open(self.log) as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self, timeout=60):
        """By PID (the child's or the adopted daemon's): a clean shutdown, SIGKILL after ``timeout``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(self.STOP_SIGNAL)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        elif self.pid is not None and alive(self.pid):
            os.kill(self.pid, self.STOP_SIGNAL)
            deadline = time.monotonic() + timeout
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
                while alive(self.pid):
                    time.sleep(0.05)
        self.proc = None
        self.pid = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


class MariaDBServer(_Server):
    """A private mariadbd: datadir and binlog where the test says, socket/pid/error log in a scratch dir, no network."""

    NAME = "mariadbd"

    def __init__(self, datadir, binlog_dir):
        super().__init__()
        self.datadir = datadir
        self.binlog_dir = binlog_dir
        self.run_dir = tempfile.mkdtemp(prefix="stillpoint-mariadb-")
        self.socket = os.path.join(self.run_dir, "sock")
        self.log = os.path.join(self.run_dir, "error.log")

    def pid_file(self):
        return os.path.join(self.run_dir, "pid")

    def options(self):
        return ["--no-defaults", "--datadir=%s" % self.datadir, "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=32M"]

    def install(self):
        os.makedirs(self.datadir, exist_ok=True)
        os.makedirs(self.binlog_dir, exist_ok=True)
        _setup_step([mariadb_bin("mariadb-install-db")] + self.options()
                    + ["--user=root", "--auth-root-authentication-method=socket", "--skip-test-db"],
                    reset=lambda: _recreate(self.datadir))
        return self

    def server_argv(self):
        return [mariadb_bin("mariadbd")] + self.options() + [
            "--socket=%s" % self.socket, "--skip-networking", "--user=root", "--server-id=1",
            "--log-bin=%s" % os.path.join(self.binlog_dir, "bin"), "--sync-binlog=1",
            "--pid-file=%s" % self.pid_file(), "--log-error=%s" % self.log]

    def answers(self):
        return os.path.exists(self.socket) and self.sql("SELECT 1", check=False)[0] == 0

    def start(self, timeout=60):
        self.proc = subprocess.Popen(self.server_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return self._wait_answer(timeout, self.answers)

    def start_command(self):
        """The start hook: the server as a daemon in its own session; returns at once (app_recover waits)."""
        return ["setsid", "-f", "sh", "-c", 'exec "$0" "$@" </dev/null >/dev/null 2>&1'] + self.server_argv()

    def client(self):
        return [mariadb_bin("mariadb"), "--no-defaults", "--socket=%s" % self.socket, "--user=root", "--batch",
                "--skip-column-names"]

    def sql(self, statements, check=True, timeout=30):
        proc = subprocess.run(self.client() + ["-e", statements], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("%s: %s" % (statements, proc.stderr))
        return proc.returncode, proc.stdout, proc.stderr

    def create_tables(self):
        self.sql("CREATE DATABASE w; CREATE TABLE w.a (n INT PRIMARY KEY) ENGINE=InnoDB; "
                 "CREATE TABLE w.b (n INT PRIMARY KEY) ENGINE=InnoDB; CREATE TABLE w.blocker (n INT) ENGINE=InnoDB")

    def rows(self, table):
        return [int(x) for x in self.sql("SELECT n FROM w.%s ORDER BY n" % table)[1].split()]

    def writer(self):
        """The shared writer (tests/support/dbwriter.py) on a ``mariadb`` session, tables in database ``w``."""
        return dbwriter.Writer(self.client() + ["--unbuffered"], tables="w.")

    def destroy(self):
        """The disaster: the server stopped, its data and binary log gone."""
        self.stop()
        shutil.rmtree(self.datadir)
        shutil.rmtree(self.binlog_dir)


def _as_postgres():
    return dict(user="postgres", group="postgres", extra_groups=[])


def _traversable(path):
    """Let the postgres user reach ``path``: o+x on the test-made stillpoint-* directories above it."""
    d = os.path.dirname(path)
    while d not in ("/", ""):
        if os.path.basename(d).startswith("stillpoint-"):
            os.chmod(d, os.stat(d).st_mode | 0o011)
        d = os.path.dirname(d)


class PostgreSQLServer(_Server):
    """A private postgres run as ``postgres``: PGDATA and pg_wal where the test says (``initdb --waldir``), socket
    dir and server log in a scratch dir, 127.0.0.1 only. The test (root) connects as role ``root`` (peer)."""

    NAME = "postgres"
    STOP_SIGNAL = signal.SIGINT  # fast shutdown

    def __init__(self, pgdata, waldir):
        super().__init__()
        self.pgdata = pgdata
        self.waldir = waldir
        self.run_dir = tempfile.mkdtemp(prefix="stillpoint-pg-")
        os.chmod(self.run_dir, 0o755)
        shutil.chown(self.run_dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = os.path.join(self.run_dir, "server.log")
        open(self.log, "a").close()
        shutil.chown(self.log, "postgres", "postgres")  # pg_ctl -l appends to it as postgres

    def pid_file(self):
        return os.path.join(self.pgdata, "postmaster.pid")

    def initdb(self):
        for d in (self.pgdata, self.waldir):
            _traversable(d)
            os.makedirs(os.path.dirname(d), exist_ok=True)
        for d in (os.path.dirname(self.pgdata), os.path.dirname(self.waldir)):
            shutil.chown(d, "postgres", "postgres")
        _setup_step([pg_bin("initdb"), "-D", self.pgdata, "--waldir", self.waldir, "-U", "postgres",
                     "--auth-local=peer", "--auth-host=reject", "--no-instructions"], cwd=self.run_dir, **_as_postgres())
        return self

    def settings(self):
        return ["-k", self.run_dir, "-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=32MB",
                "-c", "checkpoint_timeout=1h", "-c", "max_wal_size=1GB", "-c", "log_checkpoints=on",
                "-c", "logging_collector=off"]

    def answers(self):
        return self.sql("SELECT 1", check=False, user="postgres")[0] == 0

    def start(self, timeout=60):
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([pg_bin("postgres"), "-D", self.pgdata] + self.settings(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.run_dir, **_as_postgres())
        return self._wait_answer(timeout, self.answers)

    def start_command(self):
        """The start hook: ``pg_ctl start`` as postgres without waiting (app_recover waits for the recovery)."""
        return ["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "start", "-W", "-D", self.pgdata, "-l", self.log,
                "-o", " ".join(self.settings())]

    def client(self, db="w"):
        return [pg_bin("psql"), "-X", "-A", "-t", "-q", "-h", self.run_dir, "-p", str(self.port), "-d", db]

    def sql(self, statements, check=True, timeout=30, db="w", user=None):
        kw = _as_postgres() if user == "postgres" else {}
        proc = subprocess.run(self.client("postgres" if user else db) + ["-v", "ON_ERROR_STOP=1", "-c", statements],
                              capture_output=True, text=True, timeout=timeout, check=False, cwd=self.run_dir, **kw)
        if check and proc.returncode != 0:
            raise AssertionError("%s: %s" % (statements, proc.stderr))
        return proc.returncode, proc.stdout, proc.stderr

    def controldata(self):
        out = subprocess.run([pg_bin("pg_controldata"), "-D", self.pgdata], capture_output=True, text=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
        return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}

    def create_tables(self):
        self.sql("CREATE ROLE root SUPERUSER LOGIN", user="postgres")
        self.sql("CREATE DATABASE w", db="postgres")
        self.sql("CREATE TABLE a (n int PRIMARY KEY); CREATE TABLE b (n int PRIMARY KEY); CREATE TABLE blocker (n int)")

    def rows(self, table):
        return [int(x) for x in self.sql("SELECT n FROM %s ORDER BY n" % table)[1].split()]

    def writer(self):
        """The shared writer (tests/support/dbwriter.py) on a ``psql`` session."""
        return dbwriter.Writer(self.client())

    def destroy(self):
        self.stop()
        shutil.rmtree(self.pgdata)
        shutil.rmtree(self.waldir)


def lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)
