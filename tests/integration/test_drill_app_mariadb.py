# -*- coding: utf-8 -*-
"""The restore drill's application check against a real, private MariaDB (Debian's mariadb-server), no mocks.

The source: an emulated local instance whose MariaDB data directory lies on one loop-device filesystem and its binary
log on another (tests/support/dbservers.py), a writer committing numbered two-table transactions, backed up by
playbooks/backup.yml with the MariaDB quiescer (level ``application``; ``stillpoint:app`` records the binary log
position, the GTID and the server's paths). The drill (playbooks/drill.yml, role restore_drill) then runs on a second
local instance (the scratch instance) against the strict EC2 endpoint:

- the set passes: the copy is restored on scratch volumes, a private ``mariadbd`` (no TCP, a private socket, its pid
  file on the copy, the copy's binary log index repointed at the copy) lets InnoDB recover, ``mariadb-check`` passes,
  the copy's binary log ends at the recorded position and the restored GTID equals the recorded one; the verdict in
  the catalog says ``application: passed`` with ``mariadb-check`` named; the server is stopped (its PID gone, no
  process works under the drill root), every scratch volume is gone (counted at the endpoint), the source server
  still serves (the writer commits on) and its binary log index is unchanged;
- the copy's redo log damaged (the test overwrites the header of the scratch copy's ``ib_logfile0``, never the
  source's, through restore_drill_checksum_command, which runs between the mount and the application check): the
  private server cannot recover, the verdict is ``fail`` with ``application: failed ...``, nothing is left running or
  attached, the source still serves;
- the drill SIGKILLed while its private ``mariadbd`` runs on the scratch copy (started detached in its own session, so
  it outlives the killed module), then re-run: the re-run first stops that server by the pid file and marker on the
  copy (its PID gone), takes the leftover copy down and deletes the leftover volumes, then drills the set anew and
  records ``pass``; no process works under the drill root, no scratch volume is left (counted at the endpoint), the
  source still commits.

Skipped when the MariaDB server binaries are missing, except under CI (CI=true), where that fails.
"""

import os
import shutil
import signal
import sys

import pytest

from tests.integration.test_app_mariadb import backup
from tests.integration.test_drill import changing_calls
from tests.integration.test_drill import drill_volumes
from tests.integration.test_drill import failed
from tests.integration.test_drill import under
from tests.integration.test_drill import unmount_under
from tests.integration.test_drill_app import APP
from tests.integration.test_drill_app import LEFTOVER_APPS
from tests.integration.test_drill_app import alive
from tests.integration.test_drill_app import drill
from tests.integration.test_drill_app import drill_root
from tests.integration.test_drill_app import failed_check_recorded
from tests.integration.test_drill_app import kill_drill_while_its_server_runs
from tests.integration.test_drill_app import passed_check_recorded
from tests.integration.test_drill_app import plan_changes_nothing
from tests.integration.test_drill_app import rerun_stops_the_leftover_first
from tests.integration.test_drill_app import working_under
from tests.support.dbservers import MariaDBServer
from tests.support.dbservers import app_tag
from tests.support.dbservers import mariadb_missing
from tests.support.dbservers import serving
from tests.support.world import EmulatedInstance
from tests.support.world import task

MISSING = mariadb_missing()
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError("CI=true and the MariaDB drill tests cannot run: %s" % MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

DAMAGE_REDO = """import os, subprocess, sys
redo, mount = sys.argv[1:3]
subprocess.run(["mount", "-o", "remount,rw", mount], check=True)
with open(redo, "r+b") as handle:
    handle.write(os.urandom(12288))  # the header and both checkpoint blocks
print("damaged", redo)
"""


@pytest.fixture
def source(ec2):
    """The source instance with a running MariaDB (data and binary log on two volumes), a writer, and an
    application-level set of it."""
    with EmulatedInstance(ec2, n=2, size_mb=256, layout="filesystems", local=True) as inst:
        data_mnt, log_mnt = inst.mountpoints
        server = MariaDBServer(os.path.join(data_mnt, "mysql"), os.path.join(log_mnt, "binlog"))
        with serving(server, lambda: server.install().start()) as writer:
            taken, inst.backup_s = backup(ec2, inst, server, "mariadb-drill", application=True)
            assert taken["level"] == "application" and taken["application"]["confirmed"] is True, taken
            yield inst, server, writer, taken
            writer.wait_for(len(writer.done) + 20, timeout=30)  # the source serves after the drills
            writer.finish()


def source_unchanged(server, index_text, served):
    with open(os.path.join(server.binlog_dir, "bin.index")) as handle:
        assert handle.read() == index_text
    assert server.sql("SELECT 1")[1].strip() == "1"
    assert server.proc is not None and server.proc.poll() is None  # the source's own mariadbd, never signalled
    assert len(server.rows("a")) > served


def test_drill_checks_mariadb_on_a_private_server(ec2, source):
    inst, server, writer, taken = source
    record, level = app_tag(ec2, taken["set_id"])
    assert level == "application"
    # what the quiescer recorded for the drill: the server's paths, read from the running server
    assert record["paths"] == {"data_directory": server.datadir,
                               "log_bin_basename": os.path.join(server.binlog_dir, "bin")}, record
    assert record["innodb"] == {"page_size": 16384, "log_file_size": 8 << 20}, record
    assert "MariaDB" in record["server_version"] and record["binlog_file"] == "bin.000001", record
    with open(os.path.join(server.binlog_dir, "bin.index")) as handle:
        index_text = handle.read()
    assert server.binlog_dir in index_text  # absolute entries: the copy's must be repointed
    root = drill_root()
    with EmulatedInstance(ec2, n=1, local=True) as scratch:
        try:
            plan_changes_nothing(ec2, scratch, root, taken["set_id"], "mariadb")

            served = len(writer.done)
            _v, (rc, res, raw) = drill(ec2, scratch, root, taken["set_id"])
            assert rc == 0, failed(res)
            app = task(res, APP)
            assert app["changed"] is True and app["check"]["status"] == "passed", app
            assert app["check"]["tool"] == "mariadb-check" and app["check"]["tables_ok"] >= 3, app["check"]
            pos, rec = app["position"], app["recovery"]
            assert pos["matches"] is True and pos["problems"] == [], pos
            assert pos["restored"]["binlog_position"] == record["binlog_position"], pos
            assert pos["restored"]["gtid"] == record["gtid"], pos
            assert rec["source"] == "log" and rec["crash_recovery"] is True, rec
            assert rec["log_file"].startswith(root + "/" + taken["set_id"] + "/")
            # the private server: on the copy, its index repointed, started detached, stopped by its PID
            whats = [a["what"] for a in app["actions"]]
            assert any(w.startswith("repoint the copy's binary log index %s/%s" % (root, taken["set_id"]))
                       for w in whats), whats
            assert any(w.startswith("start the server detached (PID ") for w in whats), whats
            [stopped] = app["stopped"]
            assert stopped["pid_file"].startswith(root + "/" + taken["set_id"] + "/")
            assert stopped["signals"] == ["SIGTERM"] and not alive(stopped["pid"])
            assert stopped["kind"] == "mariadb" and working_under(root) == []
            started = [a for a in app["actions"] if a["what"].startswith("start the server detached")][0]["cmd"]
            assert "--skip-networking" in started and "--no-defaults" == started[1], started
            assert "--log-bin=%s/%s%s/bin" % (root, taken["set_id"], server.binlog_dir) in started, started
            # the verdict in the catalog
            report, members = passed_check_recorded(ec2, taken, raw, "mariadb")
            for _value, text in members:
                assert "mariadb-check passed" in text and "position matches" in text, text
                assert "%s:%s" % (record["binlog_file"], record["binlog_position"]) in text, text
            # nothing left: volumes (endpoint), mounts, processes; the source untouched and serving
            assert drill_volumes(ec2) == [] and under(root) == []
            assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
            source_unchanged(server, index_text, served)
            print("\n" + "\n".join(task(res, "Report the drill")["msg"]))
            print("application check: ready %.0f ms, redo LSN %s..%s (%s bytes), mariadb-check %.0f ms (%d tables), "
                  "stop %.0f ms; phases %s; backup.yml %.1f s"
                  % (app["ready_ms"], rec["start_lsn"], rec["end_lsn"], rec["bytes"], app["check"]["ms"],
                     app["check"]["tables_ok"], stopped["ms"], report["phases"], inst.backup_s))

            # the copy's redo log damaged: InnoDB cannot recover, the check fails, everything still goes
            script = os.path.join(root, "damage.py")
            with open(script, "w") as handle:
                handle.write(DAMAGE_REDO)
            base = root + "/" + taken["set_id"]
            served = len(writer.done)
            _v, (rc, res, raw) = drill(ec2, scratch, root, taken["set_id"], restore_drill_checksum_command=[
                sys.executable, script, base + server.datadir + "/ib_logfile0", base + inst.mountpoints[0]])
            assert rc != 0
            app = failed_check_recorded(ec2, taken, res, raw, root)
            assert "InnoDB" in app["msg"], app["msg"]
            source_unchanged(server, index_text, served)
            print("failed application check: %s" % app["msg"][:400])
        finally:
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def test_drill_killed_while_its_mariadbd_runs_then_rerun_stops_it_first(ec2, source):
    inst, server, writer, taken = source
    with open(os.path.join(server.binlog_dir, "bin.index")) as handle:
        index_text = handle.read()
    root = drill_root()
    run_dir = root + "/" + taken["set_id"] + inst.mountpoints[0] + "/.stillpoint-drill-app"
    marker, pid_file = run_dir + "/server.json", run_dir + "/mariadbd.pid"
    with EmulatedInstance(ec2, n=1, local=True) as scratch:
        leftover = None
        try:
            served = len(writer.done)
            leftover, left = kill_drill_while_its_server_runs(ec2, scratch, root, taken["set_id"], pid_file, marker)
            assert len(left) == 2
            # check mode after the kill plans the cleanup and touches nothing: the server runs on, the volumes stay
            ec2.clear_calls()
            _v, (rc, res, _raw) = drill(ec2, scratch, root, taken["set_id"], check=True)
            assert rc == 0, failed(res)
            assert changing_calls(ec2) == [] and alive(leftover) and os.path.exists(marker)
            planned = task(res, LEFTOVER_APPS)["results"][0]
            assert planned["stopped"] == [] and [p["pid_file"] for p in planned["planned"]] == [pid_file], planned
            plan = task(res, "Report the drill")["msg"]
            assert "first remove the leftovers" in plan and all(v in plan for v in left), plan
            assert sorted(v["VolumeId"] for v in drill_volumes(ec2, taken["set_id"])) == left
            stopped, res, raw = rerun_stops_the_leftover_first(ec2, scratch, root, taken, leftover, left, marker)
            assert stopped["kind"] == "mariadb" and stopped["signals"] == ["SIGTERM"], stopped
            assert stopped["data_directory"] == root + "/" + taken["set_id"] + server.datadir, stopped
            # the re-run's own server: started, checked and stopped like any drill's, on fresh scratch volumes
            app = task(res, APP)
            assert app["check"]["status"] == "passed" and app["position"]["matches"] is True, app
            [own] = app["stopped"]
            assert own["pid"] != leftover and not alive(own["pid"])
            assert not any(v in left for v in raw["global_custom_stats"]["stillpoint_drills"]["localhost"]["removed"])
            source_unchanged(server, index_text, served)
            print("\nkilled drill's mariadbd PID %d stopped by the re-run (%s, %.0f ms), leftovers %s removed; "
                  "the re-run's check: %s" % (leftover, ", ".join(stopped["signals"]), stopped["ms"], ", ".join(left),
                                              app["summary"][:160]))
        finally:
            if leftover is not None and alive(leftover):
                os.kill(leftover, signal.SIGKILL)
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
