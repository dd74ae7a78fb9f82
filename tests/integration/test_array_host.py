# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""stillpoint.snapshots.array_host for real, in-process, on loop filesystems standing in for EBS.

Loop devices play the restored volumes: a by-id directory of the test's own holds
nvme-Amazon_Elastic_Block_Store_vol<id> links to them, so the module finds every disk by volume id
exactly as on Nitro. Two plain ext4 members and a btrfs array over two more are taken down and
brought up again; a corrupted ext4 copy is refused by the read-only check; a busy mount is refused
with the process that holds it. Only the loop filesystems made here are ever unmounted or mounted.
"""

import binascii
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible.module_utils import basic

from ansible_collections.stillpoint.snapshots.plugins.modules import array_host
from tests.support.loopfs import LoopArray
from tests.support.loopfs import LoopFS
from tests.support.loopfs import missing_requirements
from tests.support.world import run_playbook
from tests.support.world import write_playbook
from tests.unit.utils import AnsibleExitJson
from tests.unit.utils import AnsibleFailJson
from tests.unit.utils import patched_exits
from tests.unit.utils import set_module_args

pytestmark = pytest.mark.skipif(bool(missing_requirements("btrfs")), reason=str(missing_requirements("btrfs")))


def run_module(monkeypatch, args, check_mode=False):
    """Run array_host in this process; returns (failed, result) with the module's warnings."""
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    warnings = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, msg: warnings.append(msg))
    failed, result = None, None
    with set_module_args(args), patched_exits(monkeypatch):
        try:
            array_host.main()
        except AnsibleExitJson as done:
            failed, result = False, done.result
        except AnsibleFailJson as fail:
            failed, result = True, fail.result
    assert result is not None, "the module neither exited nor failed"
    result["warnings"] = warnings
    return failed, result


def new_volume_id():
    return "vol-" + binascii.hexlify(os.urandom(9)).decode()[:17]


def link(by_id, volume_id, device):
    os.symlink(device, os.path.join(by_id, "nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "")))


def mounted_source(mountpoint):
    """(source, fstype) of the visible mount at ``mountpoint``, or None."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mountpoint:
                tail = fields[fields.index("-") + 1:]
                found = (tail[1], tail[0])
    return found


def read(path):
    with open(path) as f:
        return f.read()


class Rig:
    """Two ext4 members and a btrfs array over two more, mounted, with data, a by-id dir, a layout."""

    def __init__(self, tmp_path):
        self.tmp = str(tmp_path)
        self.made = []
        self.by_id = os.path.join(self.tmp, "by-id")
        os.mkdir(self.by_id)
        self.log = os.path.join(self.tmp, "hooks.log")
        self.a = self._make(LoopFS(size_mb=16, fstype="ext4"))
        self.b = self._make(LoopFS(size_mb=16, fstype="ext4"))
        self.arr = self._make(LoopArray(n=2, size_mb=128))
        self.devices = [self.a.device, self.b.device] + list(self.arr.devices)
        self.volume_ids = [new_volume_id() for _device in self.devices]
        for vol, dev in zip(self.volume_ids, self.devices):
            link(self.by_id, vol, dev)
        self.mountpoints = [self.a.mountpoint, self.b.mountpoint, self.arr.mountpoint]
        manifest = []
        for name, mp in zip(("a", "b", "array"), self.mountpoints):
            with open(os.path.join(mp, "SENTINEL"), "w") as f:
                f.write(name)
            with open(os.path.join(mp, "data.bin"), "wb") as f:
                f.write(os.urandom(65536))
            manifest.append(os.path.join(mp, "data.bin"))
        sums = subprocess.run(["sha256sum"] + manifest, check=True, stdout=subprocess.PIPE, text=True).stdout
        self.manifest = os.path.join(self.tmp, "MANIFEST.sha256")
        with open(self.manifest, "w") as f:
            f.write(sums)
        self.layout = {"filesystems": [
            {"mountpoint": self.a.mountpoint, "fstype": "ext4", "options": "rw,relatime", "members": [0]},
            {"mountpoint": self.b.mountpoint, "fstype": "ext4", "options": "rw,relatime", "members": [1]},
            {"mountpoint": self.arr.mountpoint, "fstype": "btrfs", "options": "rw,relatime", "members": [2, 3]},
        ]}

    def _make(self, fs):
        self.made.append(fs)
        fs.create()
        return fs

    def hook(self, word):
        """argv of a hook that logs ``word`` and whether the first filesystem is mounted at that moment."""
        return ["sh", "-c", 'if mountpoint -q "$1"; then s=mounted; else s=unmounted; fi; echo "$2 $s" >> "$3"', "hook",
                self.a.mountpoint, word, self.log]

    def args(self, state, **extra):
        args = dict(state=state, layout=self.layout, volume_ids=self.volume_ids, by_id_dir=self.by_id,
                    stop_command=self.hook("stop"), start_command=self.hook("start"), hook_timeout=10,
                    device_timeout=5)
        args.update(extra)
        return args

    def logged(self):
        return read(self.log).split("\n")[:-1] if os.path.exists(self.log) else []

    def cleanup(self):
        errors = []
        for fs in reversed(self.made):
            fs.cleanup()
            errors.extend(fs.cleanup_errors)
        return errors


@pytest.fixture
def rig(tmp_path):
    r = Rig.__new__(Rig)
    r.made = []
    try:
        Rig.__init__(r, tmp_path)
        yield r
    finally:
        errors = r.cleanup()
        if errors:
            pytest.fail("loop filesystem cleanup problems: %s" % "; ".join(errors))


def test_down_and_up_by_volume_id_check_mode_hooks_and_idempotence(monkeypatch, rig):
    # check mode: the planned actions, and nothing runs (no hook, no unmount)
    failed, plan = run_module(monkeypatch, rig.args("down"), check_mode=True)
    assert not failed, plan
    assert plan["changed"] is True and all(a["planned"] and a["rc"] is None for a in plan["actions"])
    assert [p["cmd"][-1] for p in plan["actions"][1:]] == list(reversed(rig.mountpoints))
    assert plan["actions"][0]["what"] == "stop hook"
    assert rig.logged() == []
    assert all(mounted_source(mp) for mp in rig.mountpoints)

    # down: stop hook while mounted, then every filesystem unmounted, devices released
    failed, down = run_module(monkeypatch, rig.args("down"))
    assert not failed, down
    assert down["changed"] is True
    assert rig.logged() == ["stop mounted"]
    assert [s["what"] for s in down["actions"]] == ["stop hook"] + ["unmount %s" % mp for mp in reversed(rig.mountpoints)]
    assert not any(mounted_source(mp) for mp in rig.mountpoints)
    assert [m["mounted"] for m in down["mounts"]] == [False] * 3
    assert [(r["volume_id"], r["device"], r["claimed"]) for r in down["released"]] == [
        (v, d, False) for v, d in zip(rig.volume_ids, rig.devices)]

    # down again: nothing to do, and with run_hooks=on_change not even the hook
    failed, again = run_module(monkeypatch, rig.args("down", run_hooks="on_change"))
    assert not failed, again
    assert again["changed"] is False and again["actions"] == []
    assert rig.logged() == ["stop mounted"]

    # check mode up: checks and mounts planned, nothing mounted
    failed, plan = run_module(monkeypatch, rig.args("up", sentinel="SENTINEL"), check_mode=True)
    assert not failed, plan
    argvs = [p["cmd"] for p in plan["actions"]]
    assert [a[1:] for a in argvs if a and a[0].endswith("e2fsck")] == [["-f", "-n", rig.a.device], ["-f", "-n", rig.b.device]]
    assert [a[1:] for a in argvs if a and a[0].endswith("btrfs")] == [["check", "--readonly", rig.arr.devices[0]]]
    assert [a[-1] for a in argvs if a and a[0].endswith("/mount")] == rig.mountpoints
    assert not any(mounted_source(mp) for mp in rig.mountpoints)
    assert rig.logged() == ["stop mounted"]

    # up: by volume id, checked, mounted, sentinel and checksum, then the start hook
    failed, up = run_module(monkeypatch, rig.args("up", sentinel="SENTINEL",
                                                  checksum_command=["sha256sum", "--quiet", "-c", rig.manifest]))
    assert not failed, up
    assert up["changed"] is True
    assert rig.logged() == ["stop mounted", "start mounted"]
    assert [d["device"] for d in up["devices"]] == rig.devices
    whats = [s["what"].split(" ")[0] for s in up["actions"]]
    assert whats == ["wait", "check", "check", "check", "mount", "mount", "mount", "check", "checksum", "start"]
    assert mounted_source(rig.a.mountpoint) == (rig.a.device, "ext4")
    assert mounted_source(rig.b.mountpoint) == (rig.b.device, "ext4")
    source, fstype = mounted_source(rig.arr.mountpoint)
    assert fstype == "btrfs" and source in rig.arr.devices
    mount_argv = [s["cmd"] for s in up["actions"] if s["what"] == "mount %s" % rig.arr.mountpoint][0]
    assert "device=%s,device=%s" % tuple(rig.arr.devices) in mount_argv[mount_argv.index("-o") + 1]
    for name, mp in zip(("a", "b", "array"), rig.mountpoints):
        assert read(os.path.join(mp, "SENTINEL")) == name

    # up again: already mounted from the right devices, nothing to do
    failed, again = run_module(monkeypatch, rig.args("up", sentinel="SENTINEL", run_hooks="on_change"))
    assert not failed, again
    assert again["changed"] is False
    assert [s["what"] for s in again["actions"]] == ["wait for devices by volume id", "check sentinel SENTINEL"]
    assert rig.logged() == ["stop mounted", "start mounted"]


def test_members_are_found_by_volume_id_not_by_order(monkeypatch, rig):
    failed, down = run_module(monkeypatch, rig.args("down"))
    assert not failed, down
    # the catalog's member 0 holds "b" now: give it b's volume, and b's mountpoint a's
    swapped = dict(rig.layout)
    swapped["filesystems"] = [dict(rig.layout["filesystems"][0], members=[1]),
                              dict(rig.layout["filesystems"][1], members=[0])] + rig.layout["filesystems"][2:]
    failed, up = run_module(monkeypatch, rig.args("up", layout=swapped))
    assert not failed, up
    assert read(os.path.join(rig.a.mountpoint, "SENTINEL")) == "b"
    assert read(os.path.join(rig.b.mountpoint, "SENTINEL")) == "a"
    assert mounted_source(rig.a.mountpoint) == (rig.b.device, "ext4")


def test_missing_sentinel_keeps_the_application_stopped(monkeypatch, rig):
    failed, down = run_module(monkeypatch, rig.args("down"))
    assert not failed, down
    failed, up = run_module(monkeypatch, rig.args("up", sentinel="NOT-THERE/marker"))
    assert failed
    assert "Sentinel missing after mounting" in up["msg"] and "application was NOT started" in up["msg"]
    assert os.path.join(rig.a.mountpoint, "NOT-THERE/marker") in up["missing"]
    assert rig.logged() == ["stop mounted"]
    assert all(mounted_source(mp) for mp in rig.mountpoints)  # left mounted for inspection

    failed, bad = run_module(monkeypatch, rig.args("up", sentinel="SENTINEL",
                                                   checksum_command=["sh", "-c", "exit 3"]))
    assert failed and "checksum command" in bad["msg"] and bad["rc"] == 3
    assert "application was NOT started" in bad["msg"]
    assert rig.logged() == ["stop mounted"]


def test_mountpoint_mounted_from_something_else_is_refused(monkeypatch, rig):
    failed, down = run_module(monkeypatch, rig.args("down"))
    assert not failed, down
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stillpoint-test", rig.b.mountpoint], check=True)
    try:
        failed, up = run_module(monkeypatch, rig.args("up"))
        assert failed
        assert "%s is already mounted from stillpoint-test (tmpfs)" % rig.b.mountpoint in up["msg"]
        assert up["changed"] is False and up["actions"][-1]["what"] == "wait for devices by volume id"
        assert mounted_source(rig.a.mountpoint) is None
    finally:
        subprocess.run(["umount", rig.b.mountpoint], check=False)


def test_corrupted_ext4_copy_is_refused_by_the_read_only_check(monkeypatch, rig, tmp_path):
    subprocess.run(["umount", rig.a.mountpoint], check=True)
    copy = os.path.join(str(tmp_path), "copy.img")
    shutil.copyfile(rig.a.image, copy)
    with open(copy, "r+b") as f:  # the primary superblock: 1024 bytes at offset 1024
        f.seek(1024)
        f.write(b"\0" * 1024)
    device = subprocess.run(["losetup", "--find", "--show", copy], check=True, stdout=subprocess.PIPE,
                            text=True).stdout.strip()
    target = os.path.join(str(tmp_path), "restored")
    try:
        vol = new_volume_id()
        link(rig.by_id, vol, device)
        layout = {"filesystems": [{"mountpoint": target, "fstype": "ext4", "options": "rw", "members": [0]}]}
        failed, up = run_module(monkeypatch, dict(state="up", layout=layout, volume_ids=[vol], by_id_dir=rig.by_id,
                                                  device_timeout=5))
        assert failed
        assert "Read-only check of ext4 %s on member 0 %s (%s) failed (e2fsck -f -n rc=" % (target, vol, device) \
            in up["msg"]
        assert "Not mounted" in up["msg"] and up["rc"] != 0
        assert mounted_source(target) is None and not os.path.exists(target)
        assert [s["what"].split(" ")[0] for s in up["actions"]] == ["wait", "check"]
    finally:
        if mounted_source(target):
            subprocess.run(["umount", target], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_busy_mount_is_refused_with_its_holder_then_forced(monkeypatch, rig):
    holder = subprocess.Popen(["sleep", "60"], cwd=rig.b.mountpoint)
    try:
        failed, down = run_module(monkeypatch, rig.args("down"))
        assert failed
        assert "%s is busy: held by pid %d (sleep, user root)" % (rig.b.mountpoint, holder.pid) in down["msg"]
        assert down["holders"] == [dict(pid=holder.pid, command="sleep", user="root")]
        assert rig.logged() == ["stop mounted"]
        assert mounted_source(rig.b.mountpoint) is not None
        assert mounted_source(rig.arr.mountpoint) is None  # unmounted before b (reverse order)

        failed, forced = run_module(monkeypatch, rig.args("down", force_unmount=True))
        assert not failed, forced
        assert forced["changed"] is True
        assert mounted_source(rig.b.mountpoint) is None
        assert [r["claimed"] for r in forced["released"]] == [False, True, False, False]
        assert any("unmounted lazily" in w for w in forced["warnings"])
        assert any("member 1 %s" % rig.volume_ids[1] in w and "Do not detach" in w for w in forced["warnings"])
    finally:
        holder.kill()
        holder.wait()
    end = time.monotonic() + 5
    while time.monotonic() < end:
        failed, after = run_module(monkeypatch, rig.args("down"))
        if not failed and not any(r["claimed"] for r in after["released"]):
            break
        time.sleep(0.05)
    assert not failed and after["changed"] is False


class NoEndpoint:
    """array_host talks to no AWS endpoint: no endpoint environment for ansible-playbook."""

    @staticmethod
    def env():
        return {}


def test_through_ansible_playbook(rig, tmp_path):
    """The real module transport (AnsiballZ with its module_utils): down, up, up again."""
    common = dict(layout=rig.layout, volume_ids=rig.volume_ids, by_id_dir=rig.by_id)
    playbook = write_playbook(tmp_path, [
        {"name": "down", "stillpoint.snapshots.array_host": dict(common, state="down"), "register": "down"},
        {"name": "up", "stillpoint.snapshots.array_host": dict(common, state="up", sentinel="SENTINEL",
                                                               start_command=rig.hook("start"))},
        {"name": "up again", "stillpoint.snapshots.array_host": dict(common, state="up", run_hooks="on_change",
                                                                     start_command=rig.hook("start"))},
    ])
    rc, results, data = run_playbook(playbook, NoEndpoint(), timeout=120)
    assert rc == 0, data
    assert results["down"]["changed"] is True and results["down"]["mounts"][0]["mounted"] is False
    assert results["up"]["changed"] is True and [m["mounted"] for m in results["up"]["mounts"]] == [True] * 3
    assert results["up again"]["changed"] is False
    assert rig.logged() == ["start mounted"]
    assert mounted_source(rig.a.mountpoint) == (rig.a.device, "ext4")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
