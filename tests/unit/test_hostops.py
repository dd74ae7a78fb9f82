# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""_hostops and the array_host module: md/LVM command sequences, parsing, refusals.

md and device-mapper cannot run on this host's kernel, so the md/LVM paths run against recorded
command output (fixtures/hostops/, written in the tools' own formats) in an ordered (rc, stdout,
stderr) sequence, over a fake /sys, /dev and mount table in tmp_path that the recorded commands
update the way the real ones would (an assemble adds the array's holders, a mount a mountinfo
line). The same code runs on real loop filesystems in tests/integration/test_array_host.py.
"""

from __future__ import annotations

import os

import pytest

from ansible.module_utils import basic

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CommandRunner
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import visible_mount
from ansible_collections.stillpoint.snapshots.plugins.module_utils._hostops import HostOps
from ansible_collections.stillpoint.snapshots.plugins.module_utils._hostops import parse_fuser_pids
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import Layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import clone_layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import validate_volume_ids
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import lvm_uuid_key
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import parse_lvm_report
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_detail_devices
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_uuid_key
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import parse_export
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _hostops as hostops_mod
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import Hooks
from ansible_collections.stillpoint.snapshots.plugins.modules import array_host
from tests.unit.utils import AnsibleExitJson
from tests.unit.utils import AnsibleFailJson
from tests.unit.utils import patched_exits
from tests.unit.utils import set_module_args

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hostops")

MD_UUID = "5f3c2a1e:9b0d4e77:1c2f3a4b:5d6e7f80"
VG_UUID = "y1fQ0H-bAoM-Bv7x-IVtK-wIHN-2gSU-ZsY4vb"
# member i's volume; the md order (role 0..3) is nvme3n1, nvme1n1, nvme4n1, nvme2n1
VOLS = ["vol-04ca1c73a7c6abd23", "vol-014ee351274d08bc4", "vol-072d56e31628d4c64", "vol-02e02c954ab43a22e"]
DISKS = ["nvme3n1", "nvme1n1", "nvme4n1", "nvme2n1"]


def section(filename, name):
    """(rc, stdout, stderr) of section [name] of a fixture file."""
    current, lines, rc, err = None, {}, {}, {}
    with open(os.path.join(FIXTURES, filename)) as f:
        for line in f.read().splitlines():
            if line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1]
                lines[current] = []
                continue
            if current is None:
                continue
            if line.startswith("rc="):
                rc[current] = int(line[3:])
            elif line.startswith("stderr="):
                err[current] = line[len("stderr="):] + "\n"
            else:
                lines[current].append(line)
    assert name in lines, "no section [%s] in %s" % (name, filename)
    out = "\n".join(lines[name]).strip("\n")
    return rc.get(name, 0), (out + "\n") if out else "", err.get(name, "")


# -- a fake host ----------------------------------------------------------------------------


class FakeHost:
    """/sys, /dev, by-id, mountinfo and /proc under tmp_path, enough for DeviceResolver and HostOps."""

    def __init__(self, root):
        self.root = str(root)
        self.sys = os.path.join(self.root, "sys")
        self.dev = os.path.join(self.root, "dev")
        self.by_id = os.path.join(self.root, "by-id")
        self.proc = os.path.join(self.root, "proc")
        self.mountinfo = os.path.join(self.root, "mountinfo")
        for d in (self.sys, self.dev, self.by_id, self.proc, os.path.join(self.sys, "dev", "block"),
                  os.path.join(self.sys, "class", "block")):
            os.makedirs(d, exist_ok=True)
        self.lines = ["22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw"]
        self._write()

    def _write(self):
        with open(self.mountinfo, "w") as f:
            f.write("\n".join(self.lines) + "\n")

    def d(self, name):
        return os.path.join(self.dev, name)

    def disk(self, name, majmin, serial=None):
        base = os.path.join(self.sys, "block", name)
        os.makedirs(os.path.join(base, "holders"), exist_ok=True)
        os.makedirs(os.path.join(base, "slaves"), exist_ok=True)
        with open(os.path.join(base, "dev"), "w") as f:
            f.write(majmin + "\n")
        if serial:
            os.makedirs(os.path.join(base, "device"), exist_ok=True)
            with open(os.path.join(base, "device", "serial"), "w") as f:
                f.write(serial.replace("-", "") + "    \n")
        for link, target in ((os.path.join(self.sys, "class", "block", name), "../../block/" + name),
                             (os.path.join(self.sys, "dev", "block", majmin), "../../block/" + name)):
            if not os.path.lexists(link):
                os.symlink(target, link)
        open(self.d(name), "a").close()

    def members(self):
        for i, name in enumerate(DISKS):
            self.disk(name, "259:%d" % (10 + i), serial=VOLS[i])

    def md(self, name="md0", majmin="9:0", state="clear"):
        self.disk(name, majmin)
        os.makedirs(os.path.join(self.sys, "block", name, "md"), exist_ok=True)
        self.md_state(name, state)

    def md_state(self, name, state):
        with open(os.path.join(self.sys, "block", name, "md", "array_state"), "w") as f:
            f.write(state + "\n")

    def stack(self, upper, lowers):
        """``upper`` holds ``lowers`` (holders/ and slaves/ links, as the kernel keeps them)."""
        for low in lowers:
            os.symlink("../../" + upper, os.path.join(self.sys, "block", low, "holders", upper))
            os.symlink("../../" + low, os.path.join(self.sys, "block", upper, "slaves", low))

    def unstack(self, upper):
        for low in os.listdir(os.path.join(self.sys, "block", upper, "slaves")):
            os.unlink(os.path.join(self.sys, "block", low, "holders", upper))
            os.unlink(os.path.join(self.sys, "block", upper, "slaves", low))

    def lv(self, vg="data", lv="pg", dm="dm-0", majmin="253:0", on=("md0",)):
        self.disk(dm, majmin)
        self.stack(dm, on)
        os.makedirs(os.path.join(self.dev, vg), exist_ok=True)
        if not os.path.lexists(os.path.join(self.dev, vg, lv)):
            os.symlink("../" + dm, os.path.join(self.dev, vg, lv))

    def no_lv(self, vg="data", lv="pg", dm="dm-0"):
        self.unstack(dm)
        os.unlink(os.path.join(self.dev, vg, lv))

    def mount(self, majmin, mountpoint, fstype, source):
        self.lines.append("%d 22 %s / %s rw,noatime shared:%d - %s %s rw"
                          % (100 + len(self.lines), majmin, mountpoint, len(self.lines) + 1, fstype, source))
        self._write()

    def umount(self, mountpoint):
        for i in range(len(self.lines) - 1, -1, -1):
            if self.lines[i].split(" ")[4] == mountpoint:
                del self.lines[i]
                break
        self._write()

    def process(self, pid, comm):
        os.makedirs(os.path.join(self.proc, str(pid)), exist_ok=True)
        with open(os.path.join(self.proc, str(pid), "comm"), "w") as f:
            f.write(comm + "\n")

    def resolver(self):
        return DeviceResolver(sys_root=self.sys, dev_root=self.dev, by_id_dir=self.by_id,
                              mountinfo_path=self.mountinfo)


class Recorded:
    """run_command stand-in: an ordered list of (argv, rc, stdout, stderr, effect)."""

    def __init__(self, script=()):
        self.script = list(script)
        self.calls = []

    def __call__(self, argv, **kwargs):
        assert kwargs.get("environ_update", {}).get("LC_ALL") == "C"
        self.calls.append(list(argv))
        assert self.script, "unexpected command: %s" % argv
        want, rc, out, err, effect = self.script.pop(0)
        assert list(argv) == want, "expected %s\n     got %s" % (want, argv)
        if effect:
            effect()
        return rc, out, err

    def done(self):
        assert not self.script, "commands expected but not run: %s" % [s[0] for s in self.script]


def cmd(argv, result=(0, "", ""), effect=None):
    rc, out, err = result
    return (list(argv), rc, out, err, effect)


def ok(out=""):
    return (0, out, "")


def ops_for(host, script, check_mode=False, claimed=None):
    rec = Recorded(script)
    ops = HostOps(CommandRunner(rec), host.resolver(), check_mode=check_mode, which=lambda name: name,
                  claimed=claimed or (lambda path: False), sleep=lambda s: None, proc_root=host.proc)
    return ops, rec


def hooks_for(rec, stop=("systemctl", "stop", "pg"), start=("systemctl", "start", "pg")):
    return Hooks(lambda argv: rec(argv, environ_update={"LC_ALL": "C"}), pre=list(stop), post=list(start),
                 timeout=30, on_failure="continue", timeout_bin="timeout")


def md_lvm_layout(mountpoint):
    return Layout({
        "md": [{"device": "/dev/md0", "uuid": MD_UUID, "level": "raid0", "chunk": "512K", "members": [0, 1, 2, 3]}],
        "lvm": [{"vg": "data", "uuid": VG_UUID, "pvs": ["/dev/md0"], "lvs": ["pg"]}],
        "filesystems": [{"mountpoint": mountpoint, "fstype": "xfs", "options": "rw,noatime", "members": [0, 1, 2, 3],
                         "device": "/dev/data/pg"}],
        "kind": "ignored",
    })


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path)
    h.members()
    h.md()
    h.mp = os.path.join(h.root, "srv", "pg")
    os.makedirs(h.mp)
    return h


def examine_all(host, names=("examine-role0", "examine-role1", "examine-role2", "examine-role3")):
    return [cmd(["mdadm", "--examine", "--export", host.d(DISKS[i])], section("mdadm.txt", names[i]))
            for i in range(4)]


def assembled(host):
    def effect():
        host.md_state("md0", "clean")
        host.stack("md0", DISKS)
    return effect


def activated(host):
    return host.lv


def mounted(host):
    return lambda: host.mount("253:0", host.mp, "xfs", "/dev/mapper/data-pg")


# -- parsing --------------------------------------------------------------------------------


def test_examine_export_parses_and_uuid_forms_compare():
    rc, out, _err = section("mdadm.txt", "examine-role2")
    info = parse_export(out)
    assert rc == 0
    assert info["MD_LEVEL"] == "raid0" and info["MD_DEVICES"] == "4" and info["MD_NAME"] == "db1:0"
    assert info["MD_UUID"] == MD_UUID
    assert md_uuid_key(info["MD_UUID"]) == md_uuid_key("5F3C2A1E-9B0D-4E77-1C2F-3A4B5D6E7F80")
    assert md_uuid_key(MD_UUID) != md_uuid_key(parse_export(section("mdadm.txt", "examine-foreign")[1])["MD_UUID"])
    assert parse_export("MD_NAME='db1:0'\n\nnoise\n") == {"MD_NAME": "db1:0"}


def test_detail_export_members_by_role():
    detail = parse_export(section("mdadm.txt", "detail-md0")[1])
    devices = md_detail_devices(detail)
    assert [d["dev"] for d in devices] == ["/dev/" + n for n in DISKS]
    assert [d["role"] for d in devices] == [0, 1, 2, 3]
    spare = md_detail_devices({"MD_DEVICE_ev_sdc_ROLE": "spare", "MD_DEVICE_ev_sdc_DEV": "/dev/sdc",
                               "MD_DEVICE_ev_sdb_ROLE": "0", "MD_DEVICE_ev_sdb_DEV": "/dev/sdb"})
    assert spare == [{"dev": "/dev/sdb", "role": 0}, {"dev": "/dev/sdc", "role": "spare"}]


def test_lvm_reports_parse():
    vgs = parse_lvm_report(section("lvm.txt", "vgs")[1], "vg")
    assert [(v["vg_name"], v["vg_uuid"]) for v in vgs] == [
        ("data", VG_UUID), ("sysvg", "Qm3LdA-8kTf-2Wc9-pZ0x-Hn4e-Ry7u-Gt5sVb")]
    assert parse_lvm_report(section("lvm.txt", "vgs-empty")[1], "vg") == []
    assert parse_lvm_report(section("lvm.txt", "lvs-active")[1], "lv")[0]["lv_attr"][4] == "a"
    assert parse_lvm_report(section("lvm.txt", "pvs")[1], "pv")[0]["pv_name"] == "/dev/md0"
    assert lvm_uuid_key(VG_UUID) == "y1fQ0HbAoMBv7xIVtKwIHN2gSUZsY4vb"
    with pytest.raises(StillpointError, match="Cannot parse the LVM JSON report"):
        parse_lvm_report("  Volume group \"data\" not found\n", "vg")


def test_fuser_pids_from_the_captured_output():
    _rc, out, _err = section("fuser.txt", "stdout")
    assert parse_fuser_pids(out) == [22428]
    assert parse_fuser_pids("  1234c  77e 1234\n") == [1234, 77]
    assert parse_fuser_pids("") == []


# -- the layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"filesystems": [{"mountpoint": "/srv/a", "fstype": "xfs", "members": [0, 1]}]}, "only btrfs spans"),
    ({"filesystems": [{"mountpoint": "/srv/a", "fstype": "xfs", "members": [0], "device": "/dev/md9"}]},
     "neither an md device"),
    ({"filesystems": [{"mountpoint": "/srv/a", "fstype": "ext4", "members": [0]},
                      {"mountpoint": "/srv/a/", "fstype": "ext4", "members": [1]}]}, "appears twice"),
    ({"filesystems": [{"mountpoint": "srv", "fstype": "ext4", "members": [0]}]}, "absolute path"),
    ({"filesystems": [{"mountpoint": "/", "fstype": "ext4", "members": [0]}]}, "absolute path other than /"),
    ({"filesystems": [{"mountpoint": "/a", "fstype": "ext4", "members": ["0"]}]}, "list of member indexes"),
    ({"md": [{"device": "/dev/md0", "members": [0, 0]}]}, "names a member twice"),
    ({"md": [{"device": "md0", "members": [0]}]}, "md device path"),
    ({"lvm": [{"vg": "data", "pvs": ["/dev/md0"]}]}, "member indexes or md devices"),
    ({"filesystems": [{"mountpoint": "/a", "fstype": "ext4", "members": [0], "partition": 0}]}, "partition number"),
    ([], "expected a dict"),
])
def test_layout_refuses(raw, message):
    with pytest.raises(StillpointError, match=message):
        Layout(raw)


def test_layout_order_and_members():
    layout = Layout({"filesystems": [
        {"mountpoint": "/srv/a/logs", "fstype": "ext4", "members": [2]},
        {"mountpoint": "/srv/b", "fstype": "btrfs", "options": ["rw", "noatime"], "members": [3, 1]},
        {"mountpoint": "/srv/a", "fstype": "ext4", "options": "rw,relatime", "members": [0]},
    ]})
    assert [f["mountpoint"] for f in layout.mount_order()] == ["/srv/b", "/srv/a", "/srv/a/logs"]
    assert layout.member_indexes() == [0, 1, 2, 3]
    assert [f["kind"] for f in layout.filesystems] == ["plain", "btrfs-multi", "plain"]
    assert layout.filesystems[2]["options"] == ["rw", "relatime"]
    with pytest.raises(StillpointError, match=r"uses members \[3\] but volume_ids has only 3"):
        validate_volume_ids(VOLS[:3], layout, required=True)
    with pytest.raises(StillpointError, match="not an EBS volume id"):
        validate_volume_ids(["/dev/sdf"] + VOLS[1:], layout, required=True)
    with pytest.raises(StillpointError, match="twice"):
        validate_volume_ids([VOLS[0], VOLS[0].replace("-", "")] + VOLS[2:], layout, required=True)
    with pytest.raises(StillpointError, match="volume_ids is required"):
        validate_volume_ids([], layout, required=True)
    assert validate_volume_ids([], layout, required=False) == []


# -- up: md, LVM, xfs -----------------------------------------------------------------------


def assemble_md0(host):
    """mdadm assembling md0 over the four members in the recorded order, then its detail."""
    return [
        cmd(["mdadm", "--assemble", "/dev/md0"] + [host.d(n) for n in DISKS], effect=assembled(host)),
        cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-md0")),
    ]


def up_script(host, start=True):
    steps = examine_all(host) + assemble_md0(host) + [
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs")),
        cmd(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"], section("lvm.txt", "pvs")),
        cmd(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", "data"], section("lvm.txt", "lvs-inactive")),
        cmd(["vgchange", "-ay", "data"], effect=activated(host)),
        cmd(["xfs_repair", "-n", "/dev/data/pg"], ok("Phase 1 - find and verify superblock...\nNo modify flag set, "
                                                     "skipping filesystem flush and exiting.\n")),
        cmd(["mount", "-t", "xfs", "-o", "rw,noatime", "/dev/data/pg", host.mp], effect=mounted(host)),
    ]
    if start:
        steps.append(cmd(["timeout", "--kill-after=5", "30", "systemctl", "start", "pg"]))
    return steps


def test_up_assembles_in_recorded_order_activates_checks_mounts_then_starts(host):
    ops, rec = ops_for(host, up_script(host))
    result = ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec), device_timeout=1)
    rec.done()
    assert result["changed"] is True
    assert [s["what"].split(" ")[0] for s in result["actions"]] == [
        "wait", "assemble", "activate", "check", "mount", "start"]
    assert result["devices"] == [dict(member=i, volume_id=VOLS[i], device=host.d(DISKS[i])) for i in range(4)]
    assert result["mounts"] == [dict(mountpoint=host.mp, fstype="xfs", mounted=True, source="/dev/mapper/data-pg",
                                     majmin="253:0", options="rw,noatime")]
    assert all(isinstance(s["ms"], float) for s in result["actions"])
    assert ops.warnings == []


def test_up_again_changes_nothing(host):
    ops, rec = ops_for(host, up_script(host))
    ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()

    probes = [
        cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-md0")),
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs")),
        cmd(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"], section("lvm.txt", "pvs")),
        cmd(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", "data"], section("lvm.txt", "lvs-active")),
    ]
    ops, rec = ops_for(host, probes)
    again = ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec), run_hooks="on_change")
    rec.done()
    assert again["changed"] is False
    assert [s["what"] for s in again["actions"]] == ["wait for devices by volume id"]

    # run_hooks=always: the start hook runs (it must be idempotent) and is not a change
    ops, rec = ops_for(host, probes + [cmd(["timeout", "--kill-after=5", "30", "systemctl", "start", "pg"])])
    always = ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec), run_hooks="always")
    rec.done()
    assert always["changed"] is False and always["actions"][-1]["what"] == "start hook"


def test_up_refuses_a_member_of_another_array(host):
    script = examine_all(host, ("examine-role0", "examine-role1", "examine-foreign", "examine-role3"))
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError) as err:
        ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()  # nothing after the examines: no assemble, no hook
    assert "md UUID mismatch for /dev/md0" in err.value.msg
    assert "member 2 (%s) carries a1b2c3d4:e5f60718:293a4b5c:6d7e8f90" % host.d(DISKS[2]) in err.value.msg
    assert "nothing was assembled" in err.value.msg
    assert err.value.details["mismatched"] == [dict(member=2, device=host.d(DISKS[2]),
                                                    uuid="a1b2c3d4:e5f60718:293a4b5c:6d7e8f90")]
    assert ops.changed is False


def test_up_refuses_a_blank_member(host):
    script = examine_all(host)[:3] + [
        cmd(["mdadm", "--examine", "--export", host.d(DISKS[3])], section("mdadm.txt", "examine-none"))]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match=r"member 3 \(.*nvme2n1\) carries no md superblock .*No md superblock"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()


def test_up_refuses_when_md0_runs_another_array(host):
    host.md_state("md0", "clean")
    script = [cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-other"))]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match=r"/dev/md0 is running as array 0badc0de.* over /dev/xvdf, /dev/xvdg"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()


def test_up_takes_over_the_copy_udev_assembled_as_md127(host):
    host.md("md127", "9:127", state="clean")
    host.stack("md127", DISKS)

    def moved():
        host.unstack("md127")
        host.md_state("md127", "clear")

    script = examine_all(host) + [
        cmd(["mdadm", "--detail", "--export", "/dev/md127"], section("mdadm.txt", "detail-md127")),
        cmd(["mdadm", "--stop", "/dev/md127"], effect=moved),
    ] + assemble_md0(host)
    ops, rec = ops_for(host, script)
    layout = Layout({"md": [{"device": "/dev/md0", "uuid": MD_UUID, "members": [0, 1, 2, 3]}]})
    result = ops.up(layout, VOLS)
    rec.done()
    assert [s["cmd"][:3] for s in result["actions"][1:]] == [
        ["mdadm", "--stop", "/dev/md127"], ["mdadm", "--assemble", "/dev/md0"]]


def test_up_refuses_a_member_held_by_device_mapper(host):
    host.disk("dm-5", "253:5")
    host.stack("dm-5", [DISKS[1]])
    ops, rec = ops_for(host, examine_all(host))
    with pytest.raises(StillpointError, match=r"nvme1n1 \(member of /dev/md0\) is in use by dm-5"):
        ops.up(Layout({"md": [{"device": "/dev/md0", "uuid": MD_UUID, "members": [0, 1, 2, 3]}]}), VOLS)
    rec.done()


def test_up_warns_when_the_recorded_order_is_not_the_md_order(host):
    # the catalog says member 0 is role 0, but the detail shows the superblocks disagree
    swapped = [VOLS[1], VOLS[0]] + VOLS[2:]
    script = [
        cmd(["mdadm", "--examine", "--export", host.d(DISKS[1])], section("mdadm.txt", "examine-role1")),
        cmd(["mdadm", "--examine", "--export", host.d(DISKS[0])], section("mdadm.txt", "examine-role0")),
    ] + examine_all(host)[2:] + [
        cmd(["mdadm", "--assemble", "/dev/md0", host.d(DISKS[1]), host.d(DISKS[0])] + [host.d(n) for n in DISKS[2:]],
            effect=assembled(host)),
        cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-md0")),
    ]
    ops, rec = ops_for(host, script)
    ops.up(Layout({"md": [{"device": "/dev/md0", "uuid": MD_UUID, "members": [0, 1, 2, 3]}]}), swapped)
    rec.done()
    assert any("member 0 (%s) has md role 1, not 0" % host.d(DISKS[1]) in w for w in ops.warnings)


def test_up_refuses_another_volume_group_of_the_same_name(host):
    script = examine_all(host) + assemble_md0(host) + [
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs-other-uuid")),
    ]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match="Volume group data has UUID cT7eWq-.* but the layout records y1fQ0H-"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()  # no vgchange, no mount


def test_up_says_how_to_fix_an_invisible_volume_group(host):
    script = examine_all(host) + assemble_md0(host) + [
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs-empty")),
    ]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match="vgimportdevices data"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()


def test_up_check_mode_plans_and_runs_only_probes(host):
    with open(host.mountinfo) as f:
        before = f.read()
    ops, rec = ops_for(host, examine_all(host), check_mode=True)
    result = ops.up(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()
    assert result["changed"] is True and all(a["planned"] and a["rc"] is None for a in result["actions"])
    assert [p["cmd"] for p in result["actions"]] == [
        ["mdadm", "--assemble", "/dev/md0"] + [host.d(n) for n in DISKS],
        ["vgchange", "-ay", "data"],
        ["xfs_repair", "-n", "/dev/data/pg"],
        ["mount", "-t", "xfs", "-o", "rw,noatime", "/dev/data/pg", host.mp],
        ["timeout", "--kill-after=5", "30", "systemctl", "start", "pg"],
    ]
    with open(host.mountinfo) as f:
        assert f.read() == before
    assert all(os.listdir(os.path.join(host.sys, "block", n, "holders")) == [] for n in DISKS)
    assert not os.path.exists(os.path.join(host.dev, "data"))


def test_up_failed_check_mounts_nothing_and_names_the_volume(host):
    layout = Layout({"filesystems": [
        {"mountpoint": host.mp, "fstype": "ext4", "options": "rw", "members": [1]},
        {"mountpoint": host.mp + "/wal", "fstype": "ext4", "options": "rw", "members": [2]},
    ]})
    script = [
        cmd(["e2fsck", "-f", "-n", host.d(DISKS[1])], ok("clean\n")),
        cmd(["e2fsck", "-f", "-n", host.d(DISKS[2])],
            (4, "ext2fs_open2: Bad magic number in super-block\nFree blocks count wrong (25830, counted=26087).\n"
                "Fix? no\n", "e2fsck: Superblock invalid, trying backup blocks...\n")),
    ]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError) as err:
        ops.up(layout, VOLS, hooks=hooks_for(rec))
    rec.done()  # no mount, no hook
    assert "Read-only check of ext4 %s/wal on member 2 %s (%s) failed (e2fsck -f -n rc=4)" % (
        host.mp, VOLS[2], host.d(DISKS[2])) in err.value.msg
    assert "nothing was mounted" in err.value.msg and "Superblock invalid" in err.value.msg


XFS_LOG_ALERT = (1, "Phase 1 - find and verify superblock...\n", "Phase 2 - using internal log\n        - zero log...\n"
                 "ALERT: The filesystem has valuable metadata changes in a log which is being\nignored because the -n "
                 "option was used.  Expect spurious inconsistencies\nwhich may be resolved by first mounting the "
                 "filesystem to replay the log.\nsb_fdblocks 241959, counted 243680\n")


def test_up_replays_the_log_of_a_frozen_xfs_copy_then_checks_it_again(host, monkeypatch, tmp_path):
    """An XFS snapshotted while frozen always has a log to replay (seen in the lab): xfs_repair -n
    cannot judge it, so the copy is mounted once on a private directory, unmounted, and checked again."""
    private = str(tmp_path / "replay")
    os.mkdir(private)
    monkeypatch.setattr(hostops_mod.tempfile, "mkdtemp", lambda prefix: private)
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "xfs", "options": "rw", "members": [1]}]})
    dev = host.d(DISKS[1])
    script = [
        cmd(["xfs_repair", "-n", dev], XFS_LOG_ALERT),
        cmd(["mount", "-t", "xfs", "-o", "nouuid", dev, private]),
        cmd(["umount", private]),
        cmd(["xfs_repair", "-n", dev], ok("Phase 1 - find and verify superblock...\n")),
        cmd(["mount", "-t", "xfs", "-o", "rw", dev, host.mp], effect=lambda: host.mount("259:11", host.mp, "xfs", dev)),
    ]
    ops, rec = ops_for(host, script)
    result = ops.up(layout, VOLS, hooks=hooks_for(rec, stop=(), start=()))
    rec.done()
    assert [s["what"].split(" ")[0:2] for s in result["actions"] if s["what"].split(" ")[0] != "wait"] == [
        ["check", "xfs"], ["replay", "the"], ["unmount", private], ["check", "xfs"], ["mount", host.mp]]
    assert not os.path.exists(private)


def test_up_refuses_a_copy_whose_log_still_needs_a_replay(host, monkeypatch, tmp_path):
    private = str(tmp_path / "replay")
    os.mkdir(private)
    monkeypatch.setattr(hostops_mod.tempfile, "mkdtemp", lambda prefix: private)
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "xfs", "options": "rw", "members": [1]}]})
    dev = host.d(DISKS[1])
    script = [cmd(["xfs_repair", "-n", dev], XFS_LOG_ALERT), cmd(["mount", "-t", "xfs", "-o", "nouuid", dev, private]),
              cmd(["umount", private]), cmd(["xfs_repair", "-n", dev], XFS_LOG_ALERT)]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError) as err:
        ops.up(layout, VOLS, hooks=hooks_for(rec, stop=(), start=()))
    rec.done()  # nothing mounted at the mountpoint
    assert "still needs a replay" in err.value.msg and "nothing was mounted" in err.value.msg


def test_up_refuses_a_mountpoint_mounted_from_something_else(host):
    host.mount("0:45", host.mp, "tmpfs", "tmpfs")
    ops, rec = ops_for(host, [])
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "ext4", "members": [0]}]})
    with pytest.raises(StillpointError, match="already mounted from tmpfs .* Nothing was changed"):
        ops.up(layout, VOLS[:1])
    rec.done()


def test_up_waits_for_the_devices_by_volume_id(host):
    clock = [0.0]
    ops, rec = ops_for(host, [])
    ops.clock = lambda: clock[0]

    def sleep(seconds):
        clock[0] += seconds
        if clock[0] >= 1.0 and not os.path.exists(os.path.join(host.sys, "block", "nvme9n1")):
            host.disk("nvme9n1", "259:99", serial="vol-0fedcba9876543210")

    ops.sleep = sleep
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "ext4", "members": [0]}]})
    with pytest.raises(StillpointError, match=r"not visible on this host after 0.5s: member 0 vol-0fedcba9876543210"):
        ops.up(layout, ["vol-0fedcba9876543210"], device_timeout=0.5, verify=False)
    clock[0] = 0.0
    script = [cmd(["mount", "-t", "ext4", host.d("nvme9n1"), host.mp],
                  effect=lambda: host.mount("259:99", host.mp, "ext4", host.d("nvme9n1")))]
    ops, rec = ops_for(host, script)
    ops.clock, ops.sleep = (lambda: clock[0]), sleep
    result = ops.up(layout, ["vol-0fedcba9876543210"], device_timeout=5, verify=False)
    rec.done()
    assert result["devices"][0]["device"] == host.d("nvme9n1")
    assert result["actions"][0]["ms"] >= 1000


def test_up_mounts_a_partition_of_a_member(host):
    part = DISKS[0] + "p1"
    os.makedirs(os.path.join(host.sys, "block", DISKS[0], part))
    with open(os.path.join(host.sys, "block", DISKS[0], part, "partition"), "w") as f:
        f.write("1\n")
    with open(os.path.join(host.sys, "block", DISKS[0], part, "dev"), "w") as f:
        f.write("259:20\n")
    os.symlink("../../block/%s/%s" % (DISKS[0], part), os.path.join(host.sys, "class", "block", part))
    open(host.d(part), "a").close()
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "ext4", "options": "rw", "members": [0],
                                      "partition": 1}]})
    script = [cmd(["e2fsck", "-f", "-n", host.d(part)]),
              cmd(["mount", "-t", "ext4", "-o", "rw", host.d(part), host.mp],
                  effect=lambda: host.mount("259:20", host.mp, "ext4", host.d(part)))]
    ops, rec = ops_for(host, script)
    assert ops.up(layout, VOLS[:1])["changed"] is True
    rec.done()
    ops, rec = ops_for(host, [])
    assert ops.up(layout, VOLS[:1])["changed"] is False  # mounted from that partition already


# -- down -----------------------------------------------------------------------------------


def up_state(host):
    host.md_state("md0", "clean")
    host.stack("md0", DISKS)
    host.lv()
    mounted(host)()


def down_script(host):
    def umounted():
        host.umount(host.mp)

    def deactivated():
        host.no_lv()

    def stopped():
        host.unstack("md0")
        host.md_state("md0", "clear")

    return [
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs")),
        cmd(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", "data"], section("lvm.txt", "lvs-active")),
        cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-md0")),
        cmd(["timeout", "--kill-after=5", "30", "systemctl", "stop", "pg"]),
        cmd(["umount", host.mp], effect=umounted),
        cmd(["vgchange", "-an", "data"], effect=deactivated),
        cmd(["mdadm", "--stop", "/dev/md0"], effect=stopped),
    ]


def claimed_in(host):
    return lambda path: bool(os.listdir(os.path.join(host.sys, "block", os.path.basename(path), "holders")))


def test_down_stops_unmounts_deactivates_in_order_then_is_idempotent(host):
    up_state(host)
    ops, rec = ops_for(host, down_script(host), claimed=claimed_in(host))
    result = ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()
    assert result["changed"] is True
    assert [s["what"] for s in result["actions"]] == [
        "stop hook", "unmount %s" % host.mp, "deactivate volume group data", "stop md array /dev/md0"]
    assert result["mounts"] == [dict(mountpoint=host.mp, fstype="xfs", mounted=False)]
    assert [r["claimed"] for r in result["released"]] == [False] * 4

    again = [
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs")),
        cmd(["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", "data"], section("lvm.txt", "lvs-inactive")),
    ]
    ops, rec = ops_for(host, again, claimed=claimed_in(host))
    result = ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec), run_hooks="on_change")
    rec.done()
    assert result["changed"] is False and result["actions"] == []


def test_down_check_mode_plans_everything_and_changes_nothing(host):
    up_state(host)
    script = down_script(host)[:3]
    ops, rec = ops_for(host, script, check_mode=True)
    result = ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()
    assert result["changed"] is True and all(a["planned"] and a["rc"] is None for a in result["actions"])
    assert [p["cmd"] for p in result["actions"]] == [
        ["timeout", "--kill-after=5", "30", "systemctl", "stop", "pg"],
        ["umount", host.mp], ["vgchange", "-an", "data"], ["mdadm", "--stop", "/dev/md0"]]
    assert result["mounts"][0]["mounted"] is True


def test_down_refuses_a_busy_mount_and_names_the_process(host):
    up_state(host)
    host.process(22428, "sleep")
    fuser_out = section("fuser.txt", "stdout")[1]
    fuser_err = section("fuser.txt", "stderr")[1]
    script = down_script(host)[:4] + [
        cmd(["umount", host.mp], (32, "", "umount: %s: target is busy.\n" % host.mp)),
        cmd(["fuser", "-v", "-m", host.mp], (0, fuser_out, fuser_err)),
    ]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError) as err:
        ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()  # no vgchange, no mdadm --stop
    assert "%s is busy: held by pid 22428 (sleep, user " % host.mp in err.value.msg
    assert "force_unmount=true" in err.value.msg
    assert err.value.details["holders"][0]["pid"] == 22428


def test_down_force_unmount_is_lazy_and_warns(host):
    up_state(host)
    host.process(22428, "sleep")
    script = down_script(host)[:4] + [
        cmd(["umount", host.mp], (32, "", "umount: %s: target is busy.\n" % host.mp)),
        cmd(["fuser", "-v", "-m", host.mp], (0, "kernel 22428", "")),
        cmd(["umount", "-l", host.mp], effect=lambda: host.umount(host.mp)),
    ] + down_script(host)[5:]
    ops, rec = ops_for(host, script)
    result = ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec), force_unmount=True)
    rec.done()
    assert result["changed"] is True
    assert any("unmounted lazily" in w for w in ops.warnings)


def test_down_refuses_a_filesystem_not_on_the_sets_volumes(host):
    host.disk("nvme7n1", "259:70", serial="vol-0999999999999999a")
    host.mount("259:70", host.mp, "ext4", "/dev/nvme7n1")
    ops, rec = ops_for(host, [])
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "ext4", "members": [0]}]})
    with pytest.raises(StillpointError, match="nvme7n1=vol-0999999999999999a.*not on this set's volumes"):
        ops.down(layout, VOLS[:1], hooks=hooks_for(rec))
    rec.done()  # not even the stop hook


def test_down_refuses_mounts_below_and_a_foreign_md(host):
    up_state(host)
    host.mount("0:50", host.mp + "/tmp", "tmpfs", "tmpfs")
    ops, rec = ops_for(host, [])
    with pytest.raises(StillpointError, match="has mounts below it that are not part of this set: .*/srv/pg/tmp"):
        ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()

    host.umount(host.mp + "/tmp")
    script = down_script(host)[:2] + [
        cmd(["mdadm", "--detail", "--export", "/dev/md0"], section("mdadm.txt", "detail-other"))]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match="running array UUID 0badc0de.*Refusing to stop it"):
        ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()


def test_down_fails_when_a_volume_stays_claimed(host):
    up_state(host)
    script = down_script(host)[:-1]  # mdadm --stop "succeeds" but the members stay held
    script.append(cmd(["mdadm", "--stop", "/dev/md0"]))
    ops, rec = ops_for(host, script, claimed=claimed_in(host))
    with pytest.raises(StillpointError, match=r"Still in use after taking the set down: member 0 %s \(.*\) held by md0"
                       % VOLS[0]):
        ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()


# -- the module (run_command sequence, set_module_args) -------------------------------------


def test_module_check_mode_before_attach_plans_the_whole_restore(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(basic.AnsibleModule, "run_command",
                        lambda self, argv, **kw: calls.append(argv) or (1, "", "not expected"))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: "/usr/sbin/" + name)
    mp = str(tmp_path / "absent" / "pg")
    args = dict(state="up", layout={
        "md": [{"device": "/dev/md0", "uuid": MD_UUID, "level": "raid0", "members": [0, 1, 2, 3]}],
        "lvm": [{"vg": "data", "uuid": VG_UUID, "pvs": ["/dev/md0"], "lvs": ["pg"]}],
        "filesystems": [{"mountpoint": mp, "fstype": "xfs", "options": "rw", "members": [0, 1, 2, 3],
                         "device": "/dev/data/pg"}]},
        volume_ids=VOLS, by_id_dir=str(tmp_path), start_command=["systemctl", "start", "pg"],
        _ansible_check_mode=True)
    with set_module_args(args), patched_exits(monkeypatch):
        with pytest.raises(AnsibleExitJson) as done:
            array_host.main()
    result = done.value.result
    assert calls == []
    assert result["changed"] is True
    assert [p["cmd"][:3] for p in result["actions"]] == [
        [], ["/usr/sbin/mdadm", "--assemble", "/dev/md0"], ["/usr/sbin/vgchange", "-ay", "data"],
        ["/usr/sbin/xfs_repair", "-n", "/dev/data/pg"], ["/usr/sbin/mkdir", "-p", mp],
        ["/usr/sbin/mount", "-t", "xfs"], ["/usr/sbin/timeout", "--kill-after=5", "60"]]
    assert result["actions"][1]["cmd"][3:] == ["<device of %s>" % v for v in VOLS]
    assert not os.path.exists(mp)


def test_module_fails_with_the_layout_problem(monkeypatch):
    with set_module_args(dict(state="up", layout={"filesystems": [{"mountpoint": "/a", "fstype": "xfs",
                                                                   "members": [0, 1]}]}, volume_ids=VOLS[:2])), \
            patched_exits(monkeypatch):
        with pytest.raises(AnsibleFailJson) as failed:
            array_host.main()
    assert "only btrfs spans several volumes" in failed.value.result["msg"]
    assert failed.value.result["changed"] is False


def test_up_refuses_a_restored_device_that_is_in_use(host):
    host.disk("dm-3", "253:3")
    host.stack("dm-3", [DISKS[0]])
    layout = Layout({"filesystems": [{"mountpoint": host.mp, "fstype": "ext4", "members": [0]}]})
    ops, rec = ops_for(host, [], claimed=claimed_in(host))
    with pytest.raises(StillpointError, match=r"nvme3n1 \(for .*\) is in use: claimed by dm-3. .*nothing was mounted"):
        ops.up(layout, VOLS[:1])
    rec.done()  # no check, no mount


def test_down_stop_hook_failure_unmounts_nothing(host):
    up_state(host)
    script = down_script(host)[:3] + [
        cmd(["timeout", "--kill-after=5", "30", "systemctl", "stop", "pg"], (124, "", ""))]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match=r"stop hook .* timed out after 30s \(rc=124\). Nothing was unmounted"):
        ops.down(md_lvm_layout(host.mp), VOLS, hooks=hooks_for(rec))
    rec.done()  # no umount, no vgchange, no mdadm --stop
    assert ops.changed is False


# -- a copy beside its source: refused by default, import_clone when asked --------------------


def md_lvm_raw(mountpoint):
    return {
        "md": [{"device": "/dev/md0", "uuid": MD_UUID, "level": "raid0", "chunk": "512K", "members": [0, 1, 2, 3]}],
        "lvm": [{"vg": "data", "uuid": VG_UUID, "pvs": ["/dev/md0"], "lvs": ["pg"]}],
        "filesystems": [{"mountpoint": mountpoint, "fstype": "xfs", "options": "rw,noatime", "members": [0, 1, 2, 3],
                         "device": "/dev/data/pg"}],
    }


def test_clone_layout_renames_everything_and_keeps_the_source_uuids():
    raw = clone_layout(md_lvm_raw("/srv/pg"), {"/srv/pg/": "/mnt/copy/pg"})
    assert raw["md"] == [{"device": "/dev/md/md0_clone", "uuid": None, "clone_of": MD_UUID, "level": "raid0",
                          "chunk": "512K", "members": [0, 1, 2, 3]}]
    assert raw["lvm"] == [{"vg": "data_clone", "uuid": None, "clone_of": VG_UUID, "pvs": ["/dev/md/md0_clone"],
                           "lvs": ["pg"]}]
    assert raw["filesystems"] == [{"mountpoint": "/mnt/copy/pg", "fstype": "xfs", "options": ["rw", "noatime", "nouuid"],
                                   "members": [0, 1, 2, 3], "device": "/dev/data_clone/pg"}]
    layout = Layout(raw)
    assert layout.filesystems[0]["kind"] == "lv" and layout.md[0]["clone_of"] == MD_UUID
    named = clone_layout(md_lvm_raw("/srv/pg"), {"/srv/pg": "/mnt/pg"}, vg_map={"data": "pgcopy"},
                         md_map={"/dev/md0": "/dev/md9"})
    assert (named["md"][0]["device"], named["lvm"][0]["vg"], named["filesystems"][0]["device"]) == (
        "/dev/md9", "pgcopy", "/dev/pgcopy/pg")
    assert named["lvm"][0]["pvs"] == ["/dev/md9"]


@pytest.mark.parametrize("maps, message", [
    (({},), r"mountpoint_map to name a new mountpoint for every filesystem of the set; missing: /srv/pg"),
    (({"/srv/pg": "/srv/pg"},), r"/srv/pg is a mountpoint of the set: the copy would be mounted over its source"),
    (({"/srv/pg": "/mnt/pg", "/srv/other": "/mnt/o"},), r"mountpoint_map names /srv/other, which is not a filesystem"),
    (({"/srv/pg": "relative"},), r"must be an absolute path other than /"),
    (({"/srv/pg": "/mnt/pg"}, {"data": "data"}), r"vg_map\[data\] must be another volume group name"),
    (({"/srv/pg": "/mnt/pg"}, {}, {"/dev/md0": "/dev/md0"}), r"md_map\[/dev/md0\] must be another md device"),
])
def test_clone_layout_refuses(maps, message):
    with pytest.raises(StillpointError, match=message):
        clone_layout(md_lvm_raw("/srv/pg"), *maps)


def clone_host(host):
    """The source up: md0 over four other disks, its LV dm-0 mounted at host.mp."""
    for i, name in enumerate(["nvme5n1", "nvme6n1", "nvme7n1", "nvme8n1"]):
        host.disk(name, "259:%d" % (50 + i), serial="vol-0500000000000000%d" % i)
    host.md_state("md0", "clean")
    host.stack("md0", ["nvme5n1", "nvme6n1", "nvme7n1", "nvme8n1"])
    host.lv()
    host.mount("253:0", host.mp, "xfs", "/dev/mapper/data-pg")
    host.copy_mp = os.path.join(host.root, "mnt", "pg")
    os.makedirs(host.copy_mp)
    return Layout(clone_layout(md_lvm_raw(host.mp), {host.mp: host.copy_mp}))


def test_up_import_clone_assembles_with_a_new_uuid_imports_the_vg_and_mounts_elsewhere(host):
    layout = clone_host(host)

    def assembled_clone():
        host.md("md127", "9:127", state="clean")
        host.stack("md127", DISKS)
        os.makedirs(host.d("md"), exist_ok=True)
        os.symlink("../md127", host.d("md/md0_clone"))

    lvs = ["lvs", "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", "data_clone"]
    script = examine_all(host) + [
        cmd(["mdadm", "--assemble", "/dev/md/md0_clone", "--update=uuid"] + [host.d(n) for n in DISKS],
            effect=assembled_clone),
        cmd(["mdadm", "--detail", "--export", "/dev/md/md0_clone"], section("mdadm.txt", "detail-clone")),
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs")),
        cmd(["vgimportclone", "--basevgname", "data_clone", "/dev/md/md0_clone"]),
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs-clone")),
        cmd(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"], section("lvm.txt", "pvs-clone")),
        cmd(lvs, section("lvm.txt", "lvs-clone-inactive")),
        cmd(["vgchange", "-ay", "data_clone"],
            effect=lambda: host.lv(vg="data_clone", dm="dm-1", majmin="253:1", on=("md127",))),
        cmd(["xfs_repair", "-n", "/dev/data_clone/pg"], ok()),
        cmd(["mount", "-t", "xfs", "-o", "rw,noatime,nouuid", "/dev/data_clone/pg", host.copy_mp],
            effect=lambda: host.mount("253:1", host.copy_mp, "xfs", "/dev/mapper/data_clone-pg")),
    ]
    ops, rec = ops_for(host, script)
    result = ops.up(layout, VOLS)
    rec.done()
    assert [s["what"].split(" ")[0] for s in result["actions"]] == [
        "wait", "assemble", "import", "activate", "check", "mount"]
    assert result["mounts"][0]["source"] == "/dev/mapper/data_clone-pg"
    assert ops.warnings == []
    # the source was not touched: still mounted from its own LV
    assert visible_mount(host.resolver().mounts(), host.mp)["majmin"] == "253:0"

    again = [
        cmd(["mdadm", "--detail", "--export", "/dev/md/md0_clone"], section("mdadm.txt", "detail-clone")),
        cmd(["vgs", "--reportformat", "json", "-o", "vg_name,vg_uuid"], section("lvm.txt", "vgs-clone")),
        cmd(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"], section("lvm.txt", "pvs-clone")),
        cmd(lvs, section("lvm.txt", "lvs-clone-active")),
    ]
    ops, rec = ops_for(host, again)
    assert ops.up(layout, VOLS)["changed"] is False
    rec.done()


def test_up_import_clone_after_a_reboot_assembles_without_a_new_uuid(host):
    layout = clone_host(host)
    examined = []
    for i in range(4):
        rc, out, err = section("mdadm.txt", "examine-role%d" % i)
        examined.append(cmd(["mdadm", "--examine", "--export", host.d(DISKS[i])],
                            (rc, out.replace("MD_UUID=" + MD_UUID, "MD_UUID=9e1d7c35:0a6b4f21:d83c5e90:47b2a6f1"), err)))
    ops, rec = ops_for(host, examined + [
        cmd(["mdadm", "--assemble", "/dev/md/md0_clone"] + [host.d(n) for n in DISKS], (1, "", "stop here"))])
    with pytest.raises(StillpointError, match="mdadm could not assemble /dev/md/md0_clone"):
        ops.up(layout, VOLS)
    rec.done()


def test_up_refuses_a_copy_beside_its_source_running_under_another_name(host):
    host.md("md127", "9:127", state="clean")
    for i, name in enumerate(["nvme5n1", "nvme6n1", "nvme7n1", "nvme8n1"]):
        host.disk(name, "259:%d" % (50 + i), serial="vol-0500000000000000%d" % i)
    host.stack("md127", ["nvme5n1", "nvme6n1", "nvme7n1", "nvme8n1"])
    ops, rec = ops_for(host, [cmd(["mdadm", "--detail", "--export", "/dev/md127"],
                                  section("mdadm.txt", "detail-source"))])
    with pytest.raises(StillpointError) as err:
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()  # no examine, no assemble
    assert "already running on this host as /dev/md127 over /dev/nvme5n1" in err.value.msg
    assert "set import_clone: true with a mountpoint_map" in err.value.msg
    assert ops.changed is False


def test_up_refuses_a_copy_when_md0_runs_its_source(host):
    host.md_state("md0", "clean")
    ops, rec = ops_for(host, [cmd(["mdadm", "--detail", "--export", "/dev/md0"],
                                  section("mdadm.txt", "detail-source"))])
    with pytest.raises(StillpointError, match=r"/dev/md0 is running the set's array .* its source \(or another copy\) "
                                              r"is up on this host.*import_clone: true"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()


def test_up_takes_over_a_udev_copy_whose_volume_group_lvm_autoactivated(host):
    """What a real kernel does when restored volumes are hot-plugged (seen in the lab): udev assembles
    them as md127 and LVM's event activation activates the volume group on it."""
    host.md("md127", "9:127", state="clean")
    host.stack("md127", DISKS)
    host.lv(on=("md127",))
    os.makedirs(os.path.join(host.sys, "block", "dm-0", "dm"))
    with open(os.path.join(host.sys, "block", "dm-0", "dm", "uuid"), "w") as f:
        f.write("LVM-" + lvm_uuid_key(VG_UUID) + "Zq0w1e2r3t4y5u6i7o8p9a0s1d2f3g4h\n")

    def deactivated():
        host.no_lv()

    def stopped():
        host.unstack("md127")
        host.md_state("md127", "clear")

    script = examine_all(host) + [
        cmd(["mdadm", "--detail", "--export", "/dev/md127"], section("mdadm.txt", "detail-md127")),
        cmd(["vgchange", "-an", "data"], effect=deactivated),
        cmd(["mdadm", "--stop", "/dev/md127"], effect=stopped),
    ] + up_script(host, start=False)[4:]
    ops, rec = ops_for(host, script)
    result = ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()
    assert [s["cmd"][:3] for s in result["actions"][1:4]] == [
        ["vgchange", "-an", "data"], ["mdadm", "--stop", "/dev/md127"], ["mdadm", "--assemble", "/dev/md0"]]
    assert result["mounts"][0]["mounted"] is True


def test_up_refuses_a_udev_copy_whose_lv_is_mounted(host):
    host.md("md127", "9:127", state="clean")
    host.stack("md127", DISKS)
    host.lv(on=("md127",))
    os.makedirs(os.path.join(host.sys, "block", "dm-0", "dm"))
    with open(os.path.join(host.sys, "block", "dm-0", "dm", "uuid"), "w") as f:
        f.write("LVM-" + lvm_uuid_key(VG_UUID) + "Zq0w1e2r3t4y5u6i7o8p9a0s1d2f3g4h\n")
    host.mount("253:0", "/elsewhere", "xfs", "/dev/mapper/data-pg")
    script = examine_all(host) + [
        cmd(["mdadm", "--detail", "--export", "/dev/md127"], section("mdadm.txt", "detail-md127"))]
    ops, rec = ops_for(host, script)
    with pytest.raises(StillpointError, match=r"held by /dev/md127 .*in use\)\. Refusing to take it over"):
        ops.up(md_lvm_layout(host.mp), VOLS)
    rec.done()


def test_module_import_clone_needs_a_mountpoint_map_and_maps_need_import_clone(monkeypatch):
    raw = md_lvm_raw("/srv/pg")
    for args, message in ((dict(import_clone=True), "missing: /srv/pg"),
                          (dict(mountpoint_map={"/srv/pg": "/mnt/pg"}), "only apply with import_clone: true")):
        with set_module_args(dict(state="up", layout=raw, volume_ids=VOLS, **args)), patched_exits(monkeypatch):
            with pytest.raises(AnsibleFailJson) as failed:
                array_host.main()
        assert message in failed.value.result["msg"]
