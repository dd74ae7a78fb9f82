# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL on md RAID0 + LVM + XFS in a guest: backup.yml with the quiescer under load, disaster, restore.yml.

One lab VM (an instance at the strict EC2 endpoint) with two 1 GiB EBS volumes (NVMe, found by volume id) as an
md RAID0, one LVM volume group on it and two XFS logical volumes: PGDATA on one, pg_wal on the other (``initdb
--waldir``: pg_wal is a symlink from PGDATA). The cluster is Debian's PostgreSQL 15 from the guest image (whose
package cluster is dropped at build), our own ``initdb`` started by ``pg_ctl`` as ``postgres`` on a unix socket
only; root connects as role ``root`` by peer authentication. A writer in the guest (tests/support/dbwriter.py on a
``psql`` session) commits numbered transactions, one row in ``a`` and one in ``b``, and logs when each commit
returned (guest epoch, the module's clock).

backup.yml runs in host mode with ``array_backup_application: postgresql`` while the writer commits; then the
server is stopped and PGDATA and pg_wal are deleted; restore.yml with ``array_restore_application: postgresql``
swaps in the set's volumes, assembles md and LVM, mounts, and app_recover starts the server with ``pg_ctl start``,
waits for the crash recovery, runs pg_amcheck and compares pg_control and the server log with the catalog's
record. Over SSH the test then checks: the server answers out of recovery, rows are exactly 1..k in both tables,
k lies between the writer's count when the quiescer was ready and when it released.
"""

import json
import os
import shlex
import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.world import GUEST_EC2_URL, GUEST_IMDS_URL, LabWorld
from tests.support import dbwriter
from tests.support.dbservers import app_tag, lsn
from tests.support.world import ROOT, failures, run_playbook, task

pytestmark = pytest.mark.lab

HERE = "test_lab_postgresql"
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
APP = "Start the application, wait for its recovery, check it and compare it with the catalog's record"
BIN = "/usr/lib/postgresql/15/bin"
MNT_DATA, MNT_WAL = "/srv/pg", "/srv/pgwal"
PGDATA, WALDIR = MNT_DATA + "/data", MNT_WAL + "/wal"
RUN = "/run/pglab"  # the socket directory (on the root filesystem: not part of the set)
LOG = "/var/log/pglab/server.log"
PORT = 5432
SETTINGS = ("-k %s -p %d -c listen_addresses='' -c shared_buffers=32MB -c checkpoint_timeout=1h -c max_wal_size=1GB "
            "-c log_checkpoints=on -c logging_collector=off" % (RUN, PORT))
START = ["runuser", "-u", "postgres", "--", BIN + "/pg_ctl", "start", "-W", "-D", PGDATA, "-l", LOG, "-o", SETTINGS]
PSQL = [BIN + "/psql", "-X", "-A", "-t", "-q", "-h", RUN, "-p", str(PORT), "-d", "w"]
WRITER_LOG, WRITER_STOP, WRITER_ERR = "/root/pgwriter.log", "/root/pgwriter.stop", "/root/pgwriter.err"
WRITER_NICE = 10  # nice(1) of the guest writer (psql and its driver)

# the guest side of the writer: tests/support/dbwriter.py's Writer (shipped beside it), its commits appended to a
# log as "n epoch" lines until a stop file appears
DRIVER = r"""import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbwriter
log, stop = sys.argv[1], sys.argv[2]
w = dbwriter.Writer(sys.argv[3:])
w.start()
written = 0
with open(log, "a") as f:
    while True:
        alive = w.is_alive() and not os.path.exists(stop)
        done = w.done[written:]
        f.write("".join("%d %.6f\n" % item for item in done))
        f.flush()
        written += len(done)
        if not alive:
            break
        time.sleep(0.05)
    w.finish()
    done = w.done[written:]
    f.write("".join("%d %.6f\n" % item for item in done))
"""


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    w = LabWorld(tmp_path_factory.mktemp("labpg"), image=lab_image, pending_seconds=0.5)
    w.start()
    try:
        inst = w.instance("vmpg", volumes=[{"size": 1, "device": "/dev/sdf"}, {"size": 1, "device": "/dev/sdg"}])
        t0 = time.monotonic()
        w.boot()
        record_timing(HERE, "boot 1 VM (2 volumes) to SSH", time.monotonic() - t0)
        inst.write_aws_credentials()
        t0 = time.monotonic()
        disks = [inst.devices_for_volume(v)[0] for v in inst.volume_ids]
        inst.vm.ssh(
            "set -e; mdadm --create /dev/md0 --run --level=0 --chunk=64 --raid-devices=2 %s %s"
            " && pvcreate -q /dev/md0 && vgcreate -q data /dev/md0"
            " && lvcreate -q -y -n pgdata -L 1G data && lvcreate -q -y -n wal -l 100%%FREE data"
            " && mkfs.xfs -q -f /dev/data/pgdata && mkfs.xfs -q -f /dev/data/wal"
            " && mkdir -p %s %s && mount /dev/data/pgdata %s && mount /dev/data/wal %s"
            % (disks[0], disks[1], MNT_DATA, MNT_WAL, MNT_DATA, MNT_WAL))
        record_timing(HERE, "mdadm RAID0 + LVM (2 LVs) + 2 mkfs.xfs, members by volume id", time.monotonic() - t0)
        t0 = time.monotonic()
        inst.vm.ssh(
            "set -e; install -d -o postgres -g postgres %s %s %s %s && touch %s && chown postgres: %s"
            " && cd / && runuser -u postgres -- %s/initdb -D %s --waldir %s -U postgres --auth-local=peer"
            " --auth-host=reject --no-instructions -E UTF8 --locale=C >/dev/null"
            " && runuser -u postgres -- %s"
            % (RUN, os.path.dirname(LOG), PGDATA, WALDIR, LOG, LOG, BIN, PGDATA, WALDIR,
               shlex.join(START[4:6] + ["-w", "-t", "120"] + START[7:])))
        sql(inst.vm, "CREATE ROLE root SUPERUSER LOGIN", db="postgres", user="postgres")
        sql(inst.vm, "CREATE DATABASE w", db="postgres")
        sql(inst.vm, "CREATE TABLE a (n int PRIMARY KEY); CREATE TABLE b (n int PRIMARY KEY)")
        record_timing(HERE, "initdb (PGDATA and --waldir on the two LVs), pg_ctl start, tables", time.monotonic() - t0)
        w.inventory(str(w.workdir) + "/inventory.yml")
        yield w
    finally:
        t0 = time.monotonic()
        w.stop()
        record_timing(HERE, "teardown (VM by PID, endpoint)", time.monotonic() - t0)


def sql(vm, statement, db="w", user=None, check=True):
    argv = PSQL[:-1] + [db, "-v", "ON_ERROR_STOP=1", "-c", statement]
    cmd = shlex.join(argv)
    if user:
        cmd = "cd / && runuser -u %s -- %s" % (user, cmd)
    return vm.ssh(cmd, check=check).stdout


def _playbook(world, name, extravars):
    return run_playbook("%s/playbooks/%s" % (ROOT, name), world.endpoint, extravars=extravars,
                        inventory=world.workdir + "/inventory.yml", timeout=900, env={"ANSIBLE_PIPELINING": "True"})


def _commits(vm):
    """The writer's log: [(n, guest epoch when its COMMIT returned)]."""
    out = vm.ssh("cat %s 2>/dev/null" % WRITER_LOG, check=False).stdout
    return [(int(n), float(t)) for n, t in (line.split() for line in out.splitlines() if line.strip())]


def _count_at(done, epoch):
    return max([n for n, t in done if t <= epoch] or [0])


def _wait_commits(vm, count, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        done = _commits(vm)
        if len(done) >= count:
            return done
        err = vm.ssh("cat %s" % WRITER_ERR, check=False).stdout
        assert time.monotonic() < deadline and "Traceback" not in err, "writer at %d commits: %s" % (len(done), err)
        time.sleep(1)


def _stop_writer(vm, timeout=60):
    vm.ssh("touch %s" % WRITER_STOP)
    deadline = time.monotonic() + timeout
    while vm.ssh("pgrep -f '[p]gwriter.py'", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the writer did not stop"
        time.sleep(0.5)
    err = vm.ssh("cat %s" % WRITER_ERR, check=False).stdout
    assert "Traceback" not in err, err
    return _commits(vm)


def test_postgresql_on_md_lvm_backup_under_load_disaster_restore(world, lab_timer):
    inst = world.instances[0]
    vm = inst.vm
    assert vm.ssh("readlink %s/pg_wal" % PGDATA).stdout.strip() == WALDIR
    assert vm.ssh("findmnt -n -o SOURCE --target %s; findmnt -n -o SOURCE --target %s" % (PGDATA, WALDIR)
                  ).stdout.split() == ["/dev/mapper/data-pgdata", "/dev/mapper/data-wal"]

    with open(dbwriter.__file__, "rb") as f:
        vm.ssh("cat > /root/dbwriter.py", input=f.read())
    vm.ssh("cat > /root/pgwriter.py", input=DRIVER)
    # niced: on one TCG vCPU an unthrottled writer starves the modules of the play (the server itself is not niced)
    vm.ssh("rm -f %s %s %s; cd /root && setsid -f nice -n %d python3 /root/pgwriter.py %s %s %s >%s 2>&1 </dev/null"
           % (WRITER_LOG, WRITER_STOP, WRITER_ERR, WRITER_NICE, WRITER_LOG, WRITER_STOP, shlex.join(PSQL), WRITER_ERR))
    try:
        before = len(_wait_commits(vm, 30))
        with lab_timer("backup.yml (host mode, application postgresql, md + LVM + 2 XFS, writer running)"):
            t0 = time.monotonic()
            rc, results, data = _playbook(world, "backup.yml", {
                "backup_hosts": "vmpg", "array_backup_mountpoints": [MNT_DATA, MNT_WAL],
                "array_backup_aws_endpoint_url": GUEST_EC2_URL, "array_backup_imds_endpoint": GUEST_IMDS_URL,
                "array_backup_poll_interval": 1, "array_backup_keep_last": 0,  # one set: no retention task
                "array_backup_application": "postgresql",
                "array_backup_application_login_user": "root", "array_backup_application_login_unix_socket": RUN,
                "array_backup_application_login_port": PORT, "array_backup_lock_wait_timeout": 30})
            backup_s = time.monotonic() - t0
        assert rc == 0, failures(data)
        after = len(_commits(vm))
        assert after >= before + 10, (before, after)  # the writer kept committing while backup.yml ran
        _wait_commits(vm, after + 10)
    finally:
        done = _stop_writer(vm)
    taken = task(results, TAKE)
    assert taken["state"] == "complete" and taken["level"] == "application", taken
    app = taken["application"]
    assert app["confirmed"] is True and app["lock"] == "checkpoint", app
    assert len(world.endpoint.calls("CreateSnapshots")) == 1
    set_id = taken["set_id"]
    k_lock, k_release = _count_at(done, app["locked_at"]), _count_at(done, app["released_at"])
    assert 0 < k_lock <= k_release < len(done), (k_lock, k_release, len(done))
    record, level = app_tag(world.endpoint, set_id)
    assert level == "application" and record["confirmed"] is True, (level, record)
    for key in ("checkpoint_lsn", "redo_lsn", "timeline", "wal_lsn_before_freeze", "wal_lsn_after_thaw"):
        assert record[key] == app["recorded"][key], key
    assert lsn(record["redo_lsn"]) <= lsn(record["checkpoint_lsn"]) < lsn(record["wal_lsn_before_freeze"]) \
        <= lsn(record["wal_lsn_after_thaw"]), record
    members = sorted(m["volume_id"] for m in taken["members"])
    assert members == sorted(inst.volume_ids), taken["members"]

    # the disaster: the server stopped, PGDATA and pg_wal gone
    vm.ssh("cd / && runuser -u postgres -- %s/pg_ctl stop -m fast -w -D %s >/dev/null && rm -rf %s %s && sync"
           % (BIN, PGDATA, PGDATA, WALDIR))
    assert vm.ssh("ls -A %s %s" % (MNT_DATA, MNT_WAL)).stdout.split() == ["%s:" % MNT_DATA, "%s:" % MNT_WAL]

    # the restore's EC2 calls from the controller (mode controller; the guest proves it is the target from its IMDS),
    # its host steps and the application's recovery in the guest: each EC2 task in a TCG guest costs 8-20 s of boto3
    # and Ansible start-up (lab time); test_lab_md_lvm restores in host mode
    with lab_timer("restore.yml, mode controller (2 volumes hot-plugged, md + LVM up, 2 XFS mounted, pg_ctl start, "
                   "recovery, pg_amcheck)"):
        t0 = time.monotonic()
        rc, results, data = _playbook(world, "restore.yml", {
            "restore_hosts": "vmpg", "array_restore_set_id": set_id, "array_restore_mode": "controller",
            "array_restore_aws_endpoint_url": world.endpoint.url, "array_restore_imds_endpoint": GUEST_IMDS_URL,
            "array_restore_application": "postgresql", "array_restore_application_start_command": START,
            "array_restore_application_login_user": "root", "array_restore_application_login_unix_socket": RUN,
            "array_restore_application_login_port": PORT, "array_restore_application_log_file": LOG,
            "array_restore_application_data_directory": PGDATA, "array_restore_application_recovery_timeout": 300,
            "array_restore_hook_timeout": 120})
        restore_s = time.monotonic() - t0
    assert rc == 0, failures(data)
    got = task(results, APP)
    assert got["started"] is True and got["already_running"] is False, got
    check = got["check"]
    assert check["tool"] == "pg_amcheck" and (check["status"] == "passed" or (
        check["status"] == "skipped" and check.get("reason"))), check
    rec = got["recovery"]
    assert rec["source"] == "log" and rec["crash_recovery"] is True, rec
    assert rec["bytes"] == lsn(rec["end_lsn"]) - lsn(rec["start_lsn"]) >= 0, rec
    control = rec["pg_control_before_start"]
    assert control["state"] == "in production", control  # a crash image, as documented
    assert (control["checkpoint_lsn"], control["redo_lsn"], control["timeline"]) == (
        record["checkpoint_lsn"], record["redo_lsn"], record["timeline"]), (control, record)
    assert rec["start_lsn"] == record["redo_lsn"] or record["redo_lsn"] == record["checkpoint_lsn"], (rec, record)
    assert lsn(record["redo_lsn"]) <= lsn(rec["end_lsn"]) < lsn(record["wal_lsn_after_thaw"]), (rec, record)
    pos = got["position"]
    assert pos["matches"] is True and pos["problems"] == [], pos

    # over SSH: the restored volumes, the server up and out of recovery, rows 1..k in both tables
    created = task(results, "Create the volumes from the set in the instance's zone (before any downtime)")
    restored = sorted(v["volume_id"] for v in created["volumes"])
    assert not set(restored) & set(inst.volume_ids), restored
    assert vm.ssh("readlink %s/pg_wal" % PGDATA).stdout.strip() == WALDIR
    assert sql(vm, "SELECT pg_is_in_recovery()").strip() == "f"
    a = [int(x) for x in sql(vm, "SELECT n FROM a ORDER BY n").split()]
    b = [int(x) for x in sql(vm, "SELECT n FROM b ORDER BY n").split()]
    k = len(a)
    assert a == list(range(1, k + 1)), "gap in a"
    assert b == a, "a two-table transaction is half applied"
    assert k_lock <= k <= k_release, (k_lock, k, k_release)
    sql(vm, "INSERT INTO a VALUES (%d); INSERT INTO b VALUES (%d)" % (k + 1, k + 1))  # it takes writes

    figures = ("k=%d (ready %d .. released %d, %d committed in all), checkpoint %s redo %s, WAL %s before the "
               "freeze / %s after the thaw, replayed %s..%s = %d bytes, server ready %.0f ms after its start, "
               "pg_amcheck %s, CHECKPOINT %.0f ms, freeze window %.0f ms, backup.yml %.1f s, restore.yml %.1f s"
               % (k, k_lock, k_release, len(done), record["checkpoint_lsn"], record["redo_lsn"],
                  record["wal_lsn_before_freeze"], record["wal_lsn_after_thaw"], rec["start_lsn"], rec["end_lsn"],
                  rec["bytes"], got.get("ready_ms") or 0, check["status"], app["lock_wait_ms"],
                  taken["freeze_window_ms"], backup_s, restore_s))
    print("\nlab PostgreSQL figures: " + figures)
    # the figures as rows of the lab timings table (0.0 s: not phases)
    record_timing(HERE, "figure: rows k=%d, writer's count at lock %d .. release %d" % (k, k_lock, k_release), 0.0)
    record_timing(HERE, "figure: WAL replayed %s..%s = %d bytes" % (rec["start_lsn"], rec["end_lsn"], rec["bytes"]),
                  0.0)
    where = os.environ.get("STILLPOINT_LAB_CAPTURE")  # as in test_lab_md_lvm: the results, for people
    if where:
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, "postgresql.json"), "w") as f:
            json.dump({"backup": taken, "app_recover": got}, f, indent=1)
