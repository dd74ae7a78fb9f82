# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup.yml -> disaster -> restore.yml against a VM, over SSH, with real blocks.

One qemu VM is an instance at the strict EC2 endpoint with two 1 GiB data volumes (NVMe, EBS
serials), an XFS filesystem on each, found by volume id. The entry-point playbooks run with an
inventory of that VM, in host mode: the collection's modules run in the guest, and boto3 there
reaches the endpoint and the instance's own metadata service through qemu's guestfwd (the guest
can reach nothing else). The backup freezes the guest's filesystems for real while a writer keeps
writing; the snapshots are qemu backup jobs; the restore creates volumes from them and hot-plugs
them at the recorded device names.
"""

import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.guest import appender
from tests.lab.world import GUEST_EC2_URL, GUEST_IMDS_URL, LabWorld
from tests.support.world import ROOT, failures, run_playbook, task

pytestmark = pytest.mark.lab

MOUNTS = ["/data0", "/data1"]
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"


@pytest.fixture(scope="module")
def world(lab_image, tmp_path_factory):
    w = LabWorld(tmp_path_factory.mktemp("labroles"), image=lab_image, pending_seconds=0.5)
    w.start()
    try:
        inst = w.instance("vmr", volumes=[{"size": 1, "device": "/dev/sdf"}, {"size": 1, "device": "/dev/sdg"}])
        t0 = time.monotonic()
        w.boot()
        record_timing("test_lab_roles", "boot 1 VM with 2 volumes (to SSH)", time.monotonic() - t0)
        t0 = time.monotonic()
        inst.write_aws_credentials()
        for vol, mnt in zip(inst.volume_ids, MOUNTS):
            disk, = inst.devices_for_volume(vol)
            inst.vm.ssh("mkfs.xfs -q -f %s && mkdir -p %s && mount %s %s" % (disk, mnt, disk, mnt))
        record_timing("test_lab_roles", "mkfs.xfs + mount 2 volumes, found by volume id", time.monotonic() - t0)
        w.inventory(str(w.workdir) + "/inventory.yml")
        yield w
    finally:
        t0 = time.monotonic()
        w.stop()
        record_timing("test_lab_roles", "teardown (VM by PID, endpoint)", time.monotonic() - t0)


def _playbook(world, name, extravars, check=False):
    rc, results, data = run_playbook("%s/playbooks/%s" % (ROOT, name), world.endpoint, extravars=extravars,
                                     check=check, inventory=world.workdir + "/inventory.yml", timeout=900,
                                     env={"ANSIBLE_PIPELINING": "True"})
    return rc, results, data


def _sums(inst):
    out = inst.vm.ssh("cd / && sha256sum %s" % " ".join("%s/payload" % m for m in MOUNTS), check=False).stdout
    return dict(reversed(line.split()) for line in out.splitlines())


def test_backup_disaster_restore_on_a_vm(world, lab_timer):
    inst = world.instances[0]
    vm = inst.vm
    for mnt in MOUNTS:
        vm.ssh("head -c 8M /dev/urandom > %s/payload && sync" % mnt)
    before = _sums(inst)
    assert len(before) == 2
    writer = vm.popen(appender.command("/data1/log", stamp=True))
    try:
        with lab_timer("backup.yml (host mode, 2 XFS, writer running)"):
            rc, results, data = _playbook(world, "backup.yml", {
                "backup_hosts": "lab", "array_backup_mountpoints": ",".join(MOUNTS),
                "array_backup_aws_endpoint_url": GUEST_EC2_URL, "array_backup_imds_endpoint": GUEST_IMDS_URL,
                "array_backup_wait": True, "array_backup_poll_interval": 1})
    finally:
        vm.ssh("pkill -f '[d]ata1/log'", check=False)
        writer.kill()
    assert rc == 0, failures(data)
    made = task(results, TAKE)
    assert made["state"] == "complete" and made["level"] == "filesystem", made
    set_id = made["set_id"]
    assert data["global_custom_stats"]["stillpoint_backup_sets"] == {"vmr": set_id}
    assert [m["volume_id"] for m in made["members"]] == inst.volume_ids
    snaps = world.endpoint.client().describe_snapshots(
        Filters=[{"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    assert sorted(s["VolumeId"] for s in snaps) == sorted(inst.volume_ids)
    assert {s["State"] for s in snaps} == {"completed"}
    assert len(world.endpoint.calls("CreateSnapshots")) == 1

    # disaster: the data is gone
    vm.ssh("rm -f %s" % " ".join("%s/payload" % m for m in MOUNTS))
    assert _sums(inst) == {}

    # the guest proves it is the target instance from its IMDS (guestfwd), as array_backup finds its instance
    restore_vars = {"restore_hosts": "lab", "array_restore_set_id": set_id,
                    "array_restore_aws_endpoint_url": GUEST_EC2_URL, "array_restore_imds_endpoint": GUEST_IMDS_URL}
    with lab_timer("restore.yml (create 2 volumes, swap by hot-plug, verify, mount)"):
        rc, results, data = _playbook(world, "restore.yml", restore_vars)
    assert rc == 0, failures(data)
    assert _sums(inst) == before
    for mnt in MOUNTS:
        assert vm.ssh("findmnt -n -o FSTYPE --mountpoint %s" % mnt).stdout.strip() == "xfs"
    attached = world.endpoint.client().describe_instances(InstanceIds=[inst.instance_id])
    devices = {m["DeviceName"]: m["Ebs"]["VolumeId"] for r in attached["Reservations"] for i in r["Instances"]
               for m in i["BlockDeviceMappings"]}
    assert devices["/dev/sdf"] not in inst.volume_ids and devices["/dev/sdg"] not in inst.volume_ids

    # a second run changing nothing is shown over SSH by test_lab_md_lvm.py (md + LVM, the harder layout) and for
    # these plain filesystems by tests/integration/test_restore_playbook.py: not repeated here (lab time)
