# -*- coding: utf-8 -*-
"""application=mariadb against a real, private MariaDB server (Debian's mariadb-server), no mocks.

The server's data directory and its binary log live on two different loop-device filesystems that are the
EBS members of an emulated instance. A writer thread commits numbered transactions continuously (each one
row in table ``a`` and one in table ``b``: a two-table transaction that must never be seen half-applied).

- backup.yml with the quiescer while the writer runs -> the server is stopped and its files destroyed ->
  restore.yml -> the server starts on the restored volumes: rows are exactly 1..k in both tables, k lies
  between the writer's count when the lock was taken and when it was released, and the binary log position
  and GTID recorded in the catalog are what the restored server reports;
- the lock-wait budget: a session holding a table write lock makes the run refuse within the budget, nothing
  frozen, no snapshot, the writer keeps committing; with on_quiesce_failure=continue the set is filesystem;
- the module SIGKILLed while it holds the lock (its CreateSnapshots in flight): the database accepts commits
  again and no snapshot is left.

Skipped when the server binaries are missing, except under CI (CI=true), where that fails.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.support import dbwriter
from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.loopfs import wait_thawed
from tests.support.world import COLLECTIONS
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import task

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
MODULE = os.path.join(ROOT, "plugins", "modules", "ebs_snapshot_set.py")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
BINARIES = ("mariadbd", "mariadb-install-db", "mariadb")


def _missing():
    why = missing_requirements()
    if why:
        return why
    gone = [b for b in BINARIES if shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin") is None]
    if gone:
        return "MariaDB server binaries missing (%s): apt-get install mariadb-server" % ", ".join(gone)
    return None


MISSING = _missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the MariaDB tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _bin(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin")


class Server:
    """A private mariadbd: datadir and binlog where the test says, socket/pid/log in a scratch dir, no network."""

    def __init__(self, datadir, binlog_dir):
        self.datadir = datadir
        self.binlog_dir = binlog_dir
        self.run_dir = tempfile.mkdtemp(prefix="stillpoint-mariadb-")
        self.socket = os.path.join(self.run_dir, "sock")
        self.proc = None

    def options(self):
        return ["--no-defaults", "--datadir=%s" % self.datadir, "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=32M"]

    def install(self):
        os.makedirs(self.datadir, exist_ok=True)
        os.makedirs(self.binlog_dir, exist_ok=True)
        subprocess.run([_bin("mariadb-install-db")] + self.options()
                       + ["--user=root", "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        return self

    def start(self, timeout=60):
        self.log = os.path.join(self.run_dir, "error.log")
        self.proc = subprocess.Popen(
            [_bin("mariadbd")] + self.options()
            + ["--socket=%s" % self.socket, "--skip-networking", "--user=root", "--server-id=1",
               "--log-bin=%s" % os.path.join(self.binlog_dir, "bin"), "--sync-binlog=1",
               "--pid-file=%s" % os.path.join(self.run_dir, "pid"), "--log-error=%s" % self.log],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("mariadbd exited (rc=%s): %s" % (self.proc.returncode, self.error_log()))
            if os.path.exists(self.socket) and self.sql("SELECT 1", check=False)[0] == 0:
                return self
            if time.monotonic() > deadline:
                raise AssertionError("mariadbd did not answer within %ss: %s" % (timeout, self.error_log()))
            time.sleep(0.1)

    def error_log(self):
        try:
            with open(self.log) as handle:
                return handle.read()[-3000:]
        except OSError:
            return ""

    def client(self):
        return [_bin("mariadb"), "--no-defaults", "--socket=%s" % self.socket, "--user=root", "--batch",
                "--skip-column-names"]

    def sql(self, statements, check=True, timeout=30):
        proc = subprocess.run(self.client() + ["-e", statements], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("%s: %s" % (statements, proc.stderr))
        return proc.returncode, proc.stdout, proc.stderr

    def stop(self):
        """By PID: SIGTERM (a clean shutdown), SIGKILL after 60 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
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
    """The shared writer (tests/support/dbwriter.py) on a ``mariadb`` session, tables in database ``w``."""
    return dbwriter.Writer(server.client() + ["--unbuffered"], tables="w.")


def schema(server):
    server.sql("CREATE DATABASE w; CREATE TABLE w.a (n INT PRIMARY KEY) ENGINE=InnoDB; "
               "CREATE TABLE w.b (n INT PRIMARY KEY) ENGINE=InnoDB; CREATE TABLE w.blocker (n INT) ENGINE=InnoDB")


def rows(server, table):
    return [int(x) for x in server.sql("SELECT n FROM w.%s ORDER BY n" % table)[1].split()]


def app_tag(ec2, set_id):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    tags = {t["Key"]: t["Value"] for t in snaps[0]["Tags"]}
    parts, i = [tags["stillpoint:app"]], 1
    while "stillpoint:app.%d" % i in tags:
        parts.append(tags["stillpoint:app.%d" % i])
        i += 1
    return json.loads("".join(parts)), tags["stillpoint:level"]


def test_mariadb_backup_under_load_restores_to_a_transaction_boundary(ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        data_mnt, log_mnt = inst.mountpoints
        server = Server(os.path.join(data_mnt, "mysql"), os.path.join(log_mnt, "binlog"))
        writer = None
        try:
            server.install().start()
            schema(server)
            writer = writer_for(server)
            writer.start()
            writer.wait_for(50)
            t0 = time.monotonic()
            rc, res, _raw = run_playbook(BACKUP, ec2, {
                "backup_hosts": "localhost", "backup_become": False,
                "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
                "array_backup_name": "mariadb", "array_backup_keep_last": 0,
                "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
                "array_backup_poll_interval": 0.2,
                "array_backup_application": "mariadb", "array_backup_application_login_user": "root",
                "array_backup_application_login_unix_socket": server.socket,
                "array_backup_lock_wait_timeout": 5})
            backup_s = time.monotonic() - t0
            assert rc == 0, res
            taken = task(res, TAKE)
            writer.wait_for(len(writer.done) + 20)  # commits go on after the release
            writer.finish()
            app = taken["application"]
            assert taken["level"] == "application" and taken["state"] == "complete", taken
            assert app["confirmed"] is True and app["lock"] == "backup_stage", app
            k_lock, k_release = writer.count_at(app["locked_at"]), writer.count_at(app["released_at"])
            record, level = app_tag(ec2, taken["set_id"])
            assert level == "application"
            assert record["binlog_file"] == app["recorded"]["binlog_file"]
            assert record["binlog_position"] == app["recorded"]["binlog_position"]
            assert record["gtid"] == app["recorded"]["gtid"] and record["confirmed"] is True

            # the disaster: the server stops, its files are gone
            written = len(writer.done)
            server.stop()
            shutil.rmtree(server.datadir)
            shutil.rmtree(server.binlog_dir)
            t0 = time.monotonic()
            rc, res, _raw = run_playbook(RESTORE, ec2, {
                "restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": taken["set_id"],
                "array_restore_by_id_dir": inst.by_id_dir, "array_restore_aws_endpoint_url": ec2.url,
                "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30})
            restore_s = time.monotonic() - t0
            assert rc == 0, res
            t0 = time.monotonic()
            server.start()
            start_s = time.monotonic() - t0
            a, b = rows(server, "a"), rows(server, "b")
            k = len(a)
            assert a == list(range(1, k + 1)), "gap in a"
            assert b == a, "a two-table transaction is half applied"
            assert k_lock <= k <= k_release, (k_lock, k, k_release)
            logs = dict(line.split("\t")[:2] for line in server.sql("SHOW BINARY LOGS")[1].splitlines())
            assert int(logs[record["binlog_file"]]) == record["binlog_position"], logs
            assert server.sql("SELECT @@gtid_binlog_pos")[1].strip() == record["gtid"]
            check = subprocess.run([_bin("mariadb-check") or "mariadb-check", "--no-defaults",
                                    "--socket=%s" % server.socket, "--user=root", "w"],
                                   capture_output=True, text=True, check=False)
            assert check.returncode == 0 and "error" not in check.stdout.lower(), check.stdout + check.stderr
            print("\nrestore figures: rows k=%d (lock %d .. release %d, %d written in all), held %.1f ms, lock wait "
                  "%.1f ms, freeze window %.1f ms, binlog %s:%s gtid %s; backup.yml %.1f s, restore.yml %.1f s, "
                  "server start after restore %.1f s"
                  % (k, k_lock, k_release, written, app["held_ms"], app["lock_wait_ms"], taken["freeze_window_ms"],
                     record["binlog_file"], record["binlog_position"], record["gtid"], backup_s, restore_s, start_s))
        finally:
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()


def module_args(tmp_path, inst, ec2, server, **extra):
    args = {"mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
            "region": ec2.region, "wait": False, "name": "mariadb-budget", "instance_id": inst.instance_id,
            "application": "mariadb", "application_login_user": "root",
            "application_login_unix_socket": server.socket,
            "_ansible_remote_tmp": str(tmp_path), "_ansible_keep_remote_files": False}
    args.update(extra)
    path = tmp_path / ("args-%d.json" % len(os.listdir(str(tmp_path))))
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, **ec2.env())
    env["PYTHONPATH"] = os.pathsep.join([COLLECTIONS, ROOT])
    env["AWS_EC2_METADATA_DISABLED"] = "false"
    return [sys.executable, MODULE, str(path)], env


def run_module(tmp_path, inst, ec2, server, **extra):
    argv, env = module_args(tmp_path, inst, ec2, server, **extra)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0, proc.stdout


def own_snapshots(ec2):
    return {s["SnapshotId"] for s in ec2.client().describe_snapshots(OwnerIds=["self"])["Snapshots"]}


@pytest.fixture
def db(ec2):
    """A server on an emulated instance's two filesystems (data, binlog), with a writer running."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        server = Server(os.path.join(inst.mountpoints[0], "mysql"), os.path.join(inst.mountpoints[1], "binlog"))
        writer = None
        try:
            server.install().start()
            schema(server)
            writer = writer_for(server)
            writer.start()
            writer.wait_for(20)
            yield inst, server, writer
            writer.finish()
        finally:
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()


def test_lock_wait_budget_refuses_then_continue_takes_filesystem(tmp_path, ec2, db):
    inst, server, writer = db
    blocker = subprocess.Popen(server.client() + ["--unbuffered"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        blocker.stdin.write("LOCK TABLES w.blocker WRITE; SELECT 'locked';\n")
        blocker.stdin.flush()
        assert blocker.stdout.readline().strip() == "locked"
        before = own_snapshots(ec2)
        ec2.clear_calls()
        n0 = len(writer.done)
        res, took, raw = run_module(tmp_path, inst, ec2, server, lock_wait_timeout=2,
                                    application_login_password="s3cret-never-shown")
        assert res.get("failed") and "not granted within lock_wait_timeout=2s" in res["msg"], res
        refused_s = took
        assert took < 2 + 5, took  # the budget, plus the module's own start
        assert "s3cret-never-shown" not in raw
        assert ec2.calls("CreateSnapshots") == [] and own_snapshots(ec2) == before
        assert not any(probe_frozen(m) for m in inst.mountpoints)
        writer.wait_for(n0 + 20, timeout=10)  # the application kept serving, during and after

        res, took, raw = run_module(tmp_path, inst, ec2, server, lock_wait_timeout=2, on_quiesce_failure="continue")
        assert not res.get("failed"), res
        assert res["level"] == "filesystem" and res["application"]["locked"] is False, res
        assert any("recorded at level filesystem" in str(w) for w in res.get("warnings", [])), (res.get("warnings"), sorted(res))
        print("\nlock-wait budget 2 s: refused in %.1f s (whole module run), continue took a filesystem set in %.1f s"
              % (refused_s, took))
    finally:
        blocker.kill()
        blocker.wait()


def test_module_sigkilled_while_holding_the_lock_releases_it(tmp_path, ec2, db):
    inst, server, writer = db
    before = own_snapshots(ec2)
    ec2.latency("CreateSnapshots", 6000)
    ec2.fail_next("CreateSnapshots", "InternalError", "killed run: create nothing")
    argv, env = module_args(tmp_path, inst, ec2, server, freeze_deadline=5.0, lock_wait_timeout=5)
    proc = subprocess.Popen(argv, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while ec2.received("CreateSnapshots") < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 60, "no CreateSnapshots arrived"
            time.sleep(0.02)
        stalled = len(writer.done)
        time.sleep(0.5)
        assert len(writer.done) == stalled, "commits went on: the lock was not held"
        proc.kill()  # the module alone: its client must die with it
        t_kill = time.monotonic()
        proc.communicate(timeout=10)
        writer.wait_for(stalled + 1, timeout=10)
        resumed = time.monotonic() - t_kill
        assert wait_thawed(inst.mountpoints, timeout=6.0) is not None
        assert server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'")[1].strip() == "0"
        print("\nSIGKILL while holding: commits resumed %.2f s after the kill" % resumed)
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
