# -*- coding: utf-8 -*-
"""ebs_snapshot_set mode=controller with application=mariadb / postgresql against real, private servers, no mocks.

In controller mode the host has no AWS access: the action plugin runs ebs_mount_info and ``fsfreeze state=frozen``
on the host, makes the one CreateSnapshots call on the controller and thaws with one raw command. The lock is held
on the host by the freeze guardian (which outlives the fsfreeze module): it opens the application's session and
takes the lock within the lock-wait budget right before it freezes, releases it right after its thaw, and the
thaw's reply says whether the lock was confirmed held. A keeper process holds the module's end of the guardian's
connection: a SIGKILLed guardian is thawed by it, and the client session dies with the guardian.

The servers' data and logs live on two loop-device filesystems that are the EBS members of an emulated instance
(tests/support/dbservers.py); a writer commits numbered transactions throughout. ansible-playbook runs on
localhost (local connection), the EC2 endpoint on 127.0.0.1.

- MariaDB: the set records ``application`` with the binary log position and GTID; no commit returns while the
  lock is held, the recorded GTID is the writer's count at the lock; the password given never shows;
- PostgreSQL: the set records ``application`` with the checkpoint, redo and WAL LSNs; the live server's latest
  checkpoint is still the recorded one;
- the dead-man deadline under a longer call: the guardian thaws and releases at the deadline, the database serves
  while the call runs, the set is recorded crash (continue), never application;
- the lock-wait budget (a session holding a table write lock): refused within the budget, nothing frozen, no
  snapshot, no guardian or keeper left, the writer keeps committing; with continue the set is ``filesystem``;
- the guardian SIGKILLed while it holds the lock (its CreateSnapshots in flight): the keeper thaws at once (long
  before the deadline), the client dies with the guardian so the database commits again, the run refuses to
  record ``application`` and rolls the set back;
- check mode plans (the host checks the options and finds the client) without a session, a freeze or a change;
- without a database: a guardian holding a held hook, handed over to its keeper, imports nothing and opens no path
  on what it froze (an audit hook kills either process that does), and the thaw with its token confirms the hook.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.dbservers import MariaDBServer
from tests.support.dbservers import PostgreSQLServer
from tests.support.dbservers import app_tag
from tests.support.dbservers import children_matching
from tests.support.dbservers import lsn
from tests.support.dbservers import mariadb_missing
from tests.support.dbservers import postgresql_missing
from tests.support.dbservers import serving
from tests.support.loopfs import loopfs  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import probe_frozen
from tests.support.loopfs import wait_thawed
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import ansible_env
from tests.support.world import own_snapshots
from tests.support.world import run_playbook
from tests.support.world import wait_for_call
from tests.support.world import write_playbook

MARIADB = mariadb_missing()
POSTGRESQL = postgresql_missing()
if (MARIADB or POSTGRESQL) and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the application tests cannot run: %s" % (MARIADB or POSTGRESQL))
needs_mariadb = pytest.mark.skipif(MARIADB is not None, reason=str(MARIADB))
needs_postgresql = pytest.mark.skipif(POSTGRESQL is not None, reason=str(POSTGRESQL))

TASK = "take set"
SECRET = "s3cret-never-shown"


def set_task(ec2, inst, **args):
    params = {"mode": "controller", "mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir,
              "endpoint_url": ec2.url, "region": ec2.region, "poll_interval": 0.2, "name": "controller-app",
              "wait": False}
    params.update(args)
    return {"name": TASK, "stillpoint.snapshots.ebs_snapshot_set": params, "register": "out"}


def run(tmp_path, ec2, inst, check=False, **args):
    book = write_playbook(tmp_path, [set_task(ec2, inst, **args)], name="t%d.yml" % time.monotonic_ns())
    t0 = time.monotonic()
    rc, results, raw = run_playbook(book, ec2, check=check)
    return rc, results[TASK], json.dumps(raw), time.monotonic() - t0


def mariadb_args(server, **extra):
    args = {"application": "mariadb", "application_login_user": "root",
            "application_login_unix_socket": server.socket, "lock_wait_timeout": 5}
    args.update(extra)
    return args


def holders(mountpoints):
    """PIDs of the processes holding an fd on one of ``mountpoints`` (the guardian and its keeper do)."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                try:
                    if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in mountpoints:
                        out.add(int(pid))
                except OSError:
                    pass
        except OSError:
            pass
    return out


def wait_no_holders(mountpoints, timeout=10.0):
    deadline = time.monotonic() + timeout
    while holders(mountpoints):
        assert time.monotonic() < deadline, "still held by %s" % holders(mountpoints)
        time.sleep(0.05)


def commits_between(writer, t0, t1):
    return [n for n, t in writer.done if t0 < t < t1]


def gtid_seq(text):
    """The sequence number of ``@@gtid_binlog_pos`` (one domain, one server): ``0-1-57`` -> 57."""
    return int(text.strip().split("-")[-1])


@pytest.fixture
def mariadb(ec2):
    """A private MariaDB on an emulated instance's two filesystems (data, binlog), a writer running."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        server = MariaDBServer(os.path.join(inst.mountpoints[0], "mysql"), os.path.join(inst.mountpoints[1], "binlog"))
        with serving(server, server.install().start, rows=20) as writer:
            yield inst, server, writer
        assert not any(probe_frozen(m) for m in inst.mountpoints)


@needs_mariadb
def test_mariadb_controller_mode_records_application_with_the_binlog_position(tmp_path, ec2, mariadb):
    inst, server, writer = mariadb
    ec2.latency("CreateSnapshots", 1000)  # the call is the controller's: hold through a visible stretch of it
    try:
        rc, res, raw, took = run(tmp_path, ec2, inst, **mariadb_args(server, application_login_password=SECRET))
    finally:
        ec2.latency("CreateSnapshots", 0)
    assert rc == 0, res.get("msg")
    assert SECRET not in raw
    app = res["application"]
    assert res["level"] == "application", (res.get("warnings"), app)
    assert app["confirmed"] is True and app["locked"] is True and app["lock"] == "backup_stage", app
    assert res["create_calls"] == 1 and len(ec2.calls("CreateSnapshots")) == 1
    assert app["held_ms"] >= res["freeze_window_ms"] >= 1000, (app["held_ms"], res["freeze_window_ms"])
    # the lock was the application's own: no commit returned while it was held
    assert commits_between(writer, app["locked_at"] + 0.1, app["released_at"] - 0.1) == []
    writer.wait_for(len(writer.done) + 20, timeout=20)  # and commits go on after the release
    action = res["actions"][0]
    assert action["lock"]["rc"] == 0 and action["release"]["rc"] == 0, action
    record, level = app_tag(ec2, res["set_id"])
    assert level == "application" and record["confirmed"] is True
    assert (record["binlog_file"], record["binlog_position"], record["gtid"]) == (
        app["recorded"]["binlog_file"], app["recorded"]["binlog_position"], app["recorded"]["gtid"])
    # the recorded GTID is the writer's count at the lock: each of its commits is one binlog transaction
    writer.finish()
    base = gtid_seq(server.sql("SELECT @@gtid_binlog_pos")[1]) - len(writer.done)
    k = gtid_seq(record["gtid"]) - base
    assert writer.count_at(app["locked_at"]) <= k <= writer.count_at(app["released_at"]), (
        writer.count_at(app["locked_at"]), k, writer.count_at(app["released_at"]))
    wait_no_holders(inst.mountpoints)  # the guardian and its keeper are gone
    print("\ncontroller mode, MariaDB: level application, held %.1f ms (lock wait %.1f ms), freeze window %.1f ms, "
          "call %.1f ms, binlog %s:%s gtid %s = commit %d; ansible-playbook %.1f s"
          % (app["held_ms"], app["lock_wait_ms"], res["freeze_window_ms"], res["call_ms"], record["binlog_file"],
             record["binlog_position"], record["gtid"], k, took))


@needs_mariadb
def test_mariadb_controller_mode_lock_wait_budget_refuses_with_nothing_frozen(tmp_path, ec2, mariadb):
    inst, server, writer = mariadb
    blocker = subprocess.Popen(server.client() + ["--unbuffered"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        blocker.stdin.write("LOCK TABLES w.blocker WRITE; SELECT 'locked';\n")
        blocker.stdin.flush()
        assert blocker.stdout.readline().strip() == "locked"
        before = own_snapshots(ec2)
        ec2.clear_calls()
        n0 = len(writer.done)
        args = mariadb_args(server, lock_wait_timeout=2, application_login_password=SECRET)
        rc, res, raw, refused_s = run(tmp_path, ec2, inst, **args)
        assert rc != 0 and "not granted within lock_wait_timeout=2s" in res["msg"], res
        assert "nothing was frozen or snapshotted" in res["msg"]
        lock_wait_ms = res["application"]["lock_wait_ms"]
        assert res["application"]["locked"] is False and lock_wait_ms < 2000 + 3000, res["application"]
        assert SECRET not in raw
        assert ec2.calls("CreateSnapshots") == [] and own_snapshots(ec2) == before
        assert not any(probe_frozen(m) for m in inst.mountpoints)
        wait_no_holders(inst.mountpoints, timeout=5)  # the guardian refused and exited; no keeper was made
        writer.wait_for(n0 + 20, timeout=10)  # the application kept serving, during and after

        args = mariadb_args(server, lock_wait_timeout=2, on_quiesce_failure="continue")
        rc, res, raw, continued_s = run(tmp_path, ec2, inst, **args)
        assert rc == 0, res.get("msg")
        assert res["level"] == "filesystem" and res["application"]["locked"] is False, res
        assert any("recorded at level filesystem" in str(w) for w in res.get("warnings", [])), res.get("warnings")
        assert app_tag(ec2, res["set_id"])[1] == "filesystem"
        wait_no_holders(inst.mountpoints)
        print("\ncontroller mode lock-wait budget 2 s: lock refused after %.0f ms, the run in %.1f s (whole playbook); "
              "continue took a filesystem set in %.1f s" % (lock_wait_ms, refused_s, continued_s))
    finally:
        blocker.kill()
        blocker.wait()


@needs_mariadb
@pytest.mark.parametrize("victim", ["guardian", "keeper"])
def test_guardian_or_keeper_sigkilled_while_holding_thaws_and_releases(tmp_path, ec2, mariadb, victim):
    """The guardian killed: its keeper thaws, its client dies with it. The keeper killed: the guardian sees its
    owner gone and thaws and releases. Either way long before the deadline (30 s), and never ``application``."""
    inst, server, writer = mariadb
    before = own_snapshots(ec2)
    ec2.latency("CreateSnapshots", 6000)
    book = write_playbook(tmp_path, [set_task(ec2, inst, freeze_deadline=30, **mariadb_args(server))])
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=%s" % sys.executable, book]
    play = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(ec2), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_call(ec2, play, "CreateSnapshots", timeout=120)
        assert all(probe_frozen(m) for m in inst.mountpoints)
        stalled = len(writer.done)
        time.sleep(0.5)
        assert len(writer.done) == stalled, "commits went on: the lock was not held"
        # the guardian: the parent of the quiescer's client (the only mariadb client run with --skip-reconnect)
        clients = children_matching(needle="--skip-reconnect")
        assert len(clients) == 1, clients
        client, guardian = clients[0]
        keeper = holders(inst.mountpoints) - {guardian}
        assert guardian in holders(inst.mountpoints) and len(keeper) == 1, (guardian, holders(inst.mountpoints))
        os.kill(guardian if victim == "guardian" else keeper.pop(), signal.SIGKILL)
        t_kill = time.monotonic()
        assert wait_thawed(inst.mountpoints, timeout=2.0) is not None, "still frozen 2 s after the %s's kill" % victim
        thawed_s = time.monotonic() - t_kill
        writer.wait_for(stalled + 1, timeout=10)
        resumed_s = time.monotonic() - t_kill
        deadline = time.monotonic() + 5
        while children_matching(needle="--skip-reconnect"):
            assert time.monotonic() < deadline, "the client outlived the release (%s killed)" % victim
            time.sleep(0.05)
        assert server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'BACKUP STAGE%'")[1].strip() == "0"
        out, err = play.communicate(timeout=120)
        assert play.returncode != 0, out[-3000:]
        assert "not confirmed held through the call" in out and "rolled back" in out, out[-3000:]
        assert own_snapshots(ec2) == before  # the set the call made was rolled back
        wait_no_holders(inst.mountpoints)
        print("\ncontroller mode, %s SIGKILLed while holding (deadline 30 s): thawed %.2f s and commits resumed "
              "%.2f s after the kill; the run refused application and rolled the set back" % (victim, thawed_s, resumed_s))
    finally:
        if play.poll() is None:
            play.kill()
            play.communicate()
        ec2.latency("CreateSnapshots", 0)


@needs_mariadb
def test_the_deadline_thaws_and_releases_while_the_call_runs(tmp_path, ec2, mariadb):
    """freeze_deadline 1 s, a call of 4 s: the guardian thaws and releases at the deadline, the application serves
    during the rest of the call, and the set (on_quiesce_failure=continue) is recorded crash, never application."""
    inst, server, writer = mariadb
    ec2.latency("CreateSnapshots", 4000)
    try:
        rc, res, _raw, _took = run(tmp_path, ec2, inst, freeze_deadline=1.0,
                                   **mariadb_args(server, on_quiesce_failure="continue"))
    finally:
        ec2.latency("CreateSnapshots", 0)
    assert rc == 0, res.get("msg")
    app = res["application"]
    assert res["level"] == "crash" and res["thaw"]["deadline_thawed"] is True, (res["level"], res["thaw"])
    assert app["locked"] is True and app["confirmed"] is False, app
    assert "thawed on its own (deadline)" in app["problem"], app
    assert res["call_ms"] >= 4000 and app["released_at"] - app["locked_at"] < 2.5, (res["call_ms"], app)
    # released at the deadline: commits went on while the controller's call was still in flight
    served = commits_between(writer, app["released_at"], app["released_at"] + 2.0)
    assert served, "no commit in the 2 s after the deadline's release"
    record, level = app_tag(ec2, res["set_id"])
    assert level == "crash" and record["confirmed"] is False
    wait_no_holders(inst.mountpoints)
    print("\ncontroller mode, deadline 1 s under a 4 s call: released %.2f s after the lock, %d commits in the next 2 s "
          "while the call ran (%.0f ms); recorded crash" % (app["released_at"] - app["locked_at"], len(served),
                                                            res["call_ms"]))


@needs_mariadb
def test_check_mode_plans_without_touching(tmp_path, ec2, mariadb):
    inst, server, writer = mariadb
    before = own_snapshots(ec2)
    ec2.clear_calls()
    connections = int(server.sql("SHOW GLOBAL STATUS LIKE 'Connections'")[1].split()[1])
    rc, res, raw, _took = run(tmp_path, ec2, inst, check=True, **mariadb_args(server, application_login_password=SECRET))
    assert rc == 0, res.get("msg")
    assert res["plan"]["level"] == "application" and res["plan"]["freeze"] == inst.mountpoints
    assert res["actions"] == [{"what": "hold the mariadb lock across the freeze and the call", "cmd": [], "rc": None,
                               "ms": None, "planned": True}]
    assert SECRET not in raw
    # no session was opened by the run: only this query's own connection counts
    assert int(server.sql("SHOW GLOBAL STATUS LIKE 'Connections'")[1].split()[1]) == connections + 1
    assert own_snapshots(ec2) == before
    assert [c for c in ec2.calls() if not c["action"].startswith("Describe")] == []
    assert not any(probe_frozen(m) for m in inst.mountpoints) and not holders(inst.mountpoints)
    # and the host does check the quiescer's options (fsfreeze in check mode builds it there, starting nothing)
    rc, res, _raw, _took = run(tmp_path, ec2, inst, check=True, application="held_hook")
    assert rc != 0 and "on the host: application=held_hook needs application_hook" in res["msg"], res


@needs_postgresql
def test_postgresql_controller_mode_records_application_with_the_lsns(tmp_path, ec2):
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems") as inst:
        data_mnt, wal_mnt = inst.mountpoints
        server = PostgreSQLServer(os.path.join(data_mnt, "pg", "data"), os.path.join(wal_mnt, "pg", "wal"))
        with serving(server, server.initdb().start, rows=20) as writer:
            ec2.latency("CreateSnapshots", 500)
            try:
                rc, res, raw, took = run(tmp_path, ec2, inst, application="postgresql", application_login_user="root",
                                         application_login_unix_socket=server.run_dir,
                                         application_login_port=server.port, lock_wait_timeout=5,
                                         application_login_password=SECRET)
            finally:
                ec2.latency("CreateSnapshots", 0)
            assert rc == 0, res.get("msg")
            assert SECRET not in raw
            app = res["application"]
            assert res["level"] == "application", (res.get("warnings"), app)
            assert app["confirmed"] is True and app["lock"] == "checkpoint", app
            record, level = app_tag(ec2, res["set_id"])
            assert level == "application" and record["confirmed"] is True
            for key in ("checkpoint_lsn", "redo_lsn", "timeline", "wal_lsn_before_freeze", "wal_lsn_after_thaw"):
                assert record[key] == app["recorded"][key], key
            assert lsn(record["redo_lsn"]) <= lsn(record["checkpoint_lsn"]) < lsn(record["wal_lsn_before_freeze"]) \
                <= lsn(record["wal_lsn_after_thaw"]), record
            # the live server's latest checkpoint is still the recorded one (what the snapshot's pg_control holds)
            live = server.sql("SELECT checkpoint_lsn, redo_lsn FROM pg_control_checkpoint()", db="postgres",
                              user="postgres")[1].strip().split("|")
            assert live == [record["checkpoint_lsn"], record["redo_lsn"]], (live, record)
            writer.wait_for(len(writer.done) + 20, timeout=20)  # PostgreSQL never stopped serving
            wait_no_holders(inst.mountpoints)
            assert not any(probe_frozen(m) for m in inst.mountpoints)
            print("\ncontroller mode, PostgreSQL: level application, checkpoint %s redo %s timeline %s, WAL %s before "
                  "the freeze .. %s after the thaw, held %.1f ms, freeze window %.1f ms; ansible-playbook %.1f s"
                  % (record["checkpoint_lsn"], record["redo_lsn"], record["timeline"],
                     record["wal_lsn_before_freeze"], record["wal_lsn_after_thaw"], app["held_ms"],
                     res["freeze_window_ms"], took))


# A module in its own process, as fsfreeze state=frozen application=held_hook runs: the guardian holds a held hook,
# the freeze is handed over to a keeper, the process exits. An audit hook in every forked process (the guardian and
# the keeper, and the client's preexec) kills it on any import or any open of a path on the frozen filesystems.
AUDITED = r"""
import json, os, sys
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce, _freeze
mountpoints = json.loads(sys.argv[1])
parent = os.getpid()
def hook(event, args):
    if os.getpid() == parent:
        return
    if event == "import":
        os._exit(97)
    if event == "open" and isinstance(args[0], str) and any(args[0].startswith(m) for m in mountpoints):
        os._exit(98)
sys.addaudithook(hook)
plan = _freeze.check_mountpoints(mountpoints)
app = _app_quiesce.HeldHook([sys.executable, "-c", "import sys; print('READY', flush=True); sys.stdin.read()"], 5)
g = _freeze.Guardian.start(plan, deadline=20.0, application=app)
frozen = g.freeze()
g.hand_over()
sys.stdout.write(json.dumps({"token": g.token, "pid": g.pid, "application": frozen["application"]}) + "\n")
"""


def test_guardian_with_a_held_hook_and_its_keeper_import_nothing(loopfs):  # noqa: F811
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
    paths = [fs.mountpoint for fs in loopfs(2)]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))
    proc = subprocess.run([sys.executable, "-c", AUDITED, json.dumps(paths)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hello = json.loads(proc.stdout.splitlines()[-1])
    assert hello["application"]["locked"] is True and hello["application"]["kind"] == "held_hook"
    try:
        assert all(probe_frozen(p) for p in paths)  # the module exited: the guardian and the keeper hold it
        assert len(holders(paths)) == 2 and hello["pid"] in holders(paths)
        hook_pids = children_matching(ppid=hello["pid"], needle="READY")
        assert len(hook_pids) == 1, hook_pids  # the hook is the guardian's child
        with _freeze.Guardian.connect(hello["token"]) as client:
            status = client.status()
            assert status["keeper"] is True and status["application"]["locked"] is True
            record = client.thaw()
    finally:
        if any(probe_frozen(p) for p in paths):
            subprocess.run(["fsfreeze", "-u"] + paths[:1], check=False)
            subprocess.run(["fsfreeze", "-u"] + paths[1:], check=False)
    # neither process tripped the audit: the guardian answered, and the keeper never let go (that thaws as disconnect)
    assert record["thawed_by"] == "client", record
    assert record["application"]["confirmed"] is True and record["application_record"]["confirmed"] is True
    assert record["application_action"]["rc"] == 0
    assert not any(probe_frozen(p) for p in paths)
    wait_no_holders(paths)  # the guardian exited after the reported thaw, the keeper after the guardian's word
