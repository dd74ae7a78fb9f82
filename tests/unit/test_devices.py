# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_devices: mountinfo parsing, the sysfs walk to whole disks, and volume ids.

Two kinds of test: fake trees rebuilt in tmp_path from the layouts in fixtures/devices/ (Nitro
NVMe, Xen, md/LVM/btrfs stacks), and the real kernel of this host with loop devices standing in
for EBS volumes through a by-id directory of the test's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import (
    DeviceResolver,
    ebs_id_from_serial,
    normalize_device_name,
    parse_mountinfo,
    read_mountinfo,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "devices")


def load_layout(name):
    """(mountinfo text, tree lines) of a fixture file."""
    section, mountinfo, tree = None, [], []
    with open(os.path.join(FIXTURES, name)) as f:
        for line in f.read().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line in ("[mountinfo]", "[tree]"):
                section = line
            elif section == "[mountinfo]":
                mountinfo.append(line)
            elif section == "[tree]":
                tree.append(line)
    return "\n".join(mountinfo) + "\n", tree


def build_tree(root, name):
    """Rebuild a fixture layout under ``root``; return a resolver looking at it."""
    mountinfo, tree = load_layout(name)
    root = str(root)

    def at(path):
        return os.path.join(root, path.lstrip("/"))

    for line in tree:
        if " -> " in line:
            path, target = line.split(" -> ", 1)
            os.makedirs(os.path.dirname(at(path)), exist_ok=True)
            os.symlink(target, at(path))
        elif " = " in line:
            path, text = line.split(" = ", 1)
            os.makedirs(os.path.dirname(at(path)), exist_ok=True)
            with open(at(path), "w") as f:
                f.write(text + "\n")
        elif line.endswith("/"):
            os.makedirs(at(line), exist_ok=True)
        else:
            raise AssertionError("bad fixture line in %s: %r" % (name, line))
    os.makedirs(at("/proc/self"), exist_ok=True)
    with open(at("/proc/self/mountinfo"), "w") as f:
        f.write(mountinfo)
    return DeviceResolver(
        sys_root=at("/sys"), dev_root=at("/dev"), by_id_dir=at("/dev/disk/by-id"),
        mountinfo_path=at("/proc/self/mountinfo"),
    )


def serials(root):
    """{disk: serial} as the fake tree holds it (to compare with, not to hard-code)."""
    out = {}
    for disk in os.listdir(os.path.join(root, "sys", "block")):
        p = os.path.join(root, "sys", "block", disk, "device", "serial")
        if os.path.exists(p):
            with open(p) as f:
                out[disk] = f.read().strip()
    return out


# --- pure functions -------------------------------------------------------------------------


def test_ebs_id_from_serial_forms():
    assert ebs_id_from_serial("vol0123456789abcdef0") == "vol-0123456789abcdef0"
    assert ebs_id_from_serial("vol-0123456789abcdef0") == "vol-0123456789abcdef0"
    assert ebs_id_from_serial(b"vol0123456789abcdef0\n") == "vol-0123456789abcdef0"
    # the 20-byte NVMe serial field is space padded; old 8-digit ids need the padding
    assert ebs_id_from_serial("vol1a2b3c4d         ") == "vol-1a2b3c4d"
    for bad in (None, "", "AWS22C0B9F5A6B1D4E93", "vol", "vol-xyz", "vol0123456789abcdef", "snap-0123456789abcdef0",
                "VOL0123456789ABCDEF0", "vol0123456789abcdef0_1"):
        assert ebs_id_from_serial(bad) is None, bad


def test_normalize_device_name():
    assert normalize_device_name("/dev/xvdf") == "/dev/sdf"
    assert normalize_device_name("xvdf") == "/dev/sdf"
    assert normalize_device_name("sdf") == "/dev/sdf"
    assert normalize_device_name("/dev/sdf") == "/dev/sdf"
    assert normalize_device_name("/dev/xvda1") == "/dev/sda1"
    assert normalize_device_name("xvdba") == "/dev/sdba"
    for bad in ("nvme1n1", "/dev/nvme0n1p1", "loop3", "", None, "/dev/vda"):
        with pytest.raises(StillpointError) as e:
            normalize_device_name(bad)
        assert "volume id" in e.value.msg


def test_parse_mountinfo_fields_and_escapes():
    text, _tree = load_layout("nitro_nvme.tree")
    mounts = parse_mountinfo(text)
    by_mp = {m["mountpoint"]: m for m in mounts}
    assert "/mnt/backup area" in by_mp  # \040 decoded
    data = by_mp["/data"]
    assert (data["majmin"], data["major"], data["minor"]) == ("259:3", 259, 3)
    assert data["fstype"] == "xfs" and data["source"] == "/dev/nvme1n1"
    assert data["optional"] == ["shared:45"]
    assert "noquota" in data["super_options"] and data["read_only"] is False
    assert by_mp["/srv/export"]["root"] == "/export"
    assert [m["mount_id"] for m in mounts] == sorted(m["mount_id"] for m in mounts)


def test_parse_mountinfo_optional_fields_vary_and_errors():
    text = ("36 35 98:0 /mnt1 /mnt/parent\\134x rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n"
            "\n"
            "37 36 0:40 / /mnt/t ro - tmpfs none ro\n")
    a, b = parse_mountinfo(text)
    assert a["mountpoint"] == "/mnt/parent\\x" and a["optional"] == ["master:1", "shared:7"]
    assert a["fstype"] == "ext3" and a["source"] == "/dev/root"
    assert b["read_only"] is True and b["optional"] == [] and b["major"] == 0
    with pytest.raises(StillpointError) as e:
        parse_mountinfo("this is not mountinfo\n")
    assert "line 1" in e.value.msg


def test_parse_mountinfo_bytes_not_utf8():
    raw = b"40 22 259:3 / /srv/caf\xe9\043x\011y rw - ext4 /dev/nvme1n1 rw\n"
    (m,) = parse_mountinfo(raw)
    assert m["mountpoint"] == os.fsdecode(b"/srv/caf\xe9#x\ty")
    assert os.fsencode(m["mountpoint"]) == b"/srv/caf\xe9#x\ty"
    assert m["dev"] == m["majmin"] == "259:3"


def test_read_mountinfo_of_this_host():
    mounts = read_mountinfo()
    root = [m for m in mounts if m["mountpoint"] == "/"][-1]
    st = os.stat("/")
    assert (root["major"], root["minor"]) == (os.major(st.st_dev), os.minor(st.st_dev))
    with pytest.raises(StillpointError) as e:
        read_mountinfo("/nonexistent/mountinfo")
    assert "/nonexistent/mountinfo" in e.value.msg


# --- fake trees -----------------------------------------------------------------------------


def test_nitro_partitioned_root_and_whole_disk(tmp_path):
    r = build_tree(tmp_path, "nitro_nvme.tree")
    ser = serials(tmp_path)
    assert r.leaf_disks("259:1") == ["nvme0n1"]  # partition -> parent disk
    assert r.leaf_disks("259:3") == ["nvme1n1"]
    assert r.mount_for("/data/db/base")["mountpoint"] == "/data"
    assert r.mount_for("/srv/export")["root"] == "/export"  # the bind mount, not /
    assert r.mount_for("/etc/hosts")["mountpoint"] == "/"
    res = r.resolve(["/", "/data", "/mnt/backup area", "/srv/export"])
    assert [e["mountpoint"] for e in res] == ["/", "/data", "/mnt/backup area", "/srv/export"]
    assert res[0]["volume_ids"] == [ebs_id_from_serial(ser["nvme0n1"])]
    assert res[1]["volume_ids"] == [ebs_id_from_serial(ser["nvme1n1"])]
    assert res[2]["volume_ids"] == [ebs_id_from_serial(ser["nvme3n1"])]
    assert res[3]["volume_ids"] == res[1]["volume_ids"]
    assert res[1]["disks"] == [dict(name="nvme1n1", volume_id=res[1]["volume_ids"][0],
                                    dev_path=os.path.join(r.dev_root, "nvme1n1"))]
    assert res[1]["fstype"] == "xfs" and res[1]["source"] == "/dev/nvme1n1"


def test_nitro_instance_store_and_non_mountpoints_reported_together(tmp_path):
    r = build_tree(tmp_path, "nitro_nvme.tree")
    assert r.volume_id("nvme2n1") is None
    with pytest.raises(StillpointError) as e:
        r.resolve(["/data", "/scratch", "/data/db", "/proc"])
    msg = e.value.msg
    problems = e.value.details["problems"]
    assert len(problems) == 3 and msg.startswith("Cannot map 3 of 4 mountpoints")
    assert "nvme2n1" in problems[0] and "instance-store" in problems[0] and "cannot be snapshotted" in problems[0]
    assert "/data/db is not a mountpoint" in problems[1] and "mounted at /data" in problems[1]
    assert "/proc" in problems[2] and "not on a block device" in problems[2]
    for p in problems:
        assert p in msg


def test_by_id_links_when_no_serial(tmp_path):
    r = build_tree(tmp_path, "nitro_nvme.tree")
    ser = serials(tmp_path)
    # an older driver without the serial attribute: the udev links must still identify disks
    for ctrl in tmp_path.glob("sys/devices/pci0000:00/*/nvme/nvme*/serial"):
        ctrl.unlink()
    by_id = r.by_id_volumes()
    assert by_id == {d: ebs_id_from_serial(ser[d]) for d in ("nvme0n1", "nvme1n1", "nvme3n1")}
    # ("-partN" links point at partitions and name no disk; "_1" namespace links name the disk)
    assert r.volume_id("nvme1n1") == ebs_id_from_serial(ser["nvme1n1"])
    assert r.volume_id("nvme2n1") is None
    assert r.resolve(["/"])[0]["volume_ids"] == [ebs_id_from_serial(ser["nvme0n1"])]


def test_serial_wins_over_a_contradicting_link(tmp_path):
    r = build_tree(tmp_path, "nitro_nvme.tree")
    ser = serials(tmp_path)
    by_id = tmp_path / "dev/disk/by-id"
    for link in by_id.glob("nvme-Amazon_Elastic_Block_Store_%s*" % ser["nvme1n1"]):
        link.unlink()
    os.symlink("../../nvme1n1", str(by_id / "nvme-Amazon_Elastic_Block_Store_vol0999999999999999a"))
    assert r.volume_id("nvme1n1") == ebs_id_from_serial(ser["nvme1n1"])
    assert r.devices_for_volume("vol-0999999999999999a") == [os.path.join(r.dev_root, "nvme1n1")]


def test_devices_for_volume(tmp_path):
    r = build_tree(tmp_path, "nitro_nvme.tree")
    ser = serials(tmp_path)
    vol = ebs_id_from_serial(ser["nvme3n1"])
    assert r.devices_for_volume(vol) == [os.path.join(r.dev_root, "nvme3n1")]
    assert r.devices_for_volume(vol.replace("-", "")) == [os.path.join(r.dev_root, "nvme3n1")]
    assert r.devices_for_volume("vol-0abcabcabcabcabca") == []
    with pytest.raises(StillpointError):
        r.devices_for_volume("nvme3n1")


def test_xen_needs_attachments(tmp_path):
    r = build_tree(tmp_path, "xen_hvm.tree")
    assert r.leaf_disks("202:1") == ["xvda"]
    with pytest.raises(StillpointError) as e:
        r.resolve(["/", "/data"])
    problems = e.value.details["problems"]
    assert len(problems) == 2
    assert "Xen" in problems[1] and "/dev/sdf" in problems[1] and "attachments" in problems[1]
    attachments = {"/dev/sda1": "vol-0aaaaaaaaaaaaaaa1", "/dev/sdf": "vol-0fffffffffffffff2",
                   "xvdg": "vol-0bbbbbbbbbbbbbbb3"}
    res = r.resolve(["/", "/data", "/logs"], attachments=attachments)
    got = {e["mountpoint"]: e["volume_ids"] for e in res}
    assert got == {"/": [attachments["/dev/sda1"]], "/data": [attachments["/dev/sdf"]],
                   "/logs": [attachments["xvdg"]]}
    # a mapping for another device name never matches
    assert r.volume_id("xvdf", attachments={"/dev/sdg": "vol-0fffffffffffffff2"}) is None


def test_md_lvm_dm_and_btrfs_stacks(tmp_path):
    r = build_tree(tmp_path, "raid_stacks.tree")
    ser = serials(tmp_path)

    def vols(*disks):
        return [ebs_id_from_serial(ser[d]) for d in disks]

    assert r.leaf_disks("9:0") == ["nvme1n1", "nvme2n1"]
    assert r.leaf_disks("253:0") == ["nvme1n1", "nvme2n1"]  # LVM over md over disks
    assert r.leaf_disks("253:1") == ["nvme3n1", "nvme4n1"]  # dm over two NVMe subsystem heads
    assert r.leaf_disks("9:1") == ["nvme5n1", "nvme6n1"]  # md over partitions
    res = {e["mountpoint"]: e for e in r.resolve(["/data", "/logs", "/archive", "/pool", "/"])}
    assert res["/data"]["volume_ids"] == vols("nvme1n1", "nvme2n1")
    assert res["/logs"]["volume_ids"] == vols("nvme3n1", "nvme4n1")
    assert res["/archive"]["volume_ids"] == vols("nvme5n1", "nvme6n1")
    assert res["/pool"]["volume_ids"] == vols("nvme7n1", "nvme8n1")
    assert res["/"]["volume_ids"] == vols("nvme0n1")
    assert res["/data"]["source"] == "/dev/mapper/vg_data-lv_data"
    assert [d["name"] for d in res["/logs"]["disks"]] == ["nvme3n1", "nvme4n1"]
    assert r.devices_for_volume(vols("nvme4n1")[0]) == [os.path.join(r.dev_root, "nvme4n1")]


def test_one_member_without_volume_id_fails_the_whole_array(tmp_path):
    r = build_tree(tmp_path, "raid_stacks.tree")
    (tmp_path / "sys/devices/pci0000:00/0000:00:1b.0/nvme/nvme2/serial").write_text("AWS0000INSTANCESTORE\n")
    (tmp_path / "sys/devices/pci0000:00/0000:00:1b.0/nvme/nvme2/model").write_text(
        "Amazon EC2 NVMe Instance Storage\n")
    with pytest.raises(StillpointError) as e:
        r.resolve(["/data", "/logs"])
    (problem,) = e.value.details["problems"]
    assert problem.startswith("/data: disk nvme2n1") and "instance-store" in problem


def test_slaves_cycle_is_refused(tmp_path):
    r = build_tree(tmp_path, "raid_stacks.tree")
    md0 = tmp_path / "sys/devices/virtual/block/md0/slaves"
    for link in md0.iterdir():
        link.unlink()
    os.symlink("../../dm-0", str(md0 / "dm-0"))
    with pytest.raises(StillpointError) as e:
        r.leaf_disks("253:0")
    assert "deeper than" in e.value.msg


def test_unknown_majmin_and_no_block_device(tmp_path):
    r = build_tree(tmp_path, "xen_hvm.tree")
    with pytest.raises(StillpointError) as e:
        r.leaf_disks("8:16")
    assert "8:16" in e.value.msg
    with pytest.raises(StillpointError) as e:
        r.resolve(["/proc"])
    assert "proc filesystem" in e.value.msg


# --- the real kernel: loop devices as EBS stand-ins -------------------------------------------

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4")
    or not os.path.exists("/dev/loop-control"),
    reason="needs root, losetup, mkfs.ext4 and /dev/loop-control",
)

SIZE = 16 * 1024 * 1024


def _run(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout.strip()


def _image(path, partitioned):
    with open(path, "wb") as f:
        f.truncate(SIZE)
        if partitioned:  # an MBR with one Linux partition from sector 2048 to the end
            mbr = bytearray(512)
            mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\x00\x21\x00", 0x83, b"\xfe\xff\xff", 2048,
                                       SIZE // 512 - 2048)
            mbr[510:512] = b"\x55\xaa"
            f.write(mbr)


@contextlib.contextmanager
def loop_disks(tmp_path):
    """Two loop devices as EBS stand-ins: ``(plain disk, partitioned disk, its partition 1, mounted)``.
    Mountpoints the caller appends to ``mounted`` are unmounted on the way out (the last first), then the
    loop devices are detached."""
    loops, mounted = [], []
    try:
        plain, parted = str(tmp_path / "plain.img"), str(tmp_path / "parted.img")
        _image(plain, False)
        _image(parted, True)
        loops.append(_run("losetup", "--find", "--show", plain))
        loops.append(_run("losetup", "--find", "--show", "--partscan", parted))
        lplain, lparted = loops
        if not os.path.exists("/sys/class/block/%sp1" % os.path.basename(lparted)):
            _run("partx", "-a", lparted)  # kernels without the msdos parser: add it by BLKPG
        yield lplain, lparted, lparted + "p1", mounted
    finally:
        for mp in reversed(mounted):
            subprocess.run(["umount", mp], capture_output=True, check=False)
        for dev in reversed(loops):
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@needs_loop
def test_real_loop_devices(tmp_path):
    with loop_disks(tmp_path) as (lplain, lparted, part, mounted):
        _run("mkfs.ext4", "-q", "-F", lplain)
        _run("mkfs.ext4", "-q", "-F", part)
        m1, m2 = tmp_path / "m1", tmp_path / "m2 with space"
        for dev, mp in ((lplain, m1), (part, m2)):
            mp.mkdir()
            _run("mount", "-t", "ext4", dev, str(mp))
            mounted.append(str(mp))

        by_id = tmp_path / "by-id"
        by_id.mkdir()
        vol1, vol2 = "vol0" + os.urandom(8).hex(), "vol0" + os.urandom(8).hex()
        os.symlink(lplain, str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol1)))
        os.symlink(lparted, str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol2)))
        os.symlink(part, str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol2 + "-part1")))
        r = DeviceResolver(by_id_dir=str(by_id))

        st = os.stat(lplain)
        majmin = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        assert r.leaf_disks(majmin) == [os.path.basename(lplain)]
        assert r.volume_id(os.path.basename(lparted)) == ebs_id_from_serial(vol2)
        res = r.resolve([str(m1), str(m2) + "/"])
        assert [e["mountpoint"] for e in res] == [str(m1), str(m2)]
        assert res[0]["volume_ids"] == [ebs_id_from_serial(vol1)] and res[0]["source"] == lplain
        assert res[1]["disks"] == [dict(name=os.path.basename(lparted), volume_id=ebs_id_from_serial(vol2),
                                        dev_path=lparted)]
        assert res[1]["fstype"] == "ext4" and res[1]["source"] == part
        assert r.devices_for_volume(ebs_id_from_serial(vol1)) == [lplain]
        assert r.devices_for_volume(vol2) == [lparted]

        # without its link the partitioned disk is a non-EBS disk: refused, by name
        os.unlink(str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol2)))
        with pytest.raises(StillpointError) as e:
            r.resolve([str(m1), str(m2), str(tmp_path)])
        problems = e.value.details["problems"]
        assert len(problems) == 2
        assert os.path.basename(lparted) in problems[0] and "cannot be snapshotted" in problems[0]
        assert "is not a mountpoint" in problems[1]
        assert r.devices_for_volume(vol2) == []
