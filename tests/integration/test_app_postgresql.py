# -*- coding: utf-8 -*-
"""application=postgresql against a real, private PostgreSQL server (Debian's postgresql), no mocks.

The server runs as the ``postgres`` user; PGDATA lives on one loop-device filesystem and ``pg_wal`` on another
(``initdb --waldir``), both EBS members of an emulated local instance; it listens on a unix socket directory
and 127.0.0.1 only, and is stopped by its PID. The test (root) connects by peer authentication as role
``root``. A writer thread commits numbered transactions (one row in ``a`` and one in ``b`` each).

- backup.yml with the quiescer while the writer runs -> the server is stopped and its files destroyed ->
  restore.yml -> before the restored server starts, ``pg_controldata`` shows the recorded checkpoint (latest
  checkpoint location and REDO location equal to the recorded ones, same timeline, state "in production": a
  crash image); the server starts and its log shows crash recovery starting at the recorded redo LSN and
  ending before the WAL position read after the thaw; rows are exactly 1..k in both tables with k between the
  writer's counts when the quiescer was ready (just before the freeze) and when it released (after the thaw);
  ``pg_amcheck`` passes;
- pg_wal outside the set (the set given only the PGDATA filesystem): refused, nothing frozen, no snapshot;
- the budget: a session holding ACCESS EXCLUSIVE on a table does not delay CHECKPOINT (the run succeeds); what
  does stall it is storage that does not take writes - the test freezes the PGDATA filesystem it made, and a
  run with lock_wait_timeout=2 refuses within the budget (statement_timeout), no snapshot; after the thaw the
  writer resumes.

Skipped when the server binaries are missing, except under CI (CI=true), where that fails.
"""

import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.support import dbwriter
from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.world import COLLECTIONS
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import task

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
MODULE = os.path.join(ROOT, "plugins", "modules", "ebs_snapshot_set.py")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
BINARIES = ("initdb", "postgres", "pg_controldata", "psql")


def _bindir():
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(re.sub(r"\D", "", p) or 0), reverse=True):
        if all(os.path.exists(os.path.join(d, b)) for b in BINARIES[:3]):
            return d
    found = shutil.which("postgres", path="/usr/local/bin:/usr/bin")
    return os.path.dirname(found) if found else None


BINDIR = _bindir()


def _bin(name):
    path = os.path.join(BINDIR or "", name)
    return path if os.path.exists(path) else shutil.which(name)


def _missing():
    why = missing_requirements()
    if why:
        return why
    if BINDIR is None or shutil.which("psql") is None:
        return "PostgreSQL server binaries missing (initdb, postgres, pg_controldata, psql): apt-get install postgresql"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user to run the server as (apt-get install postgresql makes one)"
    return None


MISSING = _missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the PostgreSQL tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _as_postgres():
    return dict(user="postgres", group="postgres", extra_groups=[])


def _traversable(path):
    """Let the postgres user reach ``path``: o+x on the test-made stillpoint-* directories above it."""
    d = os.path.dirname(path)
    while d not in ("/", ""):
        if os.path.basename(d).startswith("stillpoint-"):
            os.chmod(d, os.stat(d).st_mode | 0o011)
        d = os.path.dirname(d)


class Server:
    """A private postgres: PGDATA and pg_wal where the test says, socket dir and log in a scratch dir."""

    def __init__(self, pgdata, waldir):
        self.pgdata = pgdata
        self.waldir = waldir
        self.run_dir = tempfile.mkdtemp(prefix="stillpoint-pg-")
        os.chmod(self.run_dir, 0o755)
        shutil.chown(self.run_dir, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = os.path.join(self.run_dir, "server.log")
        self.proc = None

    def initdb(self):
        for d in (self.pgdata, self.waldir):
            _traversable(d)
            os.makedirs(os.path.dirname(d), exist_ok=True)
        for d in (os.path.dirname(self.pgdata), os.path.dirname(self.waldir)):
            shutil.chown(d, "postgres", "postgres")
        subprocess.run([_bin("initdb"), "-D", self.pgdata, "--waldir", self.waldir, "-U", "postgres",
                        "--auth-local=peer", "--auth-host=reject", "--no-instructions"], check=True,
                       capture_output=True, timeout=120, cwd=self.run_dir, **_as_postgres())
        return self

    def start(self, timeout=60):
        self.proc = subprocess.Popen(
            [_bin("postgres"), "-D", self.pgdata, "-k", self.run_dir, "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "shared_buffers=32MB", "-c", "checkpoint_timeout=1h",
             "-c", "max_wal_size=1GB", "-c", "log_checkpoints=on", "-c", "logging_collector=off"],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, cwd=self.run_dir,
            **_as_postgres())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("postgres exited (rc=%s): %s" % (self.proc.returncode, self.server_log()))
            if self.sql("SELECT 1", check=False, user="postgres")[0] == 0:
                return self
            if time.monotonic() > deadline:
                raise AssertionError("postgres did not answer within %ss: %s" % (timeout, self.server_log()))
            time.sleep(0.1)

    def server_log(self):
        try:
            with open(self.log) as handle:
                return handle.read()
        except OSError:
            return ""

    def client(self, db="w"):
        return [_bin("psql"), "-X", "-A", "-t", "-q", "-h", self.run_dir, "-p", str(self.port), "-d", db]

    def sql(self, statements, check=True, timeout=30, db="w", user=None):
        kw = _as_postgres() if user == "postgres" else {}
        proc = subprocess.run(self.client("postgres" if user else db) + ["-v", "ON_ERROR_STOP=1", "-c", statements],
                              capture_output=True, text=True, timeout=timeout, check=False, cwd=self.run_dir, **kw)
        if check and proc.returncode != 0:
            raise AssertionError("%s: %s" % (statements, proc.stderr))
        return proc.returncode, proc.stdout, proc.stderr

    def controldata(self):
        out = subprocess.run([_bin("pg_controldata"), "-D", self.pgdata], capture_output=True, text=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
        return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}

    def stop(self):
        """By PID: SIGINT (fast shutdown), SIGKILL after 60 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def writer_for(server):
    """The shared writer (tests/support/dbwriter.py) on a ``psql`` session."""
    return dbwriter.Writer(server.client())


def setup_db(server):
    server.sql("CREATE ROLE root SUPERUSER LOGIN", user="postgres")
    server.sql("CREATE DATABASE w", db="postgres")
    server.sql("CREATE TABLE a (n int PRIMARY KEY); CREATE TABLE b (n int PRIMARY KEY); CREATE TABLE blocker (n int)")


def rows(server, table):
    return [int(x) for x in server.sql("SELECT n FROM %s ORDER BY n" % table)[1].split()]


def lsn(text):
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def app_tag(ec2, set_id):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    tags = {t["Key"]: t["Value"] for t in snaps[0]["Tags"]}
    parts, i = [tags["stillpoint:app"]], 1
    while "stillpoint:app.%d" % i in tags:
        parts.append(tags["stillpoint:app.%d" % i])
        i += 1
    return json.loads("".join(parts)), tags["stillpoint:level"]


def make_server(inst):
    data_mnt, wal_mnt = inst.mountpoints
    return Server(os.path.join(data_mnt, "pg", "data"), os.path.join(wal_mnt, "pg", "wal"))


def test_postgresql_backup_under_load_restores_by_crash_recovery(ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        server = make_server(inst)
        writer = None
        try:
            server.initdb().start()
            setup_db(server)
            assert os.path.realpath(os.path.join(server.pgdata, "pg_wal")) == server.waldir
            writer = writer_for(server)
            writer.start()
            writer.wait_for(50)
            t0 = time.monotonic()
            rc, res, _raw = run_playbook(BACKUP, ec2, {
                "backup_hosts": "localhost", "backup_become": False,
                "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
                "array_backup_name": "postgresql", "array_backup_keep_last": 0,
                "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
                "array_backup_poll_interval": 0.2,
                "array_backup_application": "postgresql", "array_backup_application_login_user": "root",
                "array_backup_application_login_unix_socket": server.run_dir,
                "array_backup_application_login_port": server.port,
                "array_backup_lock_wait_timeout": 5})
            backup_s = time.monotonic() - t0
            assert rc == 0, res
            taken = task(res, TAKE)
            writer.wait_for(len(writer.done) + 20)
            writer.finish()
            app = taken["application"]
            assert taken["level"] == "application" and taken["state"] == "complete", taken
            assert app["confirmed"] is True and app["lock"] == "checkpoint", app
            k_lock, k_release = writer.count_at(app["locked_at"]), writer.count_at(app["released_at"])
            record, level = app_tag(ec2, taken["set_id"])
            assert level == "application" and record["confirmed"] is True
            for key in ("checkpoint_lsn", "redo_lsn", "timeline", "wal_lsn_before_freeze", "wal_lsn_after_thaw"):
                assert record[key] == app["recorded"][key], key
            assert lsn(record["redo_lsn"]) <= lsn(record["checkpoint_lsn"]) < lsn(record["wal_lsn_before_freeze"]) \
                <= lsn(record["wal_lsn_after_thaw"]), record

            written = len(writer.done)
            server.stop()
            shutil.rmtree(server.pgdata)
            shutil.rmtree(server.waldir)
            t0 = time.monotonic()
            rc, res, _raw = run_playbook(RESTORE, ec2, {
                "restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": taken["set_id"],
                "array_restore_by_id_dir": inst.by_id_dir, "array_restore_aws_endpoint_url": ec2.url,
                "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30})
            restore_s = time.monotonic() - t0
            assert rc == 0, res
            control = server.controldata()
            assert control["Database cluster state"] == "in production", control  # a crash image, as documented
            assert control["Latest checkpoint location"] == record["checkpoint_lsn"], control
            assert control["Latest checkpoint's REDO location"] == record["redo_lsn"], control
            assert int(control["Latest checkpoint's TimeLineID"]) == record["timeline"], control
            log_before = len(server.server_log())
            t0 = time.monotonic()
            server.start()
            start_s = time.monotonic() - t0
            log = server.server_log()[log_before:]
            starts = re.search(r"redo starts at ([0-9A-F]+/[0-9A-F]+)", log)
            done = re.search(r"redo done at ([0-9A-F]+/[0-9A-F]+)", log)
            assert "database system was not properly shut down; automatic recovery in progress" in log, log
            assert starts and done, log
            assert starts.group(1) == record["redo_lsn"], (starts.group(1), record)
            assert lsn(record["redo_lsn"]) <= lsn(done.group(1)) < lsn(record["wal_lsn_after_thaw"]), (done.group(1), record)
            a, b = rows(server, "a"), rows(server, "b")
            k = len(a)
            assert a == list(range(1, k + 1)), "gap in a"
            assert b == a, "a two-table transaction is half applied"
            assert k_lock <= k <= k_release, (k_lock, k, k_release)
            amcheck = "skipped (no pg_amcheck)"
            if _bin("pg_amcheck"):
                check = subprocess.run([_bin("pg_amcheck"), "-h", server.run_dir, "-p", str(server.port), "-d", "w",
                                        "--install-missing", "--heapallindexed"], capture_output=True, text=True,
                                       check=False, timeout=120)
                assert check.returncode == 0, check.stdout + check.stderr
                amcheck = "passed"
            print("\nrestore figures: rows k=%d (ready %d .. released %d, %d written in all); checkpoint %s redo %s "
                  "timeline %s, WAL before freeze %s / after thaw %s; restored pg_control: checkpoint %s, redo %s, "
                  "state %s; crash recovery replayed %s..%s (%d bytes of WAL); pg_amcheck %s; CHECKPOINT %.1f ms, "
                  "held %.1f ms, freeze window %.1f ms; backup.yml %.1f s, restore.yml %.1f s, server start %.1f s"
                  % (k, k_lock, k_release, written, record["checkpoint_lsn"], record["redo_lsn"], record["timeline"],
                     record["wal_lsn_before_freeze"], record["wal_lsn_after_thaw"],
                     control["Latest checkpoint location"], control["Latest checkpoint's REDO location"],
                     control["Database cluster state"], starts.group(1), done.group(1),
                     lsn(done.group(1)) - lsn(starts.group(1)), amcheck, app["lock_wait_ms"], app["held_ms"],
                     taken["freeze_window_ms"], backup_s, restore_s, start_s))
        finally:
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()


def run_module(tmp_path, inst, ec2, server, **extra):
    args = {"mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
            "region": ec2.region, "wait": False, "name": "pg-budget", "instance_id": inst.instance_id,
            "application": "postgresql", "application_login_user": "root",
            "application_login_unix_socket": os.path.join(server.run_dir, ".s.PGSQL.%d" % server.port),
            "_ansible_remote_tmp": str(tmp_path), "_ansible_keep_remote_files": False}
    args.update(extra)
    path = tmp_path / ("args-%d.json" % len(os.listdir(str(tmp_path))))
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, **ec2.env())
    env["PYTHONPATH"] = os.pathsep.join([COLLECTIONS, ROOT])
    env["AWS_EC2_METADATA_DISABLED"] = "false"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, MODULE, str(path)], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0, proc.stdout


def own_snapshots(ec2):
    return {s["SnapshotId"] for s in ec2.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]}


def test_refusals_and_the_checkpoint_budget(tmp_path, ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        server = make_server(inst)
        writer = blocker = None
        frozen = None
        try:
            server.initdb().start()
            setup_db(server)
            writer = writer_for(server)
            writer.start()
            writer.wait_for(20)

            # pg_wal outside the set: only the PGDATA filesystem given
            before = own_snapshots(ec2)
            ec2.clear_calls()
            res, took, raw = run_module(tmp_path, inst, ec2, server, mountpoints=inst.mountpoints[:1],
                                        application_login_password="s3cret-never-shown")
            assert res.get("failed") and "pg_wal (%s) outside" % server.waldir in res["msg"], res
            assert "nothing was frozen or snapshotted" in res["msg"] and "s3cret-never-shown" not in raw
            assert ec2.calls("CreateSnapshots") == [] and own_snapshots(ec2) == before
            outside_s = took

            # ACCESS EXCLUSIVE on a table does not stand in CHECKPOINT's way
            blocker = subprocess.Popen(server.client(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, bufsize=1)
            blocker.stdin.write("BEGIN; LOCK TABLE blocker IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
            blocker.stdin.flush()
            assert blocker.stdout.readline().strip() == "locked"
            res, took, raw = run_module(tmp_path, inst, ec2, server, lock_wait_timeout=2)
            assert not res.get("failed") and res["level"] == "application", res
            locked_s, locked_ckpt = took, res["application"]["lock_wait_ms"]

            # storage that takes no writes does: the test freezes the PGDATA filesystem it made
            before = own_snapshots(ec2)
            ec2.clear_calls()
            subprocess.run(["fsfreeze", "-f", inst.mountpoints[0]], check=True)
            frozen = inst.mountpoints[0]
            res, took, raw = run_module(tmp_path, inst, ec2, server, lock_wait_timeout=2)
            assert res.get("failed") and "CHECKPOINT did not finish within lock_wait_timeout=2s" in res["msg"], res
            assert "statement timeout" in res["msg"], res["msg"]
            assert took < 2 + 6, took
            assert ec2.calls("CreateSnapshots") == [] and own_snapshots(ec2) == before
            stalled = len(writer.done)
            subprocess.run(["fsfreeze", "-u", frozen], check=True)
            frozen = None
            writer.wait_for(stalled + 20, timeout=20)  # the application serves again after the thaw
            assert not probe_frozen(inst.mountpoints[0])
            print("\nrefusals: pg_wal outside the set refused in %.1f s; with ACCESS EXCLUSIVE held the run took "
                  "%.1f s (CHECKPOINT %.1f ms); PGDATA frozen: refused within budget 2 s in %.1f s (whole module run)"
                  % (outside_s, locked_s, locked_ckpt, took))
            writer.finish()
        finally:
            if frozen:
                subprocess.run(["fsfreeze", "-u", frozen], check=False)
            if blocker is not None:
                blocker.kill()
                blocker.wait()
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()
