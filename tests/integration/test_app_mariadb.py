# -*- coding: utf-8 -*-
"""application=mariadb against a real, private MariaDB server (Debian's mariadb-server), no mocks.

The server's data directory and its binary log live on two different loop-device filesystems that are the
EBS members of an emulated instance (tests/support/dbservers.py). A writer thread commits numbered transactions
continuously (each one row in table ``a`` and one in table ``b``: a two-table transaction that must never be
seen half-applied).

- backup.yml with the quiescer while the writer runs, then the same backup without it (level filesystem) ->
  the server is stopped and its files destroyed -> restore.yml with ``array_restore_application: mariadb``: the
  role's app_recover step starts the server through the start hook, waits for its recovery, runs
  ``mariadb-check --all-databases --check``, reports the redo InnoDB replayed (from the error log) and compares
  the binary log position and GTID with the catalog: rows are exactly 1..k in both tables, k lies between the
  writer's count when the lock was taken and when it was released, the check passed, the position matches. Then
  the filesystem-level set is restored the same way (crash recovery, nothing recorded to compare): rows 1..k
  again, k within the freeze, and the redo each restore replayed is printed side by side;
- the same in controller mode (backup.yml with array_backup_mode=controller: the host's freeze guardian holds the
  lock, the controller makes the call): the restored rows are 1..k with k within the lock, the position matches;
- the lock-wait budget: a session holding a table write lock makes the run refuse within the budget, nothing
  frozen, no snapshot, the writer keeps committing; with on_quiesce_failure=continue the set is filesystem;
- the module SIGKILLed while it holds the lock (its CreateSnapshots in flight): the database accepts commits
  again and no snapshot is left.

Skipped when the server binaries are missing, except under CI (CI=true), where that fails.
"""

import json
import os
import subprocess
import time

import pytest

from tests.support.dbservers import MariaDBServer
from tests.support.dbservers import app_tag
from tests.support.dbservers import backup_playbook
from tests.support.dbservers import boundary
from tests.support.dbservers import freeze_bounds
from tests.support.dbservers import killed_in_its_call
from tests.support.dbservers import mariadb_missing
from tests.support.dbservers import serving
from tests.support.dbservers import snapshot_set_argv
from tests.support.loopfs import probe_frozen
from tests.support.loopfs import wait_thawed
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import own_snapshots
from tests.support.world import task

RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
APP = "Start the application, wait for its recovery, check it and compare it with the catalog's record"

MISSING = mariadb_missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the MariaDB tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def backup(ec2, inst, server, name, application, **more):
    extra = {"array_backup_application": "mariadb", "array_backup_application_login_user": "root",
             "array_backup_application_login_unix_socket": server.socket,
             "array_backup_lock_wait_timeout": 5} if application else {}
    return backup_playbook(ec2, inst, name, dict(extra, **more))


def restore_vars(inst, ec2, server, set_id, **extra):
    return dict(extra, **{
        "restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": set_id,
        "array_restore_by_id_dir": inst.by_id_dir, "array_restore_aws_endpoint_url": ec2.url,
        "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30,
        "array_restore_application": "mariadb", "array_restore_application_start_command": server.start_command(),
        "array_restore_application_login_user": "root", "array_restore_application_login_unix_socket": server.socket,
        "array_restore_application_recovery_timeout": 60, "array_restore_hook_timeout": 30})


def restore(ec2, inst, server, set_id, **extra):
    """restore.yml with the application step; the started server adopted by its pid file."""
    t0 = time.monotonic()
    rc, res, _raw = run_playbook(RESTORE, ec2, restore_vars(inst, ec2, server, set_id, **extra))
    assert rc == 0, [(name, r.get("msg")) for name, r in res.items() if r.get("failed")] or res
    server.adopt()
    app = task(res, APP)
    assert app["started"] is True and app["already_running"] is False, app
    assert app["check"]["status"] == "passed" and app["check"]["tables_ok"] >= 3, app["check"]
    rec = app["recovery"]
    assert rec["source"] == "log" and rec["log_file"] == server.log, rec  # found through @@log_error
    assert rec["crash_recovery"] is True and rec["bytes"] == rec["end_lsn"] - rec["start_lsn"] >= 0, rec
    return app, time.monotonic() - t0


def restored_within_the_lock(ec2, inst, server, set_id, k_lock, k_release, record):
    """restore.yml of ``set_id`` with the application step; the proof: the rows are 1..k (boundary), k between the
    writer's count when the lock was taken and when it was released, and the binlog position the catalog recorded is
    the restored server's, as app_recover reported it and as the server itself says. Returns (app_recover's result,
    restore seconds, k)."""
    got, restore_s = restore(ec2, inst, server, set_id)
    k = boundary(server)
    assert k_lock <= k <= k_release, (k_lock, k, k_release)
    pos = got["position"]
    assert pos["matches"] is True and pos["problems"] == [], pos
    assert (pos["restored"]["binlog_position"], pos["restored"]["gtid"]) == (
        record["binlog_position"], record["gtid"]), pos
    logs = dict(line.split("\t")[:2] for line in server.sql("SHOW BINARY LOGS")[1].splitlines())
    assert int(logs[record["binlog_file"]]) == record["binlog_position"], logs
    return got, restore_s, k


def test_mariadb_backup_under_load_restores_to_a_transaction_boundary(ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        data_mnt, log_mnt = inst.mountpoints
        server = MariaDBServer(os.path.join(data_mnt, "mysql"), os.path.join(log_mnt, "binlog"))
        writer = None
        try:
            server.install().start()
            server.create_tables()
            writer = server.writer()
            writer.start()
            writer.wait_for(50)
            taken, backup_s = backup(ec2, inst, server, "mariadb", application=True)
            writer.wait_for(len(writer.done) + 20)  # commits go on after the release
            plain, _s = backup(ec2, inst, server, "mariadb-fs", application=False)
            writer.wait_for(len(writer.done) + 20)
            writer.finish()
            app = taken["application"]
            assert taken["level"] == "application", taken
            assert app["confirmed"] is True and app["lock"] == "backup_stage", app
            assert plain["level"] == "filesystem" and not plain.get("application"), plain
            k_lock, k_release = writer.count_at(app["locked_at"]), writer.count_at(app["released_at"])
            fs_lo, fs_hi = freeze_bounds(writer, plain)
            record, level = app_tag(ec2, taken["set_id"])
            assert level == "application"
            assert record["binlog_file"] == app["recorded"]["binlog_file"]
            assert record["binlog_position"] == app["recorded"]["binlog_position"]
            assert record["gtid"] == app["recorded"]["gtid"] and record["confirmed"] is True
            assert app_tag(ec2, plain["set_id"]) == (None, "filesystem")

            # the disaster: the server stops, its files are gone
            written = len(writer.done)
            server.destroy()
            # check mode first: the plan names the application step, nothing is started
            rc, res, _raw = run_playbook(RESTORE, ec2, restore_vars(inst, ec2, server, taken["set_id"]), check=True)
            assert rc == 0, [(name, r.get("msg")) for name, r in res.items() if r.get("failed")] or res
            plan = task(res, "Plan of the swap and the host steps (check mode, volumes not created yet)")["msg"]
            assert "then start mariadb, wait for its recovery, check it and compare it" in " ".join(plan), plan
            assert not os.path.exists(server.socket) and not os.path.exists(server.pid_file())
            got, restore_s, k = restored_within_the_lock(ec2, inst, server, taken["set_id"], k_lock, k_release, record)

            # the same backup without the quiescer: crash recovery, nothing recorded to compare
            server.stop()
            # (the volumes in place are the first restore's, neither this set's source nor its restore)
            got_fs, restore_fs_s = restore(ec2, inst, server, plain["set_id"], array_restore_replace_unknown=True)
            k_fs = boundary(server)
            assert fs_lo <= k_fs <= fs_hi, (fs_lo, k_fs, fs_hi)
            assert got_fs["position"]["matches"] is None, got_fs["position"]
            rec, rec_fs = got["recovery"], got_fs["recovery"]
            print("\nrestore figures (MariaDB): application set: rows k=%d (lock %d .. release %d, %d written in all), "
                  "held %.1f ms, freeze window %.1f ms, binlog %s:%s gtid %s matches the restored server; filesystem "
                  "set: rows k=%d (freeze %d .. thaw %d). Recovery work: application %d bytes of redo (LSN %s..%s, %s "
                  "pages, binlog recovery %s, %s prepared), filesystem %d bytes (LSN %s..%s, %s pages, %s prepared); "
                  "server ready %.0f / %.0f ms after its start; mariadb-check %s / %s; backup.yml %.1f s, restore.yml "
                  "%.1f s / %.1f s"
                  % (k, k_lock, k_release, written, app["held_ms"], taken["freeze_window_ms"], record["binlog_file"],
                     record["binlog_position"], record["gtid"], k_fs, fs_lo, fs_hi, rec["bytes"], rec["start_lsn"],
                     rec["end_lsn"], rec["pages"], rec["binlog_recovery"] and "yes", rec["prepared_transactions"],
                     rec_fs["bytes"], rec_fs["start_lsn"], rec_fs["end_lsn"], rec_fs["pages"],
                     rec_fs["prepared_transactions"], got["ready_ms"], got_fs["ready_ms"], got["check"]["status"],
                     got_fs["check"]["status"], backup_s, restore_s, restore_fs_s))
        finally:
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()


def test_controller_mode_set_restores_to_a_transaction_boundary(ec2):
    """The same proof for a set taken in controller mode (the host without AWS access: its guardian holds the lock,
    the controller makes the call): backup.yml with array_backup_mode=controller under load, the disaster,
    restore.yml with the application step: rows 1..k, k within the lock, the recorded position is the restored
    server's."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        server = MariaDBServer(os.path.join(inst.mountpoints[0], "mysql"), os.path.join(inst.mountpoints[1], "binlog"))
        with serving(server, lambda: server.install().start(), rows=50) as writer:
            ec2.latency("CreateSnapshots", 500)  # the controller's call: hold through a visible stretch of it
            try:
                taken, backup_s = backup(ec2, inst, server, "mariadb-controller", application=True,
                                         array_backup_mode="controller", array_backup_instance_id=inst.instance_id)
            finally:
                ec2.latency("CreateSnapshots", 0)
            writer.wait_for(len(writer.done) + 20)  # commits go on after the release
            writer.finish()
            app = taken["application"]
            assert taken["level"] == "application", taken
            action = taken["actions"][0]  # controller mode: the host's guardian took and released the lock
            assert action["lock"]["rc"] == 0 and action["release"]["rc"] == 0, action
            assert app["confirmed"] is True and app["lock"] == "backup_stage", app
            assert app["held_ms"] >= taken["freeze_window_ms"] >= 500, (app["held_ms"], taken["freeze_window_ms"])
            k_lock, k_release = writer.count_at(app["locked_at"]), writer.count_at(app["released_at"])
            record, level = app_tag(ec2, taken["set_id"])
            assert level == "application" and record["confirmed"] is True, record
            written = len(writer.done)
            server.destroy()
            got, restore_s, k = restored_within_the_lock(ec2, inst, server, taken["set_id"], k_lock, k_release, record)
            print("\nrestore figures (MariaDB, controller mode): rows k=%d (lock %d .. release %d, %d written), held "
                  "%.1f ms, freeze window %.1f ms, binlog %s:%s gtid %s matches the restored server; redo replayed %d "
                  "bytes; mariadb-check %s; backup.yml %.1f s, restore.yml %.1f s"
                  % (k, k_lock, k_release, written, app["held_ms"], taken["freeze_window_ms"], record["binlog_file"],
                     record["binlog_position"], record["gtid"], got["recovery"]["bytes"], got["check"]["status"],
                     backup_s, restore_s))


def module_args(tmp_path, inst, ec2, server, **extra):
    return snapshot_set_argv(tmp_path, inst, ec2, **dict({
        "name": "mariadb-budget", "application": "mariadb", "application_login_user": "root",
        "application_login_unix_socket": server.socket}, **extra))


def run_module(tmp_path, inst, ec2, server, **extra):
    argv, env = module_args(tmp_path, inst, ec2, server, **extra)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0, proc.stdout


@pytest.fixture
def db(ec2):
    """A server on an emulated instance's two filesystems (data, binlog), with a writer running."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        server = MariaDBServer(os.path.join(inst.mountpoints[0], "mysql"), os.path.join(inst.mountpoints[1], "binlog"))
        with serving(server, lambda: server.install().start(), rows=20) as writer:
            yield inst, server, writer
            writer.finish()


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
        # the module's own measure of its wait, not the wall clock of a module run (its start-up is the machine's
        # load): the server's lock_wait_timeout ends it, the client's own budget (+2 s) if the server does not
        assert res["application"]["lock_wait_ms"] < (2 + 2 + 1) * 1000, res["application"]
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
    argv, env = module_args(tmp_path, inst, ec2, server, freeze_deadline=5.0, lock_wait_timeout=5)
    with killed_in_its_call(ec2, argv, env, str(tmp_path), writer) as (proc, stalled):
        proc.kill()  # the module alone: its client must die with it
        t_kill = time.monotonic()
        proc.communicate(timeout=10)
        writer.wait_for(stalled + 1, timeout=10)
        resumed = time.monotonic() - t_kill
        assert wait_thawed(inst.mountpoints, timeout=6.0) is not None
        assert server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'")[1].strip() == "0"
        print("\nSIGKILL while holding: commits resumed %.2f s after the kill" % resumed)
