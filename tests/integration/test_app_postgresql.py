# -*- coding: utf-8 -*-
"""application=postgresql against a real, private PostgreSQL server (Debian's postgresql), no mocks.

The server runs as the ``postgres`` user; PGDATA lives on one loop-device filesystem and ``pg_wal`` on another
(``initdb --waldir``), both EBS members of an emulated local instance (tests/support/dbservers.py); it listens on a
unix socket directory and 127.0.0.1 only, and is stopped by its PID. The test (root) connects by peer
authentication as role ``root``. A writer thread commits numbered transactions (one row in ``a`` and one in ``b``).

- backup.yml with the quiescer while the writer runs, then the same backup without it (level filesystem) -> the
  server is stopped and its files destroyed -> restore.yml with ``array_restore_application: postgresql``: the
  role's app_recover step reads ``pg_controldata`` (the recorded checkpoint, REDO location and timeline, state "in
  production": a crash image), starts the server through the start hook (``pg_ctl start``), waits for
  ``pg_isready`` and ``pg_is_in_recovery()`` false, reports the WAL replayed from the server log ("redo starts at"
  = the recorded redo LSN, "redo done at" before the WAL position read after the thaw), runs ``pg_amcheck --all``:
  rows are exactly 1..k in both tables with k between the writer's counts when the quiescer was ready and when it
  released. Then the filesystem-level set is restored the same way (crash recovery from an older checkpoint,
  nothing recorded to compare): rows 1..k within the freeze, and the WAL each replayed is printed side by side;
- pg_wal outside the set (the set given only the PGDATA filesystem): refused, nothing frozen, no snapshot;
- SIGKILL to the module while frozen, its call in flight: thawed by the guardian, its psql session gone from the
  process table and from the server, the writer commits again, no snapshot;
- the budget: a session holding ACCESS EXCLUSIVE on a table does not delay CHECKPOINT (the run succeeds); what
  does stall it is storage that does not take writes - the test freezes the PGDATA filesystem it made, and a
  run with lock_wait_timeout=2 refuses within the budget (statement_timeout), no snapshot; after the thaw the
  writer resumes.

Skipped when the server binaries are missing, except under CI (CI=true), where that fails.
"""

import json
import os
import subprocess
import time

import pytest

from tests.support.dbservers import PostgreSQLServer
from tests.support.dbservers import app_tag
from tests.support.dbservers import backup_playbook
from tests.support.dbservers import boundary
from tests.support.dbservers import freeze_bounds
from tests.support.dbservers import children_matching
from tests.support.dbservers import killed_in_its_call
from tests.support.dbservers import lsn
from tests.support.dbservers import postgresql_missing
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

MISSING = postgresql_missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the PostgreSQL tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def make_server(inst):
    data_mnt, wal_mnt = inst.mountpoints
    return PostgreSQLServer(os.path.join(data_mnt, "pg", "data"), os.path.join(wal_mnt, "pg", "wal"))


def backup(ec2, inst, server, name, application):
    extra = {"array_backup_application": "postgresql", "array_backup_application_login_user": "root",
             "array_backup_application_login_unix_socket": server.run_dir,
             "array_backup_application_login_port": server.port, "array_backup_lock_wait_timeout": 5} if application else {}
    return backup_playbook(ec2, inst, name, extra)


def restore(ec2, inst, server, set_id, **extra):
    """restore.yml with the application step; the started server adopted by its pid file."""
    t0 = time.monotonic()
    rc, res, _raw = run_playbook(RESTORE, ec2, dict(extra, **{
        "restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": set_id,
        "array_restore_by_id_dir": inst.by_id_dir, "array_restore_aws_endpoint_url": ec2.url,
        "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30,
        "array_restore_application": "postgresql", "array_restore_application_start_command": server.start_command(),
        "array_restore_application_login_user": "root", "array_restore_application_login_unix_socket": server.run_dir,
        "array_restore_application_login_port": server.port, "array_restore_application_log_file": server.log,
        "array_restore_application_data_directory": server.pgdata,
        "array_restore_application_recovery_timeout": 60, "array_restore_hook_timeout": 30}))
    assert rc == 0, [(name, r.get("msg")) for name, r in res.items() if r.get("failed")] or res
    server.adopt()
    app = task(res, APP)
    assert app["started"] is True and app["already_running"] is False, app
    assert app["check"]["status"] == "passed" and app["check"]["tool"] == "pg_amcheck", app["check"]
    rec = app["recovery"]
    assert rec["source"] == "log" and rec["crash_recovery"] is True, rec
    assert rec["bytes"] == lsn(rec["end_lsn"]) - lsn(rec["start_lsn"]) >= 0, rec
    control = rec["pg_control_before_start"]
    assert control["state"] == "in production", control  # a crash image, as documented
    # redo starts where pg_control said (or at the record after it when the REDO location is the checkpoint itself)
    assert rec["start_lsn"] == control["redo_lsn"] or (
        control["redo_lsn"] == control["checkpoint_lsn"] and lsn(rec["start_lsn"]) > lsn(control["redo_lsn"])), (rec, control)
    return app, time.monotonic() - t0


def test_postgresql_backup_under_load_restores_by_crash_recovery(ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        server = make_server(inst)
        writer = None
        try:
            server.initdb().start()
            server.create_tables()
            assert os.path.realpath(os.path.join(server.pgdata, "pg_wal")) == server.waldir
            writer = server.writer()
            writer.start()
            writer.wait_for(50)
            taken, backup_s = backup(ec2, inst, server, "postgresql", application=True)
            writer.wait_for(len(writer.done) + 20)
            plain, _s = backup(ec2, inst, server, "postgresql-fs", application=False)
            writer.wait_for(len(writer.done) + 20)
            writer.finish()
            app = taken["application"]
            assert taken["level"] == "application", taken
            assert app["confirmed"] is True and app["lock"] == "checkpoint", app
            assert plain["level"] == "filesystem" and not plain.get("application"), plain
            k_lock, k_release = writer.count_at(app["locked_at"]), writer.count_at(app["released_at"])
            fs_lo, fs_hi = freeze_bounds(writer, plain)
            record, level = app_tag(ec2, taken["set_id"])
            assert level == "application" and record["confirmed"] is True
            for key in ("checkpoint_lsn", "redo_lsn", "timeline", "wal_lsn_before_freeze", "wal_lsn_after_thaw"):
                assert record[key] == app["recorded"][key], key
            assert lsn(record["redo_lsn"]) <= lsn(record["checkpoint_lsn"]) < lsn(record["wal_lsn_before_freeze"]) \
                <= lsn(record["wal_lsn_after_thaw"]), record
            assert app_tag(ec2, plain["set_id"]) == (None, "filesystem")

            written = len(writer.done)
            server.destroy()
            got, restore_s = restore(ec2, inst, server, taken["set_id"])
            k = boundary(server)
            assert k_lock <= k <= k_release, (k_lock, k, k_release)
            pos, rec = got["position"], got["recovery"]
            assert pos["matches"] is True and pos["problems"] == [], pos
            control = rec["pg_control_before_start"]
            assert (control["checkpoint_lsn"], control["redo_lsn"], control["timeline"]) == (
                record["checkpoint_lsn"], record["redo_lsn"], record["timeline"]), control
            assert rec["start_lsn"] == record["redo_lsn"] or record["redo_lsn"] == record["checkpoint_lsn"], (rec, record)
            assert lsn(record["redo_lsn"]) <= lsn(rec["end_lsn"]) < lsn(record["wal_lsn_after_thaw"]), (rec, record)

            # the same backup without the quiescer: crash recovery from whatever checkpoint was last
            server.stop()
            # (the volumes in place are the first restore's, neither this set's source nor its restore)
            got_fs, restore_fs_s = restore(ec2, inst, server, plain["set_id"], array_restore_replace_unknown=True)
            k_fs = boundary(server)
            assert fs_lo <= k_fs <= fs_hi, (fs_lo, k_fs, fs_hi)
            assert got_fs["position"]["matches"] is None, got_fs["position"]
            rec_fs = got_fs["recovery"]
            print("\nrestore figures (PostgreSQL): application set: rows k=%d (ready %d .. released %d, %d written in "
                  "all); checkpoint %s redo %s timeline %s, WAL before freeze %s / after thaw %s, equal in the restored "
                  "pg_control; filesystem set: rows k=%d (freeze %d .. thaw %d). Recovery work: application replayed "
                  "%s..%s = %d bytes of WAL, filesystem %s..%s = %d bytes; server ready %.0f / %.0f ms after its start; "
                  "pg_amcheck %s / %s; CHECKPOINT %.1f ms, freeze window %.1f ms; backup.yml %.1f s, restore.yml %.1f s "
                  "/ %.1f s"
                  % (k, k_lock, k_release, written, record["checkpoint_lsn"], record["redo_lsn"], record["timeline"],
                     record["wal_lsn_before_freeze"], record["wal_lsn_after_thaw"], k_fs, fs_lo, fs_hi,
                     rec["start_lsn"], rec["end_lsn"], rec["bytes"], rec_fs["start_lsn"], rec_fs["end_lsn"],
                     rec_fs["bytes"], got["ready_ms"], got_fs["ready_ms"], got["check"]["status"],
                     got_fs["check"]["status"], app["lock_wait_ms"], taken["freeze_window_ms"], backup_s, restore_s,
                     restore_fs_s))
        finally:
            if writer is not None and writer.is_alive():
                writer.stop_event.set()
                writer.proc.kill()
            server.cleanup()


@pytest.fixture
def pg(ec2):
    """A server on an emulated instance's two filesystems (PGDATA, pg_wal), with a writer running."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        server = make_server(inst)
        with serving(server, lambda: server.initdb().start(), rows=20) as writer:
            yield inst, server, writer


def module_args(tmp_path, inst, ec2, server, **extra):
    return snapshot_set_argv(tmp_path, inst, ec2, **dict({
        "name": "pg-budget", "application": "postgresql", "application_login_user": "root",
        "application_login_unix_socket": os.path.join(server.run_dir, ".s.PGSQL.%d" % server.port)}, **extra))


def run_module(tmp_path, inst, ec2, server, **extra):
    argv, env = module_args(tmp_path, inst, ec2, server, **extra)
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    return json.loads(proc.stdout), time.monotonic() - t0, proc.stdout


def test_refusals_and_the_checkpoint_budget(tmp_path, ec2, pg):
    inst, server, writer = pg
    blocker = None
    frozen = None
    try:
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
        assert res["application"]["lock_wait_ms"] < (2 + 2 + 1) * 1000, res["application"]  # the module's own measure
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


def test_module_sigkilled_while_frozen_ends_its_session_and_the_freeze(tmp_path, ec2, pg):
    """SIGKILL to the module while PGDATA and pg_wal are frozen and its CreateSnapshots call is in flight: the
    guardian thaws (dead-man), its psql coprocess ends with it (stdin closed, and the parent-death signal), the
    server has no session of it left, the writer commits again, and no snapshot exists."""
    inst, server, writer = pg
    argv, env = module_args(tmp_path, inst, ec2, server, freeze_deadline=5.0, lock_wait_timeout=5)
    with killed_in_its_call(ec2, argv, env, str(tmp_path), writer) as (proc, stalled):
        sessions = [pid for pid, _parent in children_matching(ppid=proc.pid, needle="psql")]
        assert len(sessions) == 1, sessions  # the quiescer's session, held across the call
        proc.kill()  # the module alone
        t_kill = time.monotonic()
        proc.communicate(timeout=10)
        assert wait_thawed(inst.mountpoints, timeout=6.0) is not None
        writer.wait_for(stalled + 1, timeout=10)
        resumed = time.monotonic() - t_kill
        deadline = time.monotonic() + 10
        while any(os.path.exists("/proc/%d" % pid) for pid in sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists("/proc/%d" % pid) for pid in sessions), sessions
        others = server.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                            "AND pid <> pg_backend_pid()")[1].strip()
        assert others == "1", others  # the writer's session only
        print("\nSIGKILL while frozen (PostgreSQL): commits resumed %.2f s after the kill; psql %s gone"
              % (resumed, sessions))
    writer.finish()
