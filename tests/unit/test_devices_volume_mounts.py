# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_devices.DeviceResolver.volume_mounts: volume id -> disks on this host -> what is mounted from them.

Fake trees from fixtures/devices/ (the lab's qemu NVMe disks with the volume id as serial and no
Amazon by-id link, Nitro, md/LVM/btrfs stacks), rebuilt by test_devices.build_tree.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import ebs_id_from_serial
from tests.unit.test_devices import build_tree
from tests.unit.test_devices import serials


def test_qemu_nvme_serial_without_amazon_links(tmp_path):
    """The lab's disks: serial vol<hex>, model QEMU NVMe Ctrl; udev links named after that model only."""
    r = build_tree(tmp_path, "qemu_nvme.tree")
    ser = serials(tmp_path)
    assert not [n for n in os.listdir(r.by_id_dir) if "Amazon" in n]  # the old hard-coded link is absent
    mirror, lvm, idle = (ebs_id_from_serial(ser[d]) for d in ("nvme1n1", "nvme2n1", "nvme3n1"))
    res = r.volume_mounts([mirror, lvm, idle])
    assert [e["volume_id"] for e in res] == [mirror, lvm, idle]
    assert res[0] == dict(volume_id=mirror, devices=[os.path.join(r.dev_root, "nvme1n1")], present=True,
                          mountpoints=["/srv/share", "/mnt/md1"])  # the bind mount first, the nested tmpfs not at all
    assert res[1]["devices"] == [os.path.join(r.dev_root, "nvme2n1")] and res[1]["mountpoints"] == ["/app"]  # via dm-0
    assert res[2] == dict(volume_id=idle, devices=[os.path.join(r.dev_root, "nvme3n1")], mountpoints=[], present=True)


def test_given_order_undashed_ids_and_absent_volumes(tmp_path):
    r = build_tree(tmp_path, "qemu_nvme.tree")
    ser = serials(tmp_path)
    absent = "vol-0abcabcabcabcabca"
    res = r.volume_mounts([absent, ser["nvme1n1"], ser["nvme1n1"]])
    assert res[0] == dict(volume_id=absent, devices=[], mountpoints=[], present=False)
    assert res[1]["volume_id"] == ebs_id_from_serial(ser["nvme1n1"]) and res[1]["present"]
    assert res[2] == res[1]
    assert r.volume_mounts([]) == []
    assert r.volume_mounts([absent]) == [res[0]]


def test_invalid_ids_are_refused_all_together(tmp_path):
    r = build_tree(tmp_path, "qemu_nvme.tree")
    ser = serials(tmp_path)
    with pytest.raises(StillpointError) as e:
        r.volume_mounts([ser["nvme1n1"], "nvme1n1", "/dev/sdf", ser["nvme0n1"]])
    assert e.value.details["invalid"] == ["nvme1n1", "/dev/sdf", ser["nvme0n1"]]
    for bad in e.value.details["invalid"]:
        assert repr(bad) in e.value.msg
    assert "vol-0123456789abcdef0" in e.value.msg


def test_by_id_links_only_and_unmount_order(tmp_path):
    """Nitro without the serial attribute: the Amazon by-id links find the disk; a bind mount made later is
    listed before the mount it binds."""
    r = build_tree(tmp_path, "nitro_nvme.tree")
    ser = serials(tmp_path)
    for ctrl in tmp_path.glob("sys/devices/pci0000:00/*/nvme/nvme*/serial"):
        ctrl.unlink()
    (data,) = r.volume_mounts([ser["nvme1n1"]])
    assert data["devices"] == [os.path.join(r.dev_root, "nvme1n1")]
    assert data["mountpoints"] == ["/srv/export", "/data"]
    (root,) = r.volume_mounts([ser["nvme0n1"]])
    assert root["mountpoints"] == ["/"]  # through the partition nvme0n1p1


def test_md_lvm_and_btrfs_members(tmp_path):
    r = build_tree(tmp_path, "raid_stacks.tree")
    ser = serials(tmp_path)
    got = {d: e["mountpoints"] for d, e in zip(("nvme1n1", "nvme2n1", "nvme4n1", "nvme6n1", "nvme8n1"), r.volume_mounts(
        [ser[d] for d in ("nvme1n1", "nvme2n1", "nvme4n1", "nvme6n1", "nvme8n1")]))}
    assert got == {"nvme1n1": ["/data"], "nvme2n1": ["/data"],  # LVM over md over disks
                   "nvme4n1": ["/logs"],  # dm over an NVMe subsystem head
                   "nvme6n1": ["/archive"],  # md over partitions
                   "nvme8n1": ["/pool"]}  # btrfs member (anonymous st_dev)


def test_stale_and_virtual_mounts_are_skipped(tmp_path):
    r = build_tree(tmp_path, "qemu_nvme.tree")
    ser = serials(tmp_path)
    with open(r.mountinfo_path, "a") as f:  # a mount whose device left sysfs, and an overlay
        f.write("120 22 8:16 / /gone rw,relatime shared:60 - ext4 /dev/sdb rw\n"
                "121 22 0:60 / /merged rw,relatime shared:61 - overlay overlay rw,lowerdir=/mnt/md1/l\n")
    (mirror,) = r.volume_mounts([ser["nvme1n1"]])
    assert mirror["mountpoints"] == ["/srv/share", "/mnt/md1"]


def test_stacked_mounts_on_one_path_are_listed_once_each(tmp_path):
    r = build_tree(tmp_path, "qemu_nvme.tree")
    ser = serials(tmp_path)
    with open(r.mountinfo_path, "a") as f:  # the data partition mounted again over its own mountpoint
        f.write("130 90 259:4 / /mnt/md1 rw,relatime shared:70 - ext4 /dev/nvme1n1p2 rw\n")
    (mirror,) = r.volume_mounts([ser["nvme1n1"]])
    assert mirror["mountpoints"] == ["/mnt/md1", "/srv/share", "/mnt/md1"]
