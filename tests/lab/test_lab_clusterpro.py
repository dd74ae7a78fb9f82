# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seed 001 in the lab: both CLUSTERPRO roles end to end on two Linux guests, the FAKE CLUSTERPRO and DRBD.

Two instances at the strict EC2 endpoint, server1 and server2, each with one 1 GiB EBS volume at
/dev/sdf, joined by a lab wire. CLUSTERPRO is the FAKE CLUSTERPRO (tests/fakes/clusterpro, not NEC
software): its commands run in the guests and reach one cluster state on the host
(tests/lab/clusterpro_hub.py). Its mirror disk md1 is carried by DRBD r0 on the two volumes, mounted
at md1's mount point where md1 is active; exec1 (the business) is a loop appending records there.

1. clusterpro_backup.yml on server1 while exec1 writes: md1 stopped (exec1 with it), server2 shut down
   by clpdown (the guest powers off; EC2 reports it stopped), md1 and exec1 started again, server2's
   volume snapshotted, server2 started, DRBD resyncs only what exec1 wrote meanwhile; the fake records
   a differential recovery.
2. The data destroyed on both servers (deleted on the active one, replicated to the other), then
   clusterpro_restore.yml: both volumes from the set's one snapshot, md1 added back without initial
   mirror construction (proved from EC2): DRBD copies nothing; the data is the backup's on server1,
   and on server2 after a switchover.
"""

import json
import time
from urllib.parse import urlparse

import pytest

from tests.lab.clusterpro_hub import GUEST_PORT, ClusterHub
from tests.lab.conftest import record_timing
from tests.lab.guest import appender
from tests.lab.world import LabWorld, fs_metadata_kib
from tests.support.world import ROOT, failures, run_playbook

pytestmark = pytest.mark.lab

HERE = "test_lab_clusterpro"
APP = ("exec1", appender.command("APPLOG", size=65536, interval=0.1).replace("APPLOG", "%(log)s"))
STATE = {}


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("labclp")
    w = LabWorld(workdir, image=lab_image, pending_seconds=0.5)
    w.start()
    hub = None
    try:
        s1 = w.instance("server1", volumes=[{"size": 1, "device": "/dev/sdf"}])
        s2 = w.instance("server2", volumes=[{"size": 1, "device": "/dev/sdf"}])
        w.link(s1, s2)
        hub = ClusterHub(workdir, {"server1": s1, "server2": s2}, app=APP)
        port = hub.listen()
        for inst in (s1, s2):
            inst.vm.forward(GUEST_PORT, port)
        t0 = time.monotonic()
        w.boot()
        record_timing(HERE, "boot 2 linked VMs (1 volume each) to SSH", time.monotonic() - t0)
        t0 = time.monotonic()
        ec2_port = urlparse(w.endpoint.url).port
        for name, inst in (("server1", s1), ("server2", s2)):
            inst.write_aws_credentials()
            hub.install_guest(name, ec2_port)
        hub.bring_up()
        s1.vm.ssh("clpgrp -s failover")  # through the relay: md1 Primary and mounted on server1, exec1 writing
        s1.vm.ssh("head -c 16M /dev/urandom > %s/payload && sync" % hub.mount)
        STATE["payload"] = _sum(s1, hub)
        STATE["fs_metadata_kib"] = fs_metadata_kib(s1.vm, hub.mount)
        hub.start_bridge(w.endpoint)
        record_timing(HERE, "DRBD r0 under md1, the fake's commands in both guests, group started",
                      time.monotonic() - t0)
        w.inventory(str(workdir) + "/inventory.yml")
        w.hub = hub
        yield w
    finally:
        t0 = time.monotonic()
        if hub is not None:
            hub.stop()
        w.stop()
        record_timing(HERE, "teardown (2 VMs by PID, endpoint, hub)", time.monotonic() - t0)


def _sum(inst, hub, name="payload"):
    return inst.vm.ssh("sha256sum %s/%s | cut -d' ' -f1" % (hub.mount, name)).stdout.strip()


def _servers(world):
    return [{"server": i.name, "instance_id": i.instance_id, "volume_id": i.volume_ids[0]} for i in world.instances]


def _playbook(world, name, extravars):
    extravars = dict({"clusterpro_hosts": "server1", "clusterpro_become": False}, **extravars)
    rc, _results, data = run_playbook("%s/playbooks/%s" % (ROOT, name), world.endpoint, extravars=extravars,
                                      inventory=world.workdir + "/inventory.yml", timeout=900,
                                      env={"ANSIBLE_PIPELINING": "True"})
    assert rc == 0, "\n".join(world.hub.errors + [failures(data)])
    return data


def _log(world, since=0):
    with open(world.hub.path) as f:
        return json.load(f)["log"][since:]


def test_backup_by_standby_shutdown_resyncs_only_what_changed(world, lab_timer):
    hub = world.hub
    s1, s2 = world.instances
    since = len(_log(world))
    app_events = len(hub.measured["app"])
    active, standby = _servers(world)
    with lab_timer("clusterpro_backup.yml (stop md1, clpdown server2, start md1, snapshot, start server2, recovery)"):
        data = _playbook(world, "clusterpro_backup.yml", {
            "clusterpro_mirror_backup_active": active, "clusterpro_mirror_backup_standby": standby,
            "clusterpro_mirror_backup_aws_endpoint_url": world.endpoint.url,
            "clusterpro_mirror_backup_aws_region": world.endpoint.region,
            "clusterpro_mirror_backup_poll_interval": 1, "clusterpro_mirror_backup_rejoin_delay": 2,
            "clusterpro_mirror_backup_rejoin_retries": 150})
    assert hub.errors == []
    stats = data["global_custom_stats"]["stillpoint_clusterpro_sets"]
    set_id = stats["md1"]
    client = world.endpoint.client()
    snaps = client.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    assert [s["VolumeId"] for s in snaps] == s2.volume_ids  # the standby's volume, one snapshot
    tags = dict((t["Key"], t["Value"]) for t in snaps[0]["Tags"])
    assert tags["stillpoint:level"] == "filesystem" and tags["stillpoint:procedure"] == "clusterpro-standby"
    # what happened in the cluster: the standby shut down by CLUSTERPRO, back after EC2 started it,
    # and a differential mirror recovery - never a full copy
    log = _log(world, since)
    kinds = [(e["event"], e.get("server") or e.get("target")) for e in log if e["event"] != "command"]
    assert ("shutdown", "server2") in kinds and ("boot", "server2") in kinds, kinds
    recoveries = [e for e in log if e["event"] in ("mirror_recovery", "initial_construction")]
    assert [(e["event"], e["mode"], e["target"]) for e in recoveries] == [("mirror_recovery", "differential", "server2")]
    # the guest powered itself off (clpdown) and EC2 reported the instance stopped: the endpoint saw the shutdown
    (inst,) = world.endpoint.qemu_instances(s2.instance_id)
    assert any(e["op"] == "guest-shutdown" and e["state_was"] == "running" for e in inst["events"]), inst["events"]
    # the standby's copy is the filesystem as exec1 left it when md1 stopped (step 1)
    stops = [e for e in hub.measured["app"][app_events:] if e["op"] == "stop"]
    assert stops and stops[0]["server"] == "server1" and stops[0]["log_bytes"] > 0, hub.measured["app"]
    # DRBD's own counts: while server2 was away exec1 wrote, and only that was resynced. How much exec1
    # wrote depends on how long server2 was away (longer on a loaded machine), so the bound is what its
    # log grew by since md1 stopped, plus XFS's own metadata and log blocks, never a fixed share
    (rec,) = hub.measured["recoveries"]
    size_kib = 320 * 1024
    slack_kib = STATE["fs_metadata_kib"]
    written_kib = (rec["app_log_bytes"] - stops[0]["log_bytes"]) // 1024
    assert 0 < rec["out_of_sync_kib_before"] <= written_kib + slack_kib < size_kib, (rec, written_kib, slack_kib)
    # what server2 received: the resync, and exec1's writes replicated until the mirror was in sync again
    written_kib = (rec["app_log_bytes_synced"] - stops[0]["log_bytes"]) // 1024
    assert 0 < rec["received_kib"] <= written_kib + slack_kib < size_kib, (rec, written_kib, slack_kib)
    STATE.update(set_id=set_id, app_bytes_at_backup=stops[0]["log_bytes"], recovery=rec)
    record_timing(HERE, "standby back: out of sync %d KiB of %d KiB, DRBD resync received %d KiB (%.1f s)"
                  % (rec["out_of_sync_kib_before"], size_kib, rec["received_kib"], rec["seconds"]), 0.0)
    state1, state2 = hub.proc("server1")["state"], hub.proc("server2")["state"]
    assert state1.startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate"), state1
    assert state2.startswith("cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate"), state2
    assert _sum(s1, hub) == STATE["payload"]


def test_restore_both_servers_from_one_set_without_a_full_copy(world, lab_timer):
    if "set_id" not in STATE:
        pytest.skip("needs the backup of the previous test")
    hub = world.hub
    s1, s2 = world.instances
    # disaster on both servers: deleted on the active one, DRBD replicates the deletion to the standby
    s1.vm.ssh("rm -f %s/payload %s/app.log && sync" % (hub.mount, hub.mount))
    assert hub.proc("server2")["state"].startswith("cs:Connected ro:Secondary/Primary ds:UpToDate/UpToDate")
    since = len(_log(world))
    app_events = len(hub.measured["app"])
    with lab_timer("clusterpro_restore.yml (2 volumes from the set, md1 removed and added back, no construction copy)"):
        data = _playbook(world, "clusterpro_restore.yml", {
            "clusterpro_mirror_restore_set_id": STATE["set_id"],
            "clusterpro_mirror_restore_saved_definition": "/root/md1-definition.json",
            "clusterpro_mirror_restore_aws_endpoint_url": world.endpoint.url,
            "clusterpro_mirror_restore_aws_region": world.endpoint.region,
            "clusterpro_mirror_restore_poll_interval": 0.5, "clusterpro_mirror_restore_rejoin_delay": 1})
    assert hub.errors == []
    log = _log(world, since)
    copies = [e for e in log if e["event"] in ("mirror_recovery", "initial_construction")]
    assert [(e["event"], e["mode"]) for e in copies] == [("initial_construction", "skipped")], copies
    assert copies[0]["copies_identical"] is True
    (built,) = hub.measured["constructions"]
    STATE["construction"] = built
    record_timing(HERE, "restore: initial construction %s, DRBD received %d KiB on %s"
                  % (built["mode"], built["received_kib"], built["target"]), 0.0)
    assert built["mode"] == "skipped" and built["received_kib"] == 0, built
    # both servers' volumes at /dev/sdf are copies of the set's one snapshot
    client = world.endpoint.client()
    snap = client.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [STATE["set_id"]]}])[
        "Snapshots"][0]["SnapshotId"]
    for inst in (s1, s2):
        maps = client.describe_instances(InstanceIds=[inst.instance_id])["Reservations"][0]["Instances"][0][
            "BlockDeviceMappings"]
        vol = [m["Ebs"]["VolumeId"] for m in maps if m["DeviceName"] == "/dev/sdf"][0]
        assert client.describe_volumes(VolumeIds=[vol])["Volumes"][0]["SnapshotId"] == snap
    # the data is back on server1: the payload, and exec1's log as it was when md1 stopped at backup time
    assert _sum(s1, hub) == STATE["payload"]
    starts = [e for e in hub.measured["app"][app_events:] if e["op"] == "start"]
    assert starts and starts[0]["server"] == "server1", hub.measured["app"]
    assert starts[0]["log_bytes"] == STATE["app_bytes_at_backup"], (starts[0], STATE["app_bytes_at_backup"])
    # ... and on server2: seed 001 step 6, switch the group over (through the fake's commands in the guest)
    with lab_timer("switchover to server2 (clpgrp -t, clpgrp -s -h server2)"):
        s1.vm.ssh("clpgrp -t failover && clpgrp -s failover -h server2")
    assert hub.errors == []
    assert _sum(s2, hub) == STATE["payload"]
    state2 = hub.proc("server2")["state"]
    assert state2.startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate"), state2
