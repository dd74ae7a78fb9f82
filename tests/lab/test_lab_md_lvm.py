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
--update=uuid, vgimportclone, XFS nouuid at another mountpoint) and taken down again. The third
drills the set with playbooks/drill.yml (role restore_drill, host mode) on the second VM, where the
restored array is up with the same UUIDs, while a writer runs on the first: a run SIGKILLed once its
scratch volumes were attached, then a re-run that removes them first, brings the copy up read-only as a
clone (xfs_repair -n, the frozen copy's log replayed on the scratch copy), checks a sentinel and a
checksum manifest, records the verdict and removes its volumes; the source VM is never touched.

With STILLPOINT_LAB_CAPTURE=<dir>, the real mdadm/lvm2 output of the guest is written to <dir>
(the unit fixtures in tests/unit/fixtures/hostops/lab-*.txt were captured this way).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog

from tests.lab.conftest import record_timing
from tests.lab.guest import appender
from tests.lab.world import GUEST_EC2_URL, GUEST_IMDS_URL, LabWorld
from tests.support.world import ROOT, ansible_env, failures, run_playbook, task

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
    assert rc == 0, failures(data)
    made = task(results, TAKE)
    assert made["state"] == "complete" and made["level"] == "filesystem", made
    set_id = made["set_id"]
    # members are numbered in md role order: role 0 is the volume at /dev/sdg
    assert [m["volume_id"] for m in made["members"]] == [src.volume_ids[1], src.volume_ids[0]]
    assert len(world.endpoint.calls("CreateSnapshots")) == 1
    assert data["global_custom_stats"]["stillpoint_backup_sets"] == {"vmsrc": set_id}  # the AWX artifact

    record = world.endpoint.client()  # the catalog, as backup_set_info reads it
    snaps = record.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    assert sorted(s["VolumeId"] for s in snaps) == sorted(src.volume_ids)
    assert {s["State"] for s in snaps} == {"completed"}  # array_backup_wait's default: waited for, then complete
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
    assert rc == 0, failures(data)
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
    attached = record.describe_instances(InstanceIds=[src.instance_id])
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for r in attached["Reservations"] for i in r["Instances"]
               for m in i["BlockDeviceMappings"]}
    assert {devices["/dev/sdf"], devices["/dev/sdg"]} == set(restored), devices  # the recorded devices, new volumes

    # the runs after the first make their EC2 calls from the controller (mode controller; the guest still proves it
    # is the target from its IMDS): the set and the restore are found again whichever side calls EC2, and each EC2
    # task in a TCG guest costs 8-20 s of boto3 and Ansible start-up (lab time)
    controller = dict(restore_vars, array_restore_mode="controller", array_restore_aws_endpoint_url=world.endpoint.url)
    with lab_timer("restore.yml again on the same VM, mode controller (nothing to do)"):
        rc, results, data = _playbook(world, "restore.yml", controller)
    assert rc == 0, failures(data)
    assert _changed(data) == []
    assert _sums(vm) == before

    with lab_timer("restore.yml onto a second VM, mode controller (udev-assembled copy taken over)"):
        rc, results, data = _playbook(world, "restore.yml", dict(controller, restore_hosts="vmdst",
                                                                 array_restore_instance_id=dst.instance_id))
    assert rc == 0, failures(data)
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
    snaps.sort(key=lambda s: catalog.member_record(s)["index"])
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


DRILL_ROOT = "/mnt/stillpoint-drill"
DRILL_CREATE = "Create the scratch volumes from the set in the scratch instance's zone and attach them at free names"
DRILL_UP = "Bring the copy up read-only under the drill root (check each filesystem, mount; md/LVM as clones)"
DRILL_LEFTOVERS = "Remove the leftover scratch volumes (detach from the scratch instance, delete)"
DRILL_REMOVE = "Remove the scratch volumes (detach from the scratch instance, delete)"
CHANGING = ("Create", "Attach", "Detach", "Delete", "Modify", "Enable", "Disable", "Copy", "Lock")


def _ec2_state(ec2, instance_id):
    """The instance's block device mapping and its volumes with their attachments, as the endpoint says."""
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    ids = sorted(b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"])
    vols = ec2.describe_volumes(VolumeIds=ids)["Volumes"]
    return {"mapping": sorted((b["DeviceName"], b["Ebs"]["VolumeId"]) for b in inst["BlockDeviceMappings"]),
            "volumes": sorted((v["VolumeId"], v["State"], v["Size"], [(a["InstanceId"], a["Device"], a["State"])
                                                                      for a in v["Attachments"]]) for v in vols)}


def _drill_volumes(ec2):
    return ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["stillpoint:drill-of"]}])["Volumes"]


def _verdicts(ec2, set_id):
    out = {}
    for snap in ec2.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]:
        tags = dict((t["Key"], t["Value"]) for t in snap.get("Tags", []))
        chunks = [tags.get("stillpoint:drill")] + [tags[k] for k in sorted(k for k in tags if k.startswith("stillpoint:drill."))]
        out[snap["SnapshotId"]] = json.loads("".join(chunks)) if chunks[0] else None
    return out


def _guest_state(vm):
    """What a drill may leave in the scratch guest: disks, md arrays, volume groups, mounts under the drill root."""
    out = vm.ssh("lsblk -dn -o NAME,SERIAL | sort; echo ==; cat /proc/mdstat | grep ^md || true; echo ==;"
                 " vgs --noheadings -o vg_name,vg_uuid | sort; echo ==; findmnt -rn -o TARGET | grep '^%s' || true"
                 % DRILL_ROOT).stdout
    return [part.split() for part in out.split("==")]


def _guest_modules_running(vm):
    """Ansible modules still running in the guest (pipelined: ``/bin/sh -c '/usr/bin/python3 && sleep 0'``)."""
    return int(vm.ssh("pgrep -fc '[p]ython3 && sleep 0' || true").stdout.strip() or 0)


def test_restore_drill_on_the_second_vm_killed_half_way_then_rerun(world, lab_timer):
    """playbooks/drill.yml (role restore_drill, host mode) drills the md RAID0 + LVM + XFS set on the second VM,
    where the restored array of the first test is up with the same md/PV/VG/XFS UUIDs, while the source VM
    goes on writing. The first run is SIGKILLed (ansible-playbook by its PID) once both scratch volumes were
    attached; the re-run removes them first, brings the copy up read-only as a clone (new md and VG UUIDs,
    xfs_repair -n), checks a checksum manifest, records the verdict on every member and removes its volumes:
    counted at the endpoint, every volume of before and none more; the source instance's volumes and
    attachments unchanged, no changing call names them, its writer never stalled."""
    if not STATE:
        pytest.skip("needs the set of the first test")
    src, dst = world.instances
    ec2 = world.endpoint.client()
    set_id = STATE["set_id"]
    copy = "%s/%s%s" % (DRILL_ROOT, set_id, MNT)
    variables = {"drill_hosts": "vmdst", "restore_drill_instance_id": dst.instance_id, "restore_drill_set_id": set_id,
                 "restore_drill_aws_endpoint_url": GUEST_EC2_URL, "restore_drill_imds_endpoint": GUEST_IMDS_URL,
                 "restore_drill_aws_region": world.endpoint.region, "restore_drill_root": DRILL_ROOT,
                 "restore_drill_sentinel": "payload2", "restore_drill_device_timeout": 60,
                 "restore_drill_wait_timeout": 120,
                 # the data's checksums from before the backup, checked in the mounted copy
                 "restore_drill_checksum_command": ["sha256sum", "--quiet", "-c", "/root/drill-manifest.sha256"]}
    dst.vm.ssh("printf '%s' > /root/drill-manifest.sha256" % "".join(
        "%s  %s/%s\\n" % (digest, copy, name) for name, digest in sorted(STATE["before"].items())))
    all_before = sorted(v["VolumeId"] for v in ec2.describe_volumes()["Volumes"])
    source_before = _ec2_state(ec2, src.instance_id)
    scratch_before = _ec2_state(ec2, dst.instance_id)
    guest_before = _guest_state(dst.vm)
    source_guest = src.vm.ssh("mdadm --detail --export /dev/md0 | grep ^MD_UUID=; vgs --noheadings -o vg_uuid data;"
                              " findmnt -n -o SOURCE --mountpoint %s" % MNT).stdout.split()
    assert _verdicts(ec2, set_id) and not any(_verdicts(ec2, set_id).values())
    assert _drill_volumes(ec2) == []

    log = "%s/drill-writer.log" % MNT
    t_start = int(src.vm.ssh("date +%s%N").stdout)
    writer = src.vm.popen(appender.command(log, stamp=True))
    try:
        world.endpoint.clear_calls()
        cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", world.workdir + "/inventory.yml",
               "%s/playbooks/drill.yml" % ROOT, "-e", json.dumps(variables)]
        # stdin from /dev/null (a stdin made non-blocking elsewhere in the worker makes ansible refuse to start);
        # its output kept, so that a run that ends early says why
        output = os.path.join(world.workdir, "drill-killed.out")
        out_fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(world.endpoint, {"ANSIBLE_PIPELINING": "True"}),
                                stdin=subprocess.DEVNULL, stdout=out_fd, stderr=subprocess.STDOUT, start_new_session=True)
        os.close(out_fd)  # the run has its own copy
        try:
            with lab_timer("drill.yml on the second VM until both AttachVolume calls, then SIGKILL"):
                deadline = time.monotonic() + 300
                while len(world.endpoint.calls("AttachVolume")) < 2:
                    if proc.poll() is not None:
                        with open(output) as ended:
                            raise AssertionError("the drill ended before it attached its volumes (rc %s): %s"
                                                 % (proc.returncode, ended.read()[-3000:]))
                    assert time.monotonic() < deadline, "no two AttachVolume calls within 300 s"
                    time.sleep(0.2)
                os.kill(proc.pid, signal.SIGKILL)  # ansible-playbook itself, by its PID
                proc.wait(timeout=30)
            with lab_timer("the killed drill's forked worker and its module in the guest end by themselves"):
                deadline = time.monotonic() + 120
                while _group_alive(proc.pid) or _guest_modules_running(dst.vm):
                    assert time.monotonic() < deadline, "the killed drill's workers or guest module still run"
                    time.sleep(0.5)
        finally:
            if proc.poll() is None or _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)  # the session we started, never anything else
        left = sorted(v["VolumeId"] for v in _drill_volumes(ec2))
        assert len(left) == 2, left
        assert all(v["Attachments"] and v["Attachments"][0]["InstanceId"] == dst.instance_id
                   for v in ec2.describe_volumes(VolumeIds=left)["Volumes"])
        assert "DeleteVolume" not in [c["action"] for c in world.endpoint.calls()]
        assert not any(_verdicts(ec2, set_id).values())  # killed before any verdict
        serials = _guest_state(dst.vm)[0]
        assert all(v.replace("-", "") in serials for v in left), serials  # plugged into the scratch guest
        killed_calls = world.endpoint.calls()

        world.endpoint.clear_calls()
        # the re-run makes its EC2 calls from the controller (mode controller): it finds and removes what the killed
        # host-mode run left, whichever side called EC2 then (and each EC2 task in a TCG guest costs 8-20 s, lab time)
        with lab_timer("drill.yml re-run on the second VM, mode controller (leftovers removed first, md/LVM clone, "
                       "xfs_repair -n, verdict)"):
            rc, results, data = _playbook(world, "drill.yml", dict(
                variables, restore_drill_mode="controller", restore_drill_aws_endpoint_url=world.endpoint.url))
        t_end = int(src.vm.ssh("date +%s%N").stdout)
    finally:
        src.vm.ssh("pkill -f '[s]rv/data/drill-writer.log'", check=False)
        writer.kill()
    _keep("drill-rerun", results)
    assert rc == 0, failures(data)
    calls = killed_calls + world.endpoint.calls()

    # the leftovers of the killed run went first, then the drill made its own two volumes and removed them
    assert sorted(task(results, DRILL_LEFTOVERS)["removed"]) == left
    actions = [c["action"] for c in world.endpoint.calls()]
    assert actions[:actions.index("CreateVolume")].count("DeleteVolume") == 2
    assert sorted(a for a in actions if a.startswith(CHANGING)) == sorted(
        ["DetachVolume"] * 4 + ["DeleteVolume"] * 4 + ["CreateVolume"] * 2 + ["AttachVolume"] * 2 + ["CreateTags"])
    made = sorted(v["volume_id"] for v in task(results, DRILL_CREATE)["volumes"])
    assert len(made) == 2 and not set(made) & set(left)
    assert sorted(task(results, DRILL_REMOVE)["removed"]) == made

    # brought up as a clone beside the restored array with the same UUIDs: new names and UUIDs, checked read-only
    up = task(results, DRILL_UP)
    assert [(m["mountpoint"], m["mounted"]) for m in up["mounts"]] == [(copy, True)], up["mounts"]
    assert "ro" in up["mounts"][0]["options"].split(","), up["mounts"]
    done = [" ".join([os.path.basename(a["cmd"][0])] + a["cmd"][1:]) for a in up["actions"] if a.get("cmd")]
    assert any(c.startswith("mdadm --assemble /dev/md/md0_drill --update=uuid ") for c in done), done
    assert "vgimportclone --basevgname data_drill /dev/md/md0_drill" in done, done
    assert "xfs_repair -n /dev/data_drill/lv" in done, done

    # the verdict, on every member, read back from the endpoint
    found = _verdicts(ec2, set_id)
    assert len(found) == 2 and len(set(json.dumps(v, sort_keys=True) for v in found.values())) == 1, found
    verdict = list(found.values())[0]
    assert verdict["set"] == set_id and verdict["result"] == "pass" and verdict["instance"] == dst.instance_id
    assert verdict["verified_at"].endswith("Z") and verdict["rto_s"] > 0
    # the XFS of a frozen copy carries a log xfs_repair -n cannot judge: replayed on the scratch copy, checked again
    assert verdict["checks"]["filesystems"] == ("pass: 1 filesystem(s) checked read-only before mounting (xfs_repair), 1 log(s)"
                                                " replayed on the scratch copy first, then checked again, mounted read-only")
    assert verdict["checks"]["mounted"] == "1 of 1" and verdict["checks"]["sentinel"] == "present: payload2"
    assert verdict["checks"]["manifest"].startswith("pass: the checksum command (sha256sum --quiet"), verdict
    assert sorted(verdict["phases"]) == ["attach_s", "create_s", "up_s"]
    report = data["global_custom_stats"]["stillpoint_drills"]["vmdst"]
    assert report["result"] == "pass" and report["rto_s"] == verdict["rto_s"]
    assert sorted(report["leftovers_removed"]) == left
    _keep("drill-report", report)

    # nothing left: at the endpoint (every volume of before, none more) and in the scratch guest
    assert _drill_volumes(ec2) == []
    assert sorted(v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]) == all_before
    assert _ec2_state(ec2, dst.instance_id) == scratch_before
    assert _guest_state(dst.vm) == guest_before
    assert _sums(dst.vm) == STATE["before"]  # the second VM's own restored array as it was

    # the source: volumes and attachments unchanged, no changing call names it, its array as it was
    assert _ec2_state(ec2, src.instance_id) == source_before
    ids = set([src.instance_id] + [v for v, _s, _z, _a in source_before["volumes"]])
    assert [c["action"] for c in calls if c["action"].startswith(CHANGING)
            and any(str(v) in ids for k, v in c["params"].items() if "Tag" not in k)] == []
    assert src.vm.ssh("mdadm --detail --export /dev/md0 | grep ^MD_UUID=; vgs --noheadings -o vg_uuid data;"
                      " findmnt -n -o SOURCE --mountpoint %s" % MNT).stdout.split() == source_guest
    assert _sums(src.vm) == STATE["before"]
    # ... and its writer kept writing throughout both runs (guest clock), never stalled for long
    stamps = [int(x) for x in src.vm.ssh("cat %s" % log).stdout.split()]
    gaps = [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:])]
    assert stamps[0] - t_start < 10e9 and t_end - stamps[-1] < 10e9, (t_start, stamps[0], stamps[-1], t_end)
    assert max(gaps) < 5, max(gaps)
    print("\n".join(task(results, "Report the drill")["msg"]))
    print("source writer: %d writes during both runs, longest gap %.2f s" % (len(stamps), max(gaps)))


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
