# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An md RAID0 + LVM + XFS array: backup.yml -> disaster -> restore.yml, on its VM and on another.

Two lab VMs are instances at the strict EC2 endpoint. The first has two 1 GiB data volumes (NVMe,
EBS serials); in the guest, a real md RAID0 is created over them in the opposite order of their
device names (so the md order is not the device order), an LVM volume group on the array and an
XFS filesystem on a logical volume. backup.yml (host mode) discovers the stack by itself (no
`array` given), freezes the XFS while a writer runs, and records md and LVM in the catalog, members
numbered in md order. After the data is destroyed, restore.yml brings the set back on the same VM
(there udev assembles the hot-plugged copy as md0 itself, its homehost matching, and LVM
autoactivates it; array_host checks UUID, members and md role order and mounts), a second run
changes nothing, and then the same set is restored onto the second VM, which never saw the array
(udev assembles the copy as md127 there and LVM autoactivates it; array_host deactivates, stops
it and assembles /dev/md0 in the recorded order). The second test attaches another copy of the
set beside its source: refused by default, then brought up with import_clone (mdadm
--update=uuid, vgimportclone, XFS nouuid at another mountpoint) and taken down again.

With STILLPOINT_LAB_CAPTURE=<dir>, the real mdadm/lvm2 output of the guest is written to <dir>
(the unit fixtures in tests/unit/fixtures/hostops/lab-*.txt were captured this way).
"""

import json
import os
import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.guest import appender
from tests.lab.world import GUEST_EC2_URL, GUEST_IMDS_URL, LabWorld
from tests.support.world import ROOT, run_playbook, task

pytestmark = pytest.mark.lab

MNT = "/srv/data"
COPY = "/srv/copy"
STATE = {}  # what the first test leaves for the second
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
HERE = "test_lab_md_lvm"


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    w = LabWorld(tmp_path_factory.mktemp("labmdlvm"), image=lab_image, pending_seconds=0.5)
    w.start()
    try:
        src = w.instance("vmsrc", volumes=[{"size": 1, "device": "/dev/sdf"}, {"size": 1, "device": "/dev/sdg"}])
        w.instance("vmdst")
        t0 = time.monotonic()
        w.boot()
        record_timing(HERE, "boot 2 VMs (2 volumes on the first) to SSH", time.monotonic() - t0)
        t0 = time.monotonic()
        for inst in w.instances:
            inst.write_aws_credentials()
        disks = [src.devices_for_volume(v)[0] for v in src.volume_ids]
        # md role 0 is the volume at /dev/sdg, role 1 the one at /dev/sdf
        src.vm.ssh("mdadm --create /dev/md0 --run --level=0 --chunk=64 --raid-devices=2 %s %s"
                   " && pvcreate -q /dev/md0 && vgcreate -q data /dev/md0 && lvcreate -q -y -n lv -L 1536M data"
                   " && mkfs.xfs -q -f /dev/data/lv && mkdir -p %s && mount /dev/data/lv %s"
                   % (disks[1], disks[0], MNT, MNT))
        record_timing(HERE, "mdadm --create RAID0 + LVM + mkfs.xfs, members by volume id", time.monotonic() - t0)
        w.inventory(str(w.workdir) + "/inventory.yml")
        yield w
    finally:
        t0 = time.monotonic()
        w.stop()
        record_timing(HERE, "teardown (2 VMs by PID, endpoint)", time.monotonic() - t0)


def _playbook(world, name, extravars, check=False):
    return run_playbook("%s/playbooks/%s" % (ROOT, name), world.endpoint, extravars=extravars, check=check,
                        inventory=world.workdir + "/inventory.yml", timeout=900, env={"ANSIBLE_PIPELINING": "True"})


def _sums(vm, where=MNT):
    out = vm.ssh("cd %s 2>/dev/null && sha256sum payload payload2" % where, check=False).stdout
    return dict(reversed(line.split()) for line in out.splitlines())


def _changed(data):
    return [t["task"]["name"] for p in data["plays"] for t in p["tasks"] for h in t["hosts"].values()
            if h.get("changed")]


def _keep(name, data):
    """With STILLPOINT_LAB_CAPTURE, keep a result (JSON) for people and fixtures."""
    where = os.environ.get("STILLPOINT_LAB_CAPTURE")
    if where:
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, name + ".json"), "w") as f:
            json.dump(data, f, indent=1)


def _capture(vm, disks, cmds=None, name="capture"):
    where = os.environ.get("STILLPOINT_LAB_CAPTURE")
    if not where:
        return
    os.makedirs(where, exist_ok=True)
    cmds = cmds or {
        "detail-md0": "mdadm --detail --export /dev/md0",
        "examine-0": "mdadm --examine --export %s" % disks[0],
        "examine-1": "mdadm --examine --export %s" % disks[1],
        "lvs": "lvs --reportformat json -o vg_name,vg_uuid,lv_name,lv_uuid,lv_kernel_major,lv_kernel_minor,lv_attr",
        "pvs": "pvs --reportformat json -o pv_name,pv_uuid,vg_name,vg_uuid",
        "sys": "for n in md0 dm-0 %s; do echo $n $(cat /sys/class/block/$n/dev) $(ls /sys/class/block/$n/slaves)"
               " $(cat /sys/class/block/$n/device/serial 2>/dev/null); done; cat /sys/block/md0/md/chunk_size"
               " /sys/block/dm-0/dm/uuid; cat /proc/self/mountinfo" % " ".join(os.path.basename(d) for d in disks),
        "versions": "mdadm --version 2>&1; lvm version"}
    with open(os.path.join(where, name + ".txt"), "w") as f:
        for section, c in cmds.items():
            res = vm.ssh("export LC_ALL=C; " + c, check=False)
            f.write("[%s]\n# %s (rc=%s)\n%s%s\n" % (section, c, res.returncode, res.stdout, res.stderr))


def test_md_lvm_backup_disaster_restore_here_and_on_another_vm(world, lab_timer):
    src, dst = world.instances
    vm = src.vm
    vm.ssh("head -c 24M /dev/urandom > %s/payload && head -c 3M /dev/urandom > %s/payload2 && sync" % (MNT, MNT))
    before = _sums(vm)
    assert len(before) == 2
    disks = [src.devices_for_volume(v)[0] for v in src.volume_ids]
    _capture(vm, disks)
    writer = vm.popen(appender.command("%s/log" % MNT, stamp=True))
    try:
        with lab_timer("backup.yml (host mode, md RAID0 + LVM + XFS discovered, writer running)"):
            rc, results, data = _playbook(world, "backup.yml", {
                "backup_hosts": "vmsrc", "array_backup_mountpoints": MNT,
                "array_backup_aws_endpoint_url": GUEST_EC2_URL, "array_backup_imds_endpoint": GUEST_IMDS_URL,
                "array_backup_poll_interval": 1})
    finally:
        vm.ssh("pkill -f '[s]rv/data/log'", check=False)
        writer.kill()
    assert rc == 0, json.dumps(data.get("plays"), indent=1)[-6000:]
    made = task(results, TAKE)
    assert made["state"] == "complete" and made["level"] == "filesystem", made
    set_id = made["set_id"]
    # members are numbered in md role order: role 0 is the volume at /dev/sdg
    assert [m["volume_id"] for m in made["members"]] == [src.volume_ids[1], src.volume_ids[0]]
    assert len(world.endpoint.calls("CreateSnapshots")) == 1

    record = world.endpoint.client()  # the catalog, as backup_set_info reads it
    snaps = record.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    tags = dict((t["Key"], t["Value"]) for t in snaps[0]["Tags"])
    keys = sorted((k for k in tags if k.startswith("stillpoint:array")), key=lambda k: (len(k), k))
    array = json.loads("".join(tags[k] for k in keys))
    md_uuid = vm.ssh("mdadm --detail --export /dev/md0 | sed -n 's/^MD_UUID=//p'").stdout.strip()
    vg_uuid = vm.ssh("vgs --noheadings -o vg_uuid data").stdout.strip()
    assert array["md"] == [{"device": "/dev/md0", "uuid": md_uuid, "level": "raid0", "chunk": "64K",
                            "members": [0, 1]}], array
    assert array["lvm"] == [{"vg": "data", "uuid": vg_uuid, "pvs": ["/dev/md0"], "lvs": ["lv"]}], array
    fs, = array["filesystems"]
    assert (fs["mountpoint"], fs["fstype"], fs["device"], fs["members"]) == (MNT, "xfs", "/dev/data/lv", [0, 1])

    # disaster: the data is gone
    vm.ssh("rm -f %s/payload %s/payload2 && sync" % (MNT, MNT))
    assert _sums(vm) == {}

    # the guest proves it is the target instance from its IMDS (guestfwd), as array_backup finds its instance
    restore_vars = {"restore_hosts": "vmsrc", "array_restore_set_id": set_id,
                    "array_restore_aws_endpoint_url": GUEST_EC2_URL, "array_restore_imds_endpoint": GUEST_IMDS_URL}
    with lab_timer("restore.yml on the same VM (2 volumes hot-plugged, md + LVM up, xfs check, mount)"):
        rc, results, data = _playbook(world, "restore.yml", restore_vars)
    assert rc == 0, json.dumps(data.get("plays"), indent=1)[-6000:]
    _keep("restore-same-vm", results)
    assert _sums(vm) == before
    STATE.update(set_id=set_id, array=array, before=before)
    created = task(results, "Create the volumes from the set in the instance's zone (before any downtime)")
    restored = [v["volume_id"] for v in sorted(created["volumes"], key=lambda v: v["index"])]
    now = [src.devices_for_volume(v)[0] for v in restored]
    detail = vm.ssh("mdadm --detail /dev/md0").stdout
    roles = [line.split()[-1] for line in detail.splitlines() if "active sync" in line]
    assert roles == now, detail  # assembled in the recorded order: role i is member i's restored volume
    assert vm.ssh("findmnt -n -o FSTYPE,SOURCE --mountpoint %s" % MNT).stdout.split() == ["xfs", "/dev/mapper/data-lv"]

    with lab_timer("restore.yml again on the same VM (nothing to do)"):
        rc, results, data = _playbook(world, "restore.yml", restore_vars)
    assert rc == 0, json.dumps(data.get("plays"), indent=1)[-6000:]
    assert _changed(data) == []
    assert _sums(vm) == before

    with lab_timer("restore.yml onto a second VM (udev-assembled copy taken over)"):
        rc, results, data = _playbook(world, "restore.yml", dict(restore_vars, restore_hosts="vmdst",
                                                                 array_restore_instance_id=dst.instance_id))
    assert rc == 0, json.dumps(data.get("plays"), indent=1)[-6000:]
    _keep("restore-second-vm", results)
    assert _sums(dst.vm) == before
    assert dst.vm.ssh("findmnt -n -o FSTYPE --mountpoint %s" % MNT).stdout.strip() == "xfs"
    assert md_uuid in dst.vm.ssh("mdadm --detail --export /dev/md0").stdout


def _array_host(world, host, args):
    play = [{"name": "array_host", "hosts": host, "gather_facts": False, "tasks": [
        {"name": "array_host", "stillpoint.snapshots.array_host": args, "ignore_errors": True}]}]
    path = os.path.join(world.workdir, "array_host.yml")
    with open(path, "w") as f:
        json.dump(play, f)  # JSON is YAML
    _rc, results, _data = run_playbook(path, world.endpoint, inventory=world.workdir + "/inventory.yml", timeout=600,
                                       env={"ANSIBLE_PIPELINING": "True"})
    return results["array_host"]


def test_a_copy_beside_its_source_is_refused_then_imported_as_a_clone(world, lab_timer):
    """The set's copy attached to the VM where the array is up (same md, PV, VG and XFS UUIDs):
    array_host refuses it, then brings it up with import_clone under new UUIDs and names."""
    if not STATE:
        pytest.skip("needs the set of the first test")
    src = world.instances[0]
    vm = src.vm
    ec2 = world.endpoint.client()
    snaps = ec2.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [STATE["set_id"]]}])["Snapshots"]
    snaps.sort(key=lambda s: int(dict((t["Key"], t["Value"]) for t in s["Tags"])["stillpoint:member"]))
    az = ec2.describe_instances(InstanceIds=[src.instance_id])["Reservations"][0]["Instances"][0]["Placement"][
        "AvailabilityZone"]
    with lab_timer("attach a copy of the set beside its source (2 volumes, hot-plug)"):
        vols = [ec2.create_volume(SnapshotId=s["SnapshotId"], AvailabilityZone=az)["VolumeId"] for s in snaps]
        ec2.get_waiter("volume_available").wait(VolumeIds=vols, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        for vol, dev in zip(vols, ("/dev/sdh", "/dev/sdi")):
            ec2.attach_volume(VolumeId=vol, InstanceId=src.instance_id, Device=dev)
        for vol in vols:
            assert src.devices_for_volume(vol), vol
    base = {"state": "up", "layout": STATE["array"], "volume_ids": vols}
    with lab_timer("array_host up without import_clone (refused)"):
        refused = _array_host(world, "vmsrc", base)
    _keep("clone-refused", refused)
    assert refused.get("failed"), refused
    assert "import_clone: true" in refused["msg"], refused["msg"]
    assert _sums(vm) == STATE["before"]

    clone = dict(base, import_clone=True, mountpoint_map={MNT: COPY})
    with lab_timer("array_host up import_clone (mdadm --update=uuid, vgimportclone, xfs nouuid)"):
        up = _array_host(world, "vmsrc", clone)
    _keep("clone-up", up)
    _capture(vm, None, name="capture-clone", cmds={
        "detail-clone": "mdadm --detail --export /dev/md/md0_clone",
        "vgs": "vgs --reportformat json -o vg_name,vg_uuid",
        "pvs": "pvs --reportformat json -o pv_name,vg_name,vg_uuid",
        "lvs": "lvs --reportformat json -o vg_name,lv_name,lv_attr data_clone",
        "sys": "ls -l /dev/md; cat /proc/mdstat"})
    assert not up.get("failed"), json.dumps(up, indent=1)[-4000:]
    assert _sums(vm, COPY) == STATE["before"]
    assert _sums(vm) == STATE["before"]
    assert vm.ssh("findmnt -n -o SOURCE --mountpoint %s" % COPY).stdout.strip() == "/dev/mapper/data_clone-lv"
    uuids = vm.ssh("mdadm --detail --export /dev/md0 | grep ^MD_UUID=; mdadm --detail --export /dev/md/md0_clone"
                   " | grep ^MD_UUID=; vgs --noheadings -o vg_name,vg_uuid").stdout.split()
    assert len(set(u for u in uuids if u.startswith("MD_UUID="))) == 2, uuids
    assert "data" in uuids and "data_clone" in uuids

    with lab_timer("array_host up import_clone again (nothing to do)"):
        again = _array_host(world, "vmsrc", clone)
    assert not again.get("failed") and again["changed"] is False, json.dumps(again, indent=1)[-4000:]

    with lab_timer("array_host down import_clone (the copy only)"):
        down = _array_host(world, "vmsrc", dict(clone, state="down"))
    _keep("clone-down", down)
    assert not down.get("failed") and down["changed"] is True, json.dumps(down, indent=1)[-4000:]
    assert vm.ssh("findmnt --mountpoint %s" % COPY, check=False).returncode != 0
    assert _sums(vm) == STATE["before"]
    assert vm.ssh("test -e /dev/md/md0_clone", check=False).returncode != 0
