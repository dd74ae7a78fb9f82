# -*- coding: utf-8 -*-
"""The restore drill's application check against a real, private PostgreSQL (Debian's postgresql), no mocks.

The source: an emulated local instance whose PGDATA lies on one loop-device filesystem and ``pg_wal`` on another
(tests/support/dbservers.py), a writer committing numbered transactions, backed up by playbooks/backup.yml with the
PostgreSQL quiescer (level ``application``, the checkpoint and LSNs recorded in ``stillpoint:app``). The drill
(playbooks/drill.yml, role restore_drill) then runs on a second local instance (the scratch instance) against the
strict EC2 endpoint:

- the set passes: the copy is restored on scratch volumes, a private server (no TCP, a private socket, its pid file
  on the copy) recovers it, pg_amcheck passes, the recorded checkpoint / REDO / timeline equal the copy's pg_control
  and the WAL replayed ends before the position recorded after the thaw; the verdict in the catalog says
  ``application: passed``; the server is stopped (its PID gone, no process works under the drill root), every
  scratch volume is gone (counted at the endpoint), the source server still serves and its pg_wal link is unchanged;
- the copy lacks the WAL segment its checkpoint needs (the test deletes it from the scratch copy, never the source,
  through restore_drill_checksum_command, which runs between the mount and the application check): the private
  server cannot recover, the verdict is ``fail`` with ``application: failed ...``, nothing is left running or
  attached, the source's segment is still there;
- the drill SIGKILLed while its private server runs, then re-run: the re-run stops the leftover server by its pid file
  on the copy before the leftover volumes are detached, passes, leaves nothing.

Skipped when the PostgreSQL server binaries are missing, except under CI (CI=true), where that fails.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.integration.test_drill import DRILL
from tests.integration.test_drill import changing_calls
from tests.integration.test_drill import drill_volumes
from tests.integration.test_drill import failed
from tests.integration.test_drill import under
from tests.integration.test_drill import unmount_under
from tests.integration.test_drill import verdicts
from tests.integration.test_app_postgresql import backup
from tests.integration.test_app_postgresql import make_server
from tests.support.dbservers import app_tag
from tests.support.dbservers import lsn
from tests.support.dbservers import pg_bin
from tests.support.dbservers import postgresql_missing
from tests.support.dbservers import serving
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import ansible_env
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.procs import descendants
from tests.support.procs import alive

MISSING = postgresql_missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the PostgreSQL drill tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

APP = ("Check the application on the copy (a private server of the recorded kind, its recovery, its own check, "
       "the recorded position; stopped)")
LEFTOVER_APPS = "Stop an application server a killed drill left running on the leftover copies (by its pid file there)"
LEFTOVERS = "Remove the leftover scratch volumes (detach from the scratch instance, delete)"
CORRUPT = """import os, subprocess, sys
pgdata, waldir, wal_mount = sys.argv[1:4]
subprocess.run(["mount", "-o", "remount,rw", wal_mount], check=True)
out = subprocess.run([sys.argv[4], "-D", pgdata], capture_output=True, text=True, check=True,
                     env=dict(os.environ, LC_ALL="C")).stdout
name = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Latest checkpoint's REDO WAL file")][0]
os.unlink(os.path.join(waldir, name))
print("removed", os.path.join(waldir, name))
"""


def drill_root():
    """A drill root the postgres user can traverse (pytest's tmp_path is 0700 root)."""
    root = tempfile.mkdtemp(prefix="stillpoint-drill-root-")
    os.chmod(root, 0o755)
    return root


def drill(ec2, scratch, root, set_id, check=False, **extra):
    variables = {"drill_hosts": "localhost", "drill_become": False, "restore_drill_instance_id": scratch.instance_id,
                 "restore_drill_set_id": set_id, "restore_drill_by_id_dir": scratch.by_id_dir,
                 "restore_drill_root": root, "restore_drill_aws_endpoint_url": ec2.url,
                 "restore_drill_aws_region": ec2.region, "restore_drill_device_timeout": 30,
                 "restore_drill_wait_timeout": 60, "restore_drill_application_recovery_timeout": 60}
    variables.update(extra)
    return variables, run_playbook(DRILL, ec2, variables, check=check)


def working_under(root, pids=None):
    """PIDs of processes whose working directory lies under ``root`` (a server on the copy works in its PGDATA)."""
    out = []
    for entry in [str(p) for p in pids] if pids is not None else os.listdir("/proc"):
        if entry.isdigit():
            try:
                if (os.readlink("/proc/%s/cwd" % entry) + "/").startswith(root.rstrip("/") + "/"):
                    out.append(int(entry))
            except OSError:
                continue
    return out


def plan_changes_nothing(ec2, scratch, root, set_id, kind):
    """The drill in check mode plans the private ``kind`` server and makes no changing call, starts nothing."""
    ec2.clear_calls()
    _v, (rc, res, _raw) = drill(ec2, scratch, root, set_id, check=True)
    assert rc == 0, failed(res)
    assert changing_calls(ec2) == [] and working_under(root) == []
    plan = task(res, "Report the drill")["msg"]
    assert "start a private %s server on the copy" % kind in plan, plan


def passed_check_recorded(ec2, taken, raw, kind):
    """The catalog's verdict on both members and the drill's report say the application check of ``kind`` on the
    scratch copy passed; returns the report and (verdict, its application text) per member for the caller's checks."""
    found = verdicts(ec2, taken["snapshot_ids"])
    assert len(found) == 2
    for value in found.values():
        assert value["result"] == "pass", value
        text = value["checks"]["application"]
        assert text.startswith("passed: private %s server on the scratch copy" % kind), text
        assert "application_s" in value["phases"]
    report = raw["global_custom_stats"]["stillpoint_drills"]["localhost"]
    assert report["result"] == "pass" and report["checks"]["application"].startswith("passed: ")
    return report, [(value, value["checks"]["application"]) for value in found.values()]


def failed_check_recorded(ec2, taken, res, raw, root):
    """A private server that could not recover: the step failed at once, the verdict of every member is ``fail``
    at the application step with ``application: failed: ...``, nothing is left (volumes, mounts, processes)."""
    app = task(res, APP)
    assert app["failed"] and "the server is gone" in app["msg"], app["msg"]
    assert app["summary"].startswith("failed: "), app
    for value in verdicts(ec2, taken["snapshot_ids"]).values():
        assert value["result"] == "fail" and value["rto_s"] is None, value
        assert value["checks"]["failed_at"] == APP
        assert value["checks"]["application"].startswith("failed: "), value["checks"]
    assert raw["global_custom_stats"]["stillpoint_drills"]["localhost"]["result"] == "fail"
    assert drill_volumes(ec2) == [] and under(root) == [] and working_under(root) == []
    return app


@pytest.fixture
def source(ec2):
    """The source instance with a running PostgreSQL, a writer, and an application-level set of it."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        server = make_server(inst)
        with serving(server, lambda: server.initdb().start()) as writer:
            taken, inst.backup_s = backup(ec2, inst, server, "pg-drill", application=True)
            assert taken["level"] == "application", taken
            yield inst, server, writer, taken
            writer.wait_for(len(writer.done) + 20, timeout=30)  # the source serves after the drills
            writer.finish()


def source_unchanged(server, wal_link):
    assert os.readlink(os.path.join(server.pgdata, "pg_wal")) == wal_link
    assert server.sql("SELECT count(*) FROM a")[0] == 0
    with open(server.pid_file()) as handle:
        assert alive(int(handle.readline()))


def test_drill_runs_the_application_check_on_a_private_server(ec2, source):
    inst, server, writer, taken = source
    record, level = app_tag(ec2, taken["set_id"])
    wal_link = os.readlink(os.path.join(server.pgdata, "pg_wal"))
    root = drill_root()
    with EmulatedInstance(ec2, n=1, local=True) as scratch:
        try:
            plan_changes_nothing(ec2, scratch, root, taken["set_id"], "postgresql")

            _v, (rc, res, _raw) = drill(ec2, scratch, root, taken["set_id"])
            assert rc == 0, failed(res)
            app = task(res, APP)
            assert app["changed"] is True and app["check"]["status"] == "passed", app
            assert app["check"]["tool"] == "pg_amcheck"
            pos, rec = app["position"], app["recovery"]
            assert pos["matches"] is True and pos["problems"] == [], pos
            control = rec["pg_control_before_start"]
            assert (control["checkpoint_lsn"], control["redo_lsn"], control["timeline"]) == (
                record["checkpoint_lsn"], record["redo_lsn"], record["timeline"]), (control, record)
            assert rec["crash_recovery"] is True and rec["source"] == "log", rec
            assert lsn(record["redo_lsn"]) <= lsn(rec["end_lsn"]) < lsn(record["wal_lsn_after_thaw"]), (rec, record)
            # the private server: on the copy, stopped by its PID
            [stopped] = app["stopped"]
            assert stopped["pid_file"].startswith(root + "/" + taken["set_id"] + "/")
            assert stopped["signals"] == ["SIGINT"] and not alive(stopped["pid"])
            assert any(a["what"].startswith("repoint the copy's pg_wal from %s to %s/" % (wal_link, root))
                       for a in app["actions"]), app["actions"]
            assert working_under(root) == []
            # the verdict in the catalog
            report, members = passed_check_recorded(ec2, taken, _raw, "postgresql")
            for value, text in members:
                assert "position matches" in text and record["checkpoint_lsn"] in text, text
                assert abs(sum(value["phases"].values()) - value["rto_s"]) < 0.2, value
            # nothing left: volumes (endpoint), mounts, processes; the source untouched and serving
            assert drill_volumes(ec2) == [] and under(root) == []
            assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
            source_unchanged(server, wal_link)
            print("\n" + "\n".join(task(res, "Report the drill")["msg"]))
            print("application check: ready %.0f ms, WAL %s..%s (%d bytes), pg_amcheck %.0f ms, stop %.0f ms; "
                  "phases %s; backup.yml %.1f s" % (app["ready_ms"], rec["start_lsn"], rec["end_lsn"], rec["bytes"],
                                                    app["check"]["ms"], stopped["ms"], report["phases"],
                                                    inst.backup_s))

            # the copy lacks the WAL its checkpoint needs: the application check fails, everything still goes
            script = os.path.join(root, "corrupt.py")
            with open(script, "w") as handle:
                handle.write(CORRUPT)
            base = root + "/" + taken["set_id"]
            waldir = base + server.waldir
            source_wal = sorted(os.listdir(server.waldir))
            _v, (rc, res, raw) = drill(ec2, scratch, root, taken["set_id"], restore_drill_checksum_command=[
                sys.executable, script, base + server.pgdata, waldir, base + inst.mountpoints[1],
                pg_bin("pg_controldata")])
            assert rc != 0
            app = failed_check_recorded(ec2, taken, res, raw, root)
            assert app["stopped"] == [], app
            assert set(source_wal) <= set(os.listdir(server.waldir))  # the source's segment is still there
            source_unchanged(server, wal_link)
            print("failed application check: %s" % app["msg"][:300])
        finally:
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def kill_drill_while_its_server_runs(ec2, scratch, root, set_id, pid_file, marker, timeout=180):
    """playbooks/drill.yml started and SIGKILLed (the playbook, its workers and the app_recover module: the drill's
    processes, found from the playbook's PID) once the private server it started on the scratch copy runs (its marker
    and pid file on the copy, the PID alive), never the server itself. Returns (the server's PID, the scratch volumes
    the killed drill left, counted at the endpoint)."""
    variables = {"drill_hosts": "localhost", "drill_become": False, "restore_drill_instance_id": scratch.instance_id,
                 "restore_drill_set_id": set_id, "restore_drill_by_id_dir": scratch.by_id_dir,
                 "restore_drill_root": root, "restore_drill_aws_endpoint_url": ec2.url,
                 "restore_drill_aws_region": ec2.region, "restore_drill_device_timeout": 30}
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
           "ansible_python_interpreter=%s" % sys.executable, DRILL, "-e", json.dumps(variables)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(ec2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    leftover = None
    try:
        deadline = time.monotonic() + timeout
        while leftover is None:
            assert proc.poll() is None, "the drill ended before its server ran"
            assert time.monotonic() < deadline, "no private server within %d s" % timeout
            try:
                with open(pid_file) as handle:
                    pid = int(handle.readline())
                if os.path.exists(marker) and alive(pid):
                    leftover = pid
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        # ansible's workers run in their own sessions: the playbook's process group, then every process below it
        # except the server (and anything working on the copy, which only the server does)
        tree = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:
            if pid != leftover and not working_under(root, [pid]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    finally:
        if leftover is None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    left = sorted(v["VolumeId"] for v in drill_volumes(ec2, set_id))
    return leftover, left


def rerun_stops_the_leftover_first(ec2, scratch, root, taken, leftover, left, marker):
    """The killed drill's server and marker still on the copy; the re-run stops that server by its PID (the first
    changing step), takes the leftover copy down, detaches and deletes the leftover volumes, then drills the set
    anew and passes; nothing is left (volumes at the endpoint, mounts, processes under the root). Returns
    (the stop's record, the re-run's results, its raw stats)."""
    time.sleep(2)
    before = (os.path.exists(marker), alive(leftover))
    assert before == (True, True), "the killed drill's server and its marker should be left on the copy"
    ec2.clear_calls()
    _v, (rc, res, raw) = drill(ec2, scratch, root, taken["set_id"])
    assert rc == 0, failed(res)
    stops = task(res, LEFTOVER_APPS)
    assert len(stops["results"][0]["stopped"]) == 1, (stops["results"][0], before)
    [stopped] = stops["results"][0]["stopped"]
    assert stopped["pid"] == leftover and not alive(leftover)
    assert sorted(task(res, LEFTOVERS)["removed"]) == left
    calls = [c["action"] for c in ec2.calls()]
    assert "DetachVolume" in calls and "DeleteVolume" in calls
    assert all(v["result"] == "pass" and v["checks"]["application"].startswith("passed: ")
               for v in verdicts(ec2, taken["snapshot_ids"]).values())
    assert raw["global_custom_stats"]["stillpoint_drills"]["localhost"]["result"] == "pass"
    assert drill_volumes(ec2) == [] and under(root) == [] and working_under(root) == []
    return stopped, res, raw


def test_drill_killed_while_its_server_runs_then_rerun_stops_it_first(ec2, source):
    inst, server, writer, taken = source
    wal_link = os.readlink(os.path.join(server.pgdata, "pg_wal"))
    root = drill_root()
    marker = root + "/" + taken["set_id"] + inst.mountpoints[0] + "/.stillpoint-drill-app/server.json"
    pid_file = root + "/" + taken["set_id"] + server.pgdata + "/postmaster.pid"
    with EmulatedInstance(ec2, n=1, local=True) as scratch:
        leftover = None
        try:
            leftover, left = kill_drill_while_its_server_runs(ec2, scratch, root, taken["set_id"], pid_file, marker)
            assert len(left) == 2
            stopped, _res, _raw = rerun_stops_the_leftover_first(ec2, scratch, root, taken, leftover, left, marker)
            source_unchanged(server, wal_link)
            print("\nkilled drill's server PID %d stopped by the re-run (%s, %.0f ms), leftovers %s removed"
                  % (leftover, ", ".join(stopped["signals"]), stopped["ms"], ", ".join(left)))
        finally:
            if leftover is not None and alive(leftover):
                os.kill(leftover, signal.SIGQUIT)
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
