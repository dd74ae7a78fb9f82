# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DRBD 8.4 between two lab VMs on EBS volumes: the three DRBD roles end to end, with DRBD's own counters.

Two instances at the strict EC2 endpoint, vma and vmb, each with one 1 GiB EBS volume at /dev/sdf
(NVMe, EBS serial), joined by a lab wire (10.77.0.1/.2). The DRBD resource r0 uses 320 MiB of each
volume (`disk { size 320M; }`: a full resync then takes seconds, not a minute, under TCG), XFS on
/dev/drbd0 mounted at /srv/data on the Primary. The resync runs at a fixed rate (`c-plan-ahead 0`) and
`c-min-rate 0` keeps DRBD from slowing it to 250 KiB/s while the writer's I/O goes on (its default
throttle: the 21 MiB the split leaves out of sync took 45-87 s with it); what is resynced is the same.

1. drbd_mirror_backup.yml while a writer appends to the Primary: freeze + disconnect + thaw on the
   Primary, snapshot of the Secondary's volume (level filesystem, split time in the catalog), reconnect;
   DRBD resyncs only what was written during the split (its out-of-sync count at reconnect).
2. Disaster on both sides (the payload deleted on the Primary, replicated to the Secondary), then
   drbd_mirror_restore.yml (resync skip): both volumes restored from the set's one snapshot, metadata
   recreated, the initial resync skipped (proved by the catalog): DRBD resyncs 0 KiB; the payload's
   checksum is the backup's. A second run changes nothing. The stock path (resync full: one side
   restored) resyncs the whole device: measured too.
3. Refusals on the live pair: promoting the Secondary while the Primary is Primary; skipping the resync
   with a volume that is not from the set.
4. Seed 003: vma's volume is force-detached (the disk fails: DRBD goes Diskless), a blank volume is
   attached in its place, drbd_disk_replace.yml promotes the survivor first, creates metadata on the new
   disk, resyncs from the survivor, switches back; before that, forcing vma primary is refused.
"""

import json
import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.guest import appender
from tests.lab.world import GUEST_EC2_URL, GUEST_IMDS_URL, LabWorld, fs_metadata_kib
from tests.support.world import ROOT, failures, run_playbook

pytestmark = pytest.mark.lab

HERE = "test_lab_drbd"
MNT = "/srv/data"
RESOURCE = """resource r0 {
  device /dev/drbd0;
  disk /dev/nvme0n1;
  meta-disk internal;
  net { protocol C; }
  disk { size 320M; c-plan-ahead 0; resync-rate 200M; c-min-rate 0; }
  on vma { address 10.77.0.1:7789; }
  on vmb { address 10.77.0.2:7789; }
}
"""
STATE = {}
FULL_KIB = None  # the device size, read from DRBD


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    w = LabWorld(tmp_path_factory.mktemp("labdrbd"), image=lab_image, pending_seconds=0.5)
    w.start()
    try:
        a = w.instance("vma", volumes=[{"size": 1, "device": "/dev/sdf"}])
        b = w.instance("vmb", volumes=[{"size": 1, "device": "/dev/sdf"}])
        w.link(a, b)
        t0 = time.monotonic()
        w.boot()
        record_timing(HERE, "boot 2 linked VMs (1 volume each) to SSH", time.monotonic() - t0)
        t0 = time.monotonic()
        for inst in (a, b):
            inst.write_aws_credentials()
            disk = inst.devices_for_volume(inst.volume_ids[0])[0]
            assert disk == "/dev/nvme0n1", disk  # the resource names it so
            inst.vm.ssh("cat > /etc/drbd.d/r0.res && drbdadm create-md --force r0 && drbdadm up r0",
                        input=RESOURCE.encode())
        # both partitions are fresh zeros: bit-identical, the initial sync may be skipped (LINBIT's guide)
        a.vm.ssh("drbdsetup wait-connect 0 --wfc-timeout=60 --degr-wfc-timeout=60 --outdated-wfc-timeout=60"
                 " && drbdadm new-current-uuid --clear-bitmap r0 && drbdadm primary r0 && mkfs.xfs -q -f /dev/drbd0"
                 " && mkdir -p %s && mount /dev/drbd0 %s" % (MNT, MNT))
        STATE["fs_metadata_kib"] = fs_metadata_kib(a.vm, MNT)
        record_timing(HERE, "create-md, up, skip initial sync, mkfs.xfs", time.monotonic() - t0)
        w.inventory(str(w.workdir) + "/inventory.yml")
        yield w
    finally:
        t0 = time.monotonic()
        w.stop()
        record_timing(HERE, "teardown (2 VMs by PID, endpoint)", time.monotonic() - t0)


def _playbook(world, name, extravars):
    extravars = dict({"drbd_hosts": "lab"}, **extravars)
    rc, _results, data = run_playbook("%s/playbooks/%s" % (ROOT, name), world.endpoint, extravars=extravars,
                                      inventory=world.workdir + "/inventory.yml", timeout=900,
                                      env={"ANSIBLE_PIPELINING": "True"})
    assert rc == 0, failures(data)
    return data


def _results(data, name):
    """{host: result} of the task called ``name`` (a role prefix allowed)."""
    for play in data["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == name or task["task"]["name"].endswith(" : " + name):
                return task["hosts"]
    raise AssertionError("no task %r" % name)


def _changed(data):
    return [t["task"]["name"] for p in data["plays"] for t in p["tasks"] for h in t["hosts"].values()
            if h.get("changed")]


def _proc(inst):
    """The /proc/drbd counters of minor 0 (KiB): ns, nr, oos, and the states."""
    text = inst.vm.ssh("cat /proc/drbd").stdout
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("0:"))
    counters = next(ln for ln in text.splitlines() if ln.strip().startswith("ns:"))
    out = dict(kv.split(":", 1) for kv in counters.split())
    return {"state": line.split(None, 1)[1], "ns": int(out["ns"]), "nr": int(out["nr"]), "oos": int(out["oos"])}


def _sum(inst, name="payload"):
    return inst.vm.ssh("sha256sum %s/%s | cut -d' ' -f1" % (MNT, name)).stdout.strip()


def _module(world, host, module, args, expect_fail=False):
    book = "%s/drbd-%s-%d.yml" % (world.workdir, module, int(time.monotonic() * 1000))
    with open(book, "w") as f:
        json.dump([{"hosts": host, "gather_facts": False, "tasks": [
            {"name": "call", "stillpoint.snapshots.%s" % module: args, "register": "out"}]}], f)
    rc, results, data = run_playbook(book, world.endpoint, inventory=world.workdir + "/inventory.yml", timeout=300,
                                     env={"ANSIBLE_PIPELINING": "True"})
    assert (rc != 0) == expect_fail, failures(data)
    return results["call"]


def test_split_mirror_backup_resyncs_only_the_changes(world, lab_timer):
    a, b = world.instances
    a.vm.ssh("head -c 24M /dev/urandom > %s/payload && sync" % MNT)
    STATE["payload"] = _sum(a)
    # O_DSYNC appends: each write is on both disks before it returns (protocol C), so the split cuts between them
    writer = a.vm.popen(appender.command("%s/during" % MNT, size=65536))
    try:
        with lab_timer("drbd_mirror_backup.yml (split under a freeze, snapshot, reconnect, wait)"):
            data = _playbook(world, "drbd_mirror_backup.yml", {
                "drbd_mirror_backup_resource": "r0", "drbd_mirror_backup_aws_endpoint_url": GUEST_EC2_URL,
                "drbd_mirror_backup_imds_endpoint": GUEST_IMDS_URL, "drbd_mirror_backup_poll_interval": 1})
    finally:
        a.vm.ssh("pkill -f '[d]uring'", check=False)
        writer.kill()
    stats = data["global_custom_stats"]["stillpoint_backup_sets"][0]
    split = _results(data, "Freeze the Primary's filesystems, disconnect, thaw (one process, dead-man thaw)")["vma"]
    assert split["split"]["deadline_thawed"] is False and split["split"]["thaw"]["thawed_by"] == "client"
    assert [m["mountpoint"] for m in split["split"]["freeze"]["mounts"]] == [MNT]
    assert stats["level"] == "filesystem" and stats["state"] == "complete", stats
    sets = world.endpoint.client().describe_snapshots(
        Filters=[{"Name": "tag:stillpoint:set-id", "Values": [stats["set_id"]]}])["Snapshots"]
    assert [s["VolumeId"] for s in sets] == b.volume_ids  # the Secondary's volume, one snapshot
    tags = {t["Key"]: t["Value"] for t in sets[0]["Tags"]}
    array = json.loads("".join(v for k, v in sorted(tags.items()) if k.startswith("stillpoint:array")))
    assert array["kind"] == "drbd" and array["split_time"] == stats["split_time"]
    assert array["primary"] == "vma" and array["secondary"] == "vmb"
    assert tags["stillpoint:level"] == "filesystem" and tags["stillpoint:procedure"] == "drbd_mirror_backup"
    # DRBD's own count of what changed during the split, and what the reconnect resynced
    resync = _results(data, "Reconnect the mirror and resync only what changed")["vma"]["sync"]
    size = _results(data, "Read the resource on both nodes")["vma"]["summary"]["size_kib"]
    oos = int(stats["out_of_sync_kib_at_reconnect"])
    STATE.update(set_id=stats["set_id"], size_kib=size, split_oos_kib=oos, split_window_ms=split["split"]["window_ms"],
                 split_resync_sent_kib=resync["sent_kib"])
    record_timing(HERE, "split: freeze window %.0f ms; out of sync at reconnect %d KiB of %d KiB; resync sent %s KiB"
                  % (split["split"]["window_ms"], oos, size, resync["sent_kib"]), 0.0)
    STATE["during_backup"] = a.vm.ssh("stat -c %%s %s/during" % MNT).stdout.strip()
    # the writer's blocks, not the device: at most what it appended in the whole run (the split lasted
    # only part of it; how much depends on the machine's speed) plus what XFS writes besides file data
    slack_kib = STATE["fs_metadata_kib"]
    assert 0 < oos <= int(STATE["during_backup"]) // 1024 + slack_kib < size, (oos, STATE["during_backup"], slack_kib)
    assert _proc(a)["state"].startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate")


def test_restore_both_sides_without_resync(world, lab_timer):
    if "set_id" not in STATE:
        pytest.skip("needs the backup of the previous test")
    a, b = world.instances
    # disaster on both sides: deleted on the Primary, replicated to the Secondary
    a.vm.ssh("rm -f %s/payload %s/during && sync" % (MNT, MNT))
    restore = {"drbd_mirror_restore_resource": "r0", "drbd_mirror_restore_set_id": STATE["set_id"],
               "drbd_mirror_restore_aws_endpoint_url": GUEST_EC2_URL}
    with lab_timer("drbd_mirror_restore.yml resync=skip (2 volumes, swap, create-md, clear-bitmap, mount)"):
        data = _playbook(world, "drbd_mirror_restore.yml", restore)
    skip = _results(data, "Skip the initial resync (both sides are the set's snapshot, proved by the catalog)")["vma"]
    assert skip["changed"] and skip["proof"]["same_snapshot"] is True
    assert sorted(skip["proof"]["volumes"]) == sorted(
        h["volumes"][0]["volume_id"] for h in _results(data, "Create the restored volume in the node's zone (before "
                                                             "any downtime)").values())
    after_skip = skip["status"]
    assert after_skip["in_sync"] and after_skip["out_of_sync_kib"] == 0, after_skip
    pa, pb = _proc(a), _proc(b)
    assert pa["state"].startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate"), pa
    # counters restart at connect: what vmb received since is replication of the mount's writes, not a resync
    STATE.update(restore_oos_kib=after_skip["out_of_sync_kib"], restore_received_kib=after_skip["received_kib"],
                 restore_nr_after_mount_kib=pb["nr"])
    record_timing(HERE, "restore both sides: out of sync at connect %s KiB, received during skip %s KiB, vmb nr after "
                  "mount %d KiB" % (after_skip["out_of_sync_kib"], after_skip["received_kib"], pb["nr"]), 0.0)
    assert pb["nr"] < 8 * 1024, pb  # XFS log replay and mount: a few KiB, never the device
    assert _sum(a) == STATE["payload"]
    assert int(a.vm.ssh("stat -c %%s %s/during" % MNT).stdout) > 0
    # a restored backing disk holds the filesystem and DRBD's metadata: blkid -p names only DRBD's, wipefs lists
    # both (drbd_resource asks wipefs whenever blkid names DRBD metadata, to judge whether a disk holds data)
    probe = b.vm.ssh("blkid -p -o export /dev/nvme0n1; echo rc=$?", check=False).stdout
    listed = b.vm.ssh("wipefs --no-act --noheadings --output TYPE /dev/nvme0n1").stdout
    STATE.update(blkid_restored=probe, wipefs_restored=listed)
    assert "TYPE=drbd" in probe and "TYPE=xfs" not in probe and sorted(listed.split()) == ["drbd", "xfs"], (
        probe, listed)
    # both volumes are copies of the one snapshot, at /dev/sdf
    for inst in (a, b):
        vols = world.endpoint.client().describe_instances(InstanceIds=[inst.instance_id])
        dev = {m["DeviceName"]: m["Ebs"]["VolumeId"] for r in vols["Reservations"] for i in r["Instances"]
               for m in i["BlockDeviceMappings"]}
        assert dev["/dev/sdf"] in skip["proof"]["volumes"]
    # the re-run makes its EC2 calls from the controller: the same set, nodes and restore found again whichever side
    # calls EC2 (each EC2 task in a TCG guest costs 8-20 s of boto3 and Ansible start-up, lab time)
    with lab_timer("drbd_mirror_restore.yml again, mode controller (nothing to do)"):
        again = _playbook(world, "drbd_mirror_restore.yml", dict(
            restore, drbd_mirror_restore_mode="controller", drbd_mirror_restore_aws_endpoint_url=world.endpoint.url))
    assert _changed(again) == [], _changed(again)
    assert _sum(a) == STATE["payload"]

    # refusals on the live pair (DOMAIN.md 1, 2)
    refused = _module(world, "vmb", "drbd_resource", {"name": "r0", "role": "primary"}, expect_fail=True)
    assert "the peer is Primary" in refused["msg"]
    refused = _module(world, "vma", "drbd_skip_initial_sync", {
        "name": "r0", "set_id": STATE["set_id"], "volume_ids": [a.volume_ids[0], b.volume_ids[0]],
        "endpoint_url": GUEST_EC2_URL}, expect_fail=True)
    assert "which is not among volume_ids" in refused["msg"] or "not created from a snapshot" in refused["msg"]

    # the stock path: one side restored, the other overwritten by a full resync. Its EC2 calls are made from the
    # controller (mode controller, the endpoint as the controller reaches it): the first run above made them from the
    # nodes
    with lab_timer("drbd_mirror_restore.yml resync=full, mode controller (one side restored, full resync)"):
        data = _playbook(world, "drbd_mirror_restore.yml", dict(
            restore, drbd_mirror_restore_resync="full", drbd_mirror_restore_mode="controller",
            drbd_mirror_restore_aws_endpoint_url=world.endpoint.url, drbd_mirror_restore_restore_id="stock"))
    full = _results(data, "Full resync from the Primary (resync full)")["vma"]["sync"]
    pa, pb = _proc(a), _proc(b)  # the resource went down and up: the counters count from the new connection
    STATE.update(full_received_kib=pb["nr"], full_sent_kib=pa["ns"], full_wait_seconds=full["seconds"])
    record_timing(HERE, "stock path: vmb received %d KiB, vma sent %d KiB (device %d KiB); waited %.1f s"
                  % (pb["nr"], pa["ns"], STATE["size_kib"], full["seconds"]), 0.0)
    assert pb["nr"] >= STATE["size_kib"] * 0.99, (pb, STATE["size_kib"])
    assert pa["state"].startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate"), pa
    assert _sum(a) == STATE["payload"]


def test_disk_replacement_resyncs_from_the_survivor(world, lab_timer):
    """Seed 003: the Primary's disk fails and is replaced by a blank one."""
    a, b = world.instances
    client = world.endpoint.client()
    a.vm.ssh("test -e {0}/payload || (head -c 8M /dev/urandom > {0}/payload && sync)".format(MNT))
    before = _sum(a)
    old = [m["Ebs"]["VolumeId"] for r in client.describe_instances(InstanceIds=[a.instance_id])["Reservations"]
           for i in r["Instances"] for m in i["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"][0]
    with lab_timer("disk failure: force-detach vma's volume, attach a blank one at /dev/sdf"):
        client.detach_volume(VolumeId=old, Force=True)
        _wait(lambda: client.describe_volumes(VolumeIds=[old])["Volumes"][0]["State"] == "available")
        # DRBD sees the disk gone at the next write (on-io-error detach): the Primary goes Diskless
        _wait(lambda: "ds:Diskless" in a.vm.ssh("date >> %s/tick; sync; cat /proc/drbd" % MNT).stdout, timeout=60)
        az = client.describe_instances(InstanceIds=[a.instance_id])["Reservations"][0]["Instances"][0][
            "Placement"]["AvailabilityZone"]
        new = client.create_volume(AvailabilityZone=az, Size=1)["VolumeId"]
        _wait(lambda: client.describe_volumes(VolumeIds=[new])["Volumes"][0]["State"] == "available")
        client.attach_volume(VolumeId=new, InstanceId=a.instance_id, Device="/dev/sdf")
        disk = a.devices_for_volume(new, timeout=60)[0]
    assert disk == "/dev/nvme0n1", disk
    # the Primary runs on, Diskless, through its peer
    assert a.vm.ssh("sha256sum %s/payload | cut -d' ' -f1" % MNT).stdout.strip() == before
    # the two ways the new, empty disk could become the sync source are refused (DOMAIN.md 1, seed 003)
    # fresh metadata on the blank disk, up but not connected (the survivor stands alone meanwhile)
    a.vm.ssh("umount %s && drbdadm secondary r0 && drbdadm down r0" % MNT)
    b.vm.ssh("drbdadm disconnect r0")
    a.vm.ssh("drbdadm create-md --force r0 && drbdadm up r0")
    refused = _module(world, "vma", "drbd_resource", {"name": "r0", "role": "primary", "force": True},
                      expect_fail=True)
    assert "looks empty" in refused["msg"], refused["msg"]
    # connected to the survivor, resyncing slowly from it (so that it stays Inconsistent meanwhile)
    b.vm.ssh("drbdadm disk-options --resync-rate=256K r0 && drbdadm connect r0")
    _wait(lambda: "cs:SyncTarget" in a.vm.ssh("cat /proc/drbd").stdout, timeout=60)
    refused = _module(world, "vma", "drbd_resource", {"name": "r0", "role": "primary", "force": True},
                      expect_fail=True)
    assert "holds a good copy" in refused["msg"], refused["msg"]
    assert "ro:Secondary/Secondary" in a.vm.ssh("cat /proc/drbd").stdout
    b.vm.ssh("drbdadm adjust r0")  # the configured resync rate again
    with lab_timer("drbd_disk_replace.yml (survivor first, create-md, resync, switch back)"):
        data = _playbook(world, "drbd_disk_replace.yml", {
            "drbd_disk_replace_resource": "r0", "drbd_disk_replace_node": "vma", "drbd_disk_replace_new_disk": new,
            "drbd_disk_replace_mountpoints": [MNT]})
    names = [t["task"]["name"].split(" : ")[-1] for p in data["plays"] for t in p["tasks"]]
    assert names.index("Seed 003 step 4 - promote the survivor FIRST") < names.index(
        "Seed 003 steps 5-6 - metadata on the declared new disk, bring it up, resync from the survivor")
    sync = _results(data, "Wait for the resync from the survivor (progress, amount resynced)")["vmb"]
    pa = _proc(a)
    assert pa["state"].startswith("cs:Connected ro:Primary/Secondary ds:UpToDate/UpToDate"), pa
    assert _sum(a) == before
    record_timing(HERE, "seed 003: resync from the survivor %s KiB sent by vmb during the wait, vma received %d KiB"
                  % (sync.get("sync", {}).get("sent_kib"), pa["nr"]), 0.0)
    STATE.update(replace_received_kib=pa["nr"])


def _wait(predicate, timeout=30, interval=0.5):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
