# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The EBS emulator moves real blocks: point-in-time snapshots of disks a guest keeps writing.

Two VMs are instances at the strict EC2 endpoint. Volumes are attached through the EC2 API (hot-
plugged as NVMe with the EBS serial) and found in the guest by volume id with the collection's
own resolver. A guest writer appends numbered, self-checking records with O_DSYNC and publishes
how far it got. CreateSnapshot(s) is called while it writes; a volume made from the snapshot is
attached to the OTHER VM, which reads it back. The copy must hold exactly the records complete at
the call: every record up to some k with c0 <= k <= c1 (progress read before and after the call),
nothing beyond, byte for byte what the writer wrote (sha256), while the writer went on well past k.
With two volumes in one CreateSnapshots, both copies are of the same instant.
"""

import json
import os
import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.guest import records
from tests.lab.world import LabWorld

pytestmark = pytest.mark.lab

GUEST_RECORDS = "/opt/stillpoint/records.py"
PROGRESS = "/dev/shm/seq"


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    w = LabWorld(tmp_path_factory.mktemp("labsnap"), image=lab_image, pending_seconds=0.5)
    w.start()
    # a 1 GiB copy at 128 MiB/s takes ~8 s: the guest writes on during the copy, which must not leak into it
    w.endpoint.qemu_backup_speed(128 << 20)
    try:
        a = w.instance("vma")
        b = w.instance("vmb", az=a.info["az"])
        t0 = time.monotonic()
        w.boot()
        record_timing("test_lab_snapshots", "boot 2 VMs (to SSH, in parallel)", time.monotonic() - t0)
        with open(records.__file__, "rb") as f:
            script = f.read()
        for inst in (a, b):
            inst.vm.ssh("mkdir -p /opt/stillpoint && cat > %s" % GUEST_RECORDS, input=script)
        yield w
    finally:
        t0 = time.monotonic()
        w.stop()
        record_timing("test_lab_snapshots", "teardown (VMs by PID, endpoint)", time.monotonic() - t0)


def _attach_new(world, inst, device, snapshot_id=None, size=1):
    ec2 = world.endpoint.client()
    kwargs = {"AvailabilityZone": inst.info["az"], "Size": size}
    if snapshot_id:
        kwargs = {"AvailabilityZone": inst.info["az"], "SnapshotId": snapshot_id}
    vol = ec2.create_volume(**kwargs)["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=inst.instance_id, Device=device)
    ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    disks = inst.devices_for_volume(vol)
    assert len(disks) == 1, "volume %s not found in %s by its id: %r" % (vol, inst.name, disks)
    return vol, disks[0]


def _detach(world, vol):
    ec2 = world.endpoint.client()
    ec2.detach_volume(VolumeId=vol)
    ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def _progress(inst):
    out = inst.vm.ssh("cat %s 2>/dev/null || echo 0" % PROGRESS).stdout.strip()
    return int(out or 0)


def _start_writer(inst, disks, at_least=200, timeout=120):
    inst.vm.ssh("rm -f %s" % PROGRESS)
    proc = inst.vm.popen("exec python3 %s write --progress %s --count 200000 %s"
                         % (GUEST_RECORDS, PROGRESS, " ".join(disks)))
    deadline = time.monotonic() + timeout
    while _progress(inst) < at_least:
        assert proc.poll() is None, "writer died: %s" % proc.stderr.read()
        assert time.monotonic() < deadline, "writer too slow"
        time.sleep(0.5)
    return proc


def _stop_writer(inst, proc):
    inst.vm.ssh("pkill -f '[r]ecords.py write'", check=False)
    proc.wait(60)


def _read(inst, disk, limit, index):
    out = inst.vm.ssh("python3 %s read --limit %d --index %d %s" % (GUEST_RECORDS, limit, index, disk)).stdout
    return json.loads(out)


def _wait_completed(world, snapshot_ids, timeout=300):
    """Wait for ``completed``; returns the distinct Progress values seen while pending."""
    ec2 = world.endpoint.client()
    seen = set()
    deadline = time.monotonic() + timeout
    while True:
        snaps = ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
        states = {s["State"] for s in snaps}
        for s in snaps:
            if s["State"] == "pending":
                seen.add(s.get("Progress"))
        assert "error" not in states, snaps
        if states == {"completed"}:
            return seen
        assert time.monotonic() < deadline, snaps
        time.sleep(0.3)


def test_snapshot_during_writes_holds_exactly_the_records_of_the_call(world, lab_timer):
    a, b = world.instances
    ec2 = world.endpoint.client()
    with lab_timer("attach 1 GiB volume (API -> visible in guest)"):
        vol, disk = _attach_new(world, a, "/dev/sdf")
    assert disk.startswith("/dev/nvme")
    writer = _start_writer(a, [disk])
    try:
        c0 = _progress(a)
        with lab_timer("CreateSnapshot call during writes"):
            snap = ec2.create_snapshot(VolumeId=vol, Description="lab point-in-time")
        c1 = _progress(a)
        assert snap["State"] == "pending"
        with lab_timer("snapshot 1 GiB pending -> completed"):
            seen = _wait_completed(world, [snap["SnapshotId"]])
        time.sleep(1)
        c_end = _progress(a)
    finally:
        _stop_writer(a, writer)
    assert c_end > c1 + 10, "the writer must have gone on after the call (c1=%d, end=%d)" % (c1, c_end)
    with lab_timer("restore: CreateVolume from snapshot, attach to the other VM"):
        copy_vol, copy_disk = _attach_new(world, b, "/dev/sdg", snapshot_id=snap["SnapshotId"])
    got = _read(b, copy_disk, c_end + 100, 0)
    k = got["records"]
    assert c0 <= k <= c1 + 1, "copy holds %d records; the call came between %d and %d" % (k, c0, c1)
    assert got["later"] == 0, "records written after the call are in the copy: %r" % got
    assert got["sha256"] == records.expected_sha256(k, 0)
    assert seen, "the snapshot was never seen pending"
    # the source kept everything the writer wrote after the call
    assert _read(a, disk, c_end + 100, 0)["records"] >= c_end
    _detach(world, copy_vol)
    assert not b.devices_for_volume(copy_vol, timeout=0)
    _detach(world, vol)


def test_multi_volume_snapshot_is_one_instant(world, lab_timer):
    a, b = world.instances
    ec2 = world.endpoint.client()
    vols, disks = zip(*[_attach_new(world, a, dev) for dev in ("/dev/sdh", "/dev/sdi")])
    writer = _start_writer(a, list(disks))
    try:
        c0 = _progress(a)
        with lab_timer("CreateSnapshots (2 volumes) call during writes"):
            resp = ec2.create_snapshots(InstanceSpecification={"InstanceId": a.instance_id,
                                                               "ExcludeBootVolume": True})
        c1 = _progress(a)
        by_vol = {s["VolumeId"]: s["SnapshotId"] for s in resp["Snapshots"]}
        assert sorted(by_vol) == sorted(vols)
        _wait_completed(world, list(by_vol.values()))
    finally:
        _stop_writer(a, writer)
    counts = []
    for i, vol in enumerate(vols):
        copy_vol, copy_disk = _attach_new(world, b, "/dev/sd%s" % "jk"[i], snapshot_id=by_vol[vol])
        got = _read(b, copy_disk, c1 + 200, i)
        assert got["later"] == 0, got
        assert got["sha256"] == records.expected_sha256(got["records"], i)
        counts.append(got["records"])
        _detach(world, copy_vol)
    first, second = counts
    assert c0 <= first <= c1 + 1
    # the writer writes disk 0 then disk 1 for each record: one instant means equal, or disk 1 one behind
    assert second in (first, first - 1), "copies of different instants: %r" % counts
    for vol in vols:
        _detach(world, vol)
    assert os.path.isdir(world.endpoint.state_dir)
