# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host side of a restore: take a set's filesystems down, bring the restored ones up.

Private to the collection. Pure Python: commands go through a :class:`~._common.Recorder` (argv
lists, ``LC_ALL=C``; ``actions`` in the result), devices are found by EBS volume id through
:class:`~._devices.DeviceResolver`, never by device name or enumeration order. The layout is the
set's array descriptor, validated by :class:`~._layout.Layout`; ``/etc/fstab`` is never read or
written.

The order follows seed 000, the other way round for a restore:

* ``down``: the application (stop hook), then the filesystems (unmounted deepest first), then the
  volume managers (``vgchange -an``, then ``mdadm --stop``), so that the volumes can be detached.
* ``up``: wait for every restored volume by id, ``mdadm --assemble`` in the recorded member order,
  ``vgchange -ay``, a read-only check of every filesystem, mount, sentinel and checksum, then the
  application (start hook).

Both are idempotent (what is already down or up is left alone) and, in check mode, return the
planned commands without running any that changes state (read-only probes still run).
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import tempfile
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import Recorder
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import read_sysfs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import visible_mount
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import Layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import clone_layout
from ansible_collections.stillpoint.snapshots.plugins.module_utils._layout import validate_volume_ids
# LVM's report parser and UUID form live with the LVM library (the snapshot sets); only those are used here
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import lvm_uuid_key
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import parse_lvm_report
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_detail_devices
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_uuid_key
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import parse_export
from ansible_collections.stillpoint.snapshots.plugins.module_utils._quiesce import Hooks

# Read-only filesystem checks (they never write; a failure refuses the mount).
CHECKS = {
    "ext2": ["e2fsck", "-f", "-n"],
    "ext3": ["e2fsck", "-f", "-n"],
    "ext4": ["e2fsck", "-f", "-n"],
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
}

RUN_HOOKS = ("always", "on_change")
_MAX_STACKED_MOUNTS = 8
_POLL = 0.2

# What a check says when the metadata log/journal was not replayed (a crash-consistent copy):
# a read-only check cannot replay it, so its verdict is not conclusive.
_UNREPLAYED_RE = re.compile(
    r"skipping journal recovery|needs_recovery|valuable metadata changes in a log|log needs to be replayed",
    re.IGNORECASE)


def parse_fuser_pids(stdout):
    """PIDs from ``fuser -m`` (it prints the PIDs on stdout, with access letters such as
    ``1234c``, and the rest of its table on stderr). The kernel's own use (``kernel``) is not a PID."""
    pids = []
    for token in (stdout or "").split():
        digits = re.match(r"^(\d+)", token)
        if digits:
            pid = int(digits.group(1))
            if pid not in pids:
                pids.append(pid)
    return pids


_BESIDE_HINT = ("set import_clone: true with a mountpoint_map to bring the copy up under new md/LVM UUIDs and names "
                "beside its source, or take the source down first")


# -- the operations -------------------------------------------------------------------------


def _claimed(path):
    """True when a block device is claimed exclusively (mounted, an md or device-mapper member)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise StillpointError("Cannot open %s to see whether it is still in use: %s" % (path, exc.strerror))
    os.close(fd)
    return False


class HostOps:
    """``down`` and ``up`` for one layout on this host.

    ``runner``: a CommandRunner; ``resolver``: a DeviceResolver (its ``sys_root``, ``dev_root``,
    ``by_id_dir`` and ``mountinfo_path`` are used, so tests can point it at a fake tree);
    ``which(name)`` returns the path of an optional tool or None; ``claimed(path)`` says whether a
    block device is still claimed (default: an ``O_EXCL`` open); ``sleep``/``clock`` for waits.
    """

    def __init__(self, runner, resolver, check_mode=False, which=None, claimed=None, sleep=time.sleep,
                 clock=time.monotonic, proc_root="/proc"):
        self.run = runner
        self.resolver = resolver
        self.check_mode = check_mode
        self.which = which or (lambda name: name)
        self.claimed = claimed or _claimed
        self.sleep = sleep
        self.clock = clock
        self.proc_root = proc_root
        self.rec = Recorder(runner, check_mode=check_mode, clock=clock)
        self.actions = self.rec.actions  # what was done (in check mode, planned): {what, cmd, rc, ms, planned}
        self.warnings = []
        self._volume_ids = []
        self._layout_lvm = []

    @property
    def changed(self):
        return self.rec.changed

    # plumbing -----------------------------------------------------------------------------

    def _bin(self, name):
        return self.run.bin(name)

    def _md_state(self, device):
        """``None`` (no such array or stopped), ``"inactive"`` (members claimed, not started) or the
        running state from sysfs ``md/array_state``."""
        name = self.resolver.present_kernel_name(device)
        if name is None and re.match(r"^/dev/md\d+$", device):
            name = os.path.basename(device)
        state = self.resolver.sys_attr(name, "md", "array_state")
        return None if state in (None, "clear", "") else state

    def _mount_disks(self, mount):
        try:
            return sorted(self.resolver.disks_for_mount(mount))
        except StillpointError:
            return []

    def _holders_text(self, mountpoint):
        """Who keeps ``mountpoint`` busy, in words (``fuser -vm`` when installed)."""
        fuser = self.which("fuser")
        if not fuser:
            return "fuser (psmisc) is not installed, so the processes holding it are unknown", []
        rc, out, err = self.rec.probe([fuser, "-v", "-m", mountpoint])
        pids = parse_fuser_pids(out)
        holders = []
        for pid in pids:
            holders.append(dict(pid=pid, command=self._proc_comm(pid), user=self._proc_user(pid)))
        if not holders:
            return ("no process holds it: a kernel user keeps it busy (a mount below it, a swap file or a loop "
                    "device backed by a file on it, an NFS export)"), holders
        return "held by " + ", ".join("pid %d (%s, user %s)" % (h["pid"], h["command"], h["user"])
                                      for h in holders), holders

    def _proc_comm(self, pid):
        try:
            with open(os.path.join(self.proc_root, str(pid), "comm")) as f:
                return f.read().strip()
        except OSError:
            return "?"

    def _proc_user(self, pid):
        try:
            uid = os.stat(os.path.join(self.proc_root, str(pid))).st_uid
        except OSError:
            return "?"
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    # hooks --------------------------------------------------------------------------------

    _HOOK_HINTS = {
        "stop hook": "Nothing was unmounted or deactivated.",
        "start hook": "The filesystems are mounted and verified; only the application start failed.",
        "checksum command": "The filesystems stay mounted for inspection and the application was NOT started.",
    }

    def _hook(self, hooks, which, label):
        """Run the stop (``pre``) or start (``post``) hook of a _quiesce.Hooks; returns its report."""
        cmd = hooks.pre_cmd if which == "pre" else hooks.post_cmd
        if not cmd:
            return None
        argv = [hooks.timeout_bin, "--kill-after=5", "%g" % hooks.timeout] + cmd
        if self.check_mode:
            self.rec.note(label, cmd=argv)
            return None
        ok, report = hooks.pre() if which == "pre" else hooks.post()
        self.rec.note(label, cmd=argv, rc=report["rc"], ms=report["ms"], timed_out=report["timed_out"])
        if not ok:
            raise StillpointError(
                "%s %s %s (rc=%s). %s" % (label, cmd, "timed out after %gs" % hooks.timeout if report["timed_out"]
                                          else "failed", report["rc"], self._HOOK_HINTS.get(label, "")),
                rc=report["rc"], stdout=report["stdout"], stderr=report["stderr"])
        return report

    # down ---------------------------------------------------------------------------------

    def down(self, layout, volume_ids=None, hooks=None, run_hooks="always", force_unmount=False):
        """Stop the application, unmount the layout's filesystems (deepest first), deactivate
        its volume groups and stop its md arrays. Refusals come before anything is changed."""
        volume_ids = validate_volume_ids(volume_ids, layout, required=False)
        self._volume_ids = volume_ids
        mounts = self.resolver.mounts()
        layout_mps = set(f["mountpoint"] for f in layout.filesystems)
        to_unmount, members_seen = [], []
        for fs in reversed(layout.mount_order()):
            mount = visible_mount(mounts, fs["mountpoint"])
            if mount is None:
                continue
            below = [m["mountpoint"] for m in mounts
                     if m["mountpoint"].startswith(mount["mountpoint"].rstrip("/") + "/")
                     and m["mountpoint"] not in layout_mps]
            if below:
                raise StillpointError(
                    "%s has mounts below it that are not part of this set: %s. Unmount them first; nothing was "
                    "stopped or unmounted." % (fs["mountpoint"], ", ".join(sorted(set(below)))))
            disks = self._mount_disks(mount)
            if volume_ids:
                by_id = self.resolver.by_id_volumes()
                vols = [self.resolver.volume_id(d, _by_id=by_id) for d in disks]
                foreign = [(d, v) for d, v in zip(disks, vols) if v not in volume_ids]
                if not disks or foreign:
                    raise StillpointError(
                        "%s is mounted from %s (%s), which is not on this set's volumes %s. Refusing to take down "
                        "a filesystem the set does not describe; nothing was stopped or unmounted."
                        % (fs["mountpoint"], mount["source"],
                           ", ".join("%s=%s" % (d, v or "no volume id") for d, v in foreign) or "no block device",
                           ", ".join(volume_ids)))
            members_seen.extend(d for d in disks if d not in members_seen)
            to_unmount.append((fs, mount))

        vg_active = []
        if layout.lvm:
            vgs = self._vgs()
            for vg in reversed(layout.lvm):
                found = self._find_vg(vgs, vg)
                if found is None:
                    continue
                lvs = self._lvs(vg["vg"])
                if any(len(lv.get("lv_attr", "")) > 4 and lv["lv_attr"][4] != "-" for lv in lvs):
                    vg_active.append(vg)
        md_active = []
        for md in reversed(layout.md):
            state = self._md_state(md["device"])
            if state is None:
                continue
            if state != "inactive" and md["uuid"]:
                detail = self._md_detail(md["device"])
                if detail is not None and md_uuid_key(detail.get("MD_UUID")) != md_uuid_key(md["uuid"]):
                    raise StillpointError(
                        "%s is running array UUID %s, but the layout records %s: it is not this set's array. "
                        "Refusing to stop it; nothing was stopped or unmounted."
                        % (md["device"], detail.get("MD_UUID"), md["uuid"]))
            md_active.append(md)

        work = bool(to_unmount or vg_active or md_active)
        if hooks is not None and (run_hooks == "always" or work):
            self._hook(hooks, "pre", "stop hook")

        for fs, mount in to_unmount:
            self._unmount(fs, mount, force_unmount)
        for vg in vg_active:
            self.rec.act("deactivate volume group %s" % vg["vg"], [self._bin("vgchange"), "-an", vg["vg"]],
                         fail="cannot deactivate volume group %s (an LV still open?)" % vg["vg"])
        for md in md_active:
            self.rec.act("stop md array %s" % md["device"], [self._bin("mdadm"), "--stop", md["device"]],
                         fail="cannot stop %s (still in use?)" % md["device"])

        released = self._check_released(volume_ids, force_unmount)
        return self._result(layout, dict(released=released))

    def _unmount(self, fs, mount, force):
        mp = fs["mountpoint"]
        for _attempt in range(_MAX_STACKED_MOUNTS):
            res = self.rec.act("unmount %s" % mp, [self._bin("umount"), mp], fail=False)
            if res is None:  # check mode
                return
            rc, out, err = res
            if rc != 0:
                text = (err or out).strip()
                if "not mounted" in text:
                    return
                if "busy" not in text.lower():
                    raise StillpointError("cannot unmount %s (rc=%s): %s" % (mp, rc, text), rc=rc, stdout=out,
                                          stderr=err, cmd=[self._bin("umount"), mp])
                who, holders = self._holders_text(mp)
                if not force:
                    raise StillpointError(
                        "%s is busy: %s. Refusing to unmount it: stop what uses it (the stop hook should), or set "
                        "force_unmount=true for a lazy unmount (the filesystem lives on until its last user lets go; "
                        "do not detach its volumes before that)." % (mp, who),
                        rc=rc, stdout=out, stderr=err, holders=holders)
                self.rec.act("lazy unmount %s (busy: %s)" % (mp, who), [self._bin("umount"), "-l", mp],
                             fail="lazy unmount of %s failed" % mp)
                self.warnings.append("%s was busy (%s) and was unmounted lazily (force_unmount): the filesystem stays "
                                     "alive until its users let go" % (mp, who))
            now = visible_mount(self.resolver.mounts(), mp)
            if now is None:
                return
            if now["majmin"] != mount["majmin"]:
                self.warnings.append("%s: after unmounting %s, %s (%s) is still mounted below it; left alone"
                                     % (mp, mount["source"], now["source"], now["fstype"]))
                return
        raise StillpointError("%s is still mounted after %d unmounts (stacked mounts?)" % (mp, _MAX_STACKED_MOUNTS))

    def _check_released(self, volume_ids, force):
        """After down: the volumes' devices must not be claimed (mounted, md or dm member)."""
        if self.check_mode or not volume_ids:
            return []
        out, busy = [], []
        for index, vol in enumerate(volume_ids):
            for dev in self.resolver.devices_for_volume(vol):
                claimed = self.claimed(dev)
                out.append(dict(member=index, volume_id=vol, device=dev, claimed=claimed))
                if claimed:
                    busy.append("member %d %s (%s) held by %s" % (index, vol, dev, ", ".join(self.resolver.holders(dev))
                                                                  or "a mounted filesystem"))
        if busy:
            msg = ("still in use after taking the set down: %s. Do not detach these volumes until they are "
                   "released." % "; ".join(busy))
            if force:
                self.warnings.append(msg)
            else:
                raise StillpointError(msg[0].upper() + msg[1:], released=out)
        return out

    # up -----------------------------------------------------------------------------------

    def up(self, layout, volume_ids, hooks=None, run_hooks="always", device_timeout=120.0, verify=True,
           sentinel=None, checksum=None, mount_options_extra=()):
        """Bring the restored volumes up (see the module docstring). ``checksum`` is a
        _quiesce.Hooks whose ``pre`` command is the checksum command, or None."""
        volume_ids = validate_volume_ids(volume_ids, layout, required=True)
        if sentinel is not None:
            if os.path.isabs(sentinel) or ".." in sentinel.split("/"):
                raise StillpointError("sentinel must be a path relative to each mountpoint, without '..': %r" % sentinel)
        self._volume_ids = volume_ids
        self._layout_lvm = layout.lvm
        devices = self._wait_devices(layout, volume_ids, device_timeout)

        mounts = self.resolver.mounts()
        plan = []
        for fs in layout.mount_order():
            sources = self._sources(fs, devices)
            mount = visible_mount(mounts, fs["mountpoint"])
            if mount is not None:
                if self.check_mode and any(src.startswith("<") for src in sources):
                    plan.append((fs, sources))  # the current mount is to be taken down before this
                    continue
                if not self._mounted_from(mount, fs, sources):
                    raise StillpointError(
                        "%s is already mounted from %s (%s), not from %s as the set records. Refusing to mount over "
                        "it; unmount it first (state=down) if it is an old copy, or, if it is the set's source, "
                        "bring the copy up beside it elsewhere (import_clone with a mountpoint_map). Nothing was "
                        "changed."
                        % (fs["mountpoint"], mount["source"], mount["fstype"], ", ".join(sources)))
                continue
            plan.append((fs, sources))

        self._refuse_beside_source(layout, devices)
        for md in layout.md:
            self._assemble(md, devices)
        for vg in layout.lvm:
            self._activate(vg, devices)

        if plan:
            mounts = self.resolver.mounts()
        for fs, sources in plan:
            for src in sources:
                if not self.check_mode:
                    self._wait_path(src, min(device_timeout, 30.0))
                    busy = [m["mountpoint"] for m in mounts if m["majmin"] == self.resolver.majmin_of(src)]
                    if busy or self.claimed(self.resolver.dev_path(src)):
                        raise StillpointError(
                            "%s (for %s) is in use: %s. Refusing to check or mount it; nothing was mounted."
                            % (src, fs["mountpoint"], "mounted at " + ", ".join(busy) if busy else
                               "claimed by %s" % (", ".join(self.resolver.holders(src)) or "a mounted filesystem")))
        if verify:
            for fs, sources in plan:
                self._verify(fs, sources, devices)
        for fs, sources in plan:
            self._mount(fs, sources, mount_options_extra)

        if not self.check_mode:
            for fs, sources in plan:
                mount = visible_mount(self.resolver.mounts(), fs["mountpoint"])
                if mount is None or not self._mounted_from(mount, fs, sources):
                    raise StillpointError("%s did not end up mounted from %s after mount returned 0 (now: %s)"
                                          % (fs["mountpoint"], ", ".join(sources), mount and mount["source"]))
        if sentinel:
            self._check_sentinels(layout, sentinel)
        if checksum is not None and checksum.pre_cmd:
            self._hook(checksum, "pre", "checksum command")
        if hooks is not None and (run_hooks == "always" or self.changed):
            self._hook(hooks, "post", "start hook")
        members = [dict(member=i, volume_id=volume_ids[i], device=devices[i]) for i in sorted(devices)]
        return self._result(layout, dict(devices=members))

    def _wait_devices(self, layout, volume_ids, timeout):
        """``{member index: /dev path}`` for every member the layout uses, found by volume id."""
        wanted = layout.member_indexes()
        found, problems = {}, {}
        t0 = self.clock()
        while True:
            for index in wanted:
                if index in found:
                    continue
                paths = self.resolver.devices_for_volume(volume_ids[index])
                if len(paths) == 1:
                    found[index] = paths[0]
                    problems.pop(index, None)
                elif len(paths) > 1:
                    raise StillpointError(
                        "Member %d (%s) appears as several disks: %s. Refusing to guess which one to use (multipath? "
                        "a stale by-id link in %s?)." % (index, volume_ids[index], ", ".join(paths),
                                                         self.resolver.by_id_dir))
                else:
                    problems[index] = "member %d %s" % (index, volume_ids[index])
            if len(found) == len(wanted) or self.check_mode or self.clock() - t0 >= timeout:
                break
            self.sleep(_POLL)
        if len(found) < len(wanted) and not self.check_mode:
            raise StillpointError(
                "Restored volumes not visible on this host after %gs: %s. Is each one attached to this instance? "
                "(looked for the NVMe serial and nvme-Amazon_Elastic_Block_Store_vol... links in %s)"
                % (timeout, ", ".join(problems[i] for i in sorted(problems)), self.resolver.by_id_dir),
                missing=[volume_ids[i] for i in sorted(problems)])
        out = {}
        for index in wanted:
            out[index] = found.get(index) or "<device of %s>" % volume_ids[index]
        if not self.check_mode:
            self.rec.note("wait for devices by volume id", ms=ms_since(t0, self.clock()),
                          devices={str(i): out[i] for i in wanted})
        elif len(found) < len(wanted):
            self.rec.note("wait up to %gs for %s to appear" % (timeout, ", ".join(problems[i] for i in sorted(problems))))
        return out

    def _wait_path(self, path, timeout):
        t0 = self.clock()
        while not os.path.exists(self.resolver.dev_path(path)):
            if self.clock() - t0 >= timeout:
                raise StillpointError("%s did not appear within %gs (udev?)" % (path, timeout))
            self.sleep(_POLL)

    def _partition(self, disk, number):
        """Path of partition ``number`` of ``disk`` (from sysfs, whatever the naming scheme)."""
        base = self.resolver.node(os.path.basename(os.path.realpath(disk)))
        if base:
            for entry in sorted(os.listdir(base)):
                if read_sysfs(os.path.join(base, entry, "partition")) == str(number):
                    return os.path.join(os.path.dirname(disk), entry)
        if self.check_mode:
            return "%s (partition %d)" % (disk, number)
        raise StillpointError("%s has no partition %d; the set records a filesystem there" % (disk, number))

    def _sources(self, fs, devices):
        if fs["device"]:
            return [fs["device"]]
        if fs["partition"]:
            return [self._partition(devices[fs["members"][0]], fs["partition"])]
        return [devices[i] for i in fs["members"]]

    def _leaf_disks(self, path):
        majmin = self.resolver.majmin_of(path)
        if majmin is None:
            return []
        try:
            return self.resolver.leaf_disks(majmin)
        except StillpointError:
            return [os.path.basename(os.path.realpath(self.resolver.dev_path(path)))]

    def _mounted_from(self, mount, fs, sources):
        """Is ``mount`` the filesystem on ``sources``? By device number; a btrfs mount has an
        anonymous one, so by the set of disks under it."""
        if mount["major"] == 0 and fs["fstype"] == "btrfs":
            want = sorted(set(d for s in sources for d in self._leaf_disks(s)))
            return bool(want) and self._mount_disks(mount) == want
        want = self.resolver.majmin_of(sources[0])
        return want is not None and mount["majmin"] == want

    def _md_detail(self, device):
        rc, out, _err = self.rec.probe([self._bin("mdadm"), "--detail", "--export", device])
        return parse_export(out) if rc == 0 else None

    def _assemble(self, md, devices):
        dev = md["device"]
        members = [devices[i] for i in md["members"]]
        if any(m.startswith("<") for m in members):  # check mode before the volumes exist: only the plan
            self.rec.act("assemble %s" % dev, [self._bin("mdadm"), "--assemble", dev] +
                         (["--update=uuid"] if md["clone_of"] else []) + members)
            return
        state = self._md_state(dev)
        if state is not None and state != "inactive":
            self._check_running(md, self._md_detail(dev) or {}, members)
            return
        uuids = []
        for index, member in zip(md["members"], members):
            rc, out, err = self.rec.probe([self._bin("mdadm"), "--examine", "--export", member])
            info = parse_export(out) if rc == 0 else {}
            if not info.get("MD_UUID"):
                raise StillpointError(
                    "member %d (%s) carries no md superblock (mdadm --examine: %s). It is not a member of %s; was "
                    "the right snapshot restored? Nothing was assembled." % (index, member, (err or out).strip(), dev),
                    rc=rc, stdout=out, stderr=err)
            uuids.append((index, member, info))
        want = md_uuid_key(md["uuid"]) if md["uuid"] else md_uuid_key(uuids[0][2]["MD_UUID"])
        # a copy beside its source: members still carrying the source's UUID get a new one
        update = bool(md["clone_of"]) and want == md_uuid_key(md["clone_of"])
        wrong = [(i, m, info["MD_UUID"]) for i, m, info in uuids if md_uuid_key(info["MD_UUID"]) != want]
        if wrong:
            raise StillpointError(
                "md UUID mismatch for %s: the layout records %s, but %s. These volumes do not hold that array; "
                "refusing to assemble (nothing was assembled)."
                % (dev, md["uuid"] or ("member %d's %s" % (uuids[0][0], uuids[0][2]["MD_UUID"])),
                   "; ".join("member %d (%s) carries %s" % w for w in wrong)),
                mismatched=[dict(member=i, device=m, uuid=u) for i, m, u in wrong])
        if not md["uuid"] and not md["clone_of"]:
            self.warnings.append("the layout records no UUID for %s; its members agree on %s"
                                 % (dev, uuids[0][2]["MD_UUID"]))
        info0 = uuids[0][2]
        if info0.get("MD_DEVICES") and info0["MD_DEVICES"].isdigit() and int(info0["MD_DEVICES"]) != len(members):
            raise StillpointError(
                "%s has %s raid devices by its superblock, but the layout records %d members. Refusing to assemble "
                "a partial or different array." % (dev, info0["MD_DEVICES"], len(members)))
        if md["level"] and info0.get("MD_LEVEL") and info0["MD_LEVEL"] != md["level"]:
            raise StillpointError("%s is %s by its superblock, but the layout records %s; refusing to assemble."
                                  % (dev, info0["MD_LEVEL"], md["level"]))
        # whatever already holds the members: an auto-assembled copy of this array, or something else
        kname = self.resolver.present_kernel_name(dev)
        stop, deactivate = [], []
        for member in members:
            for holder in self.resolver.holders(member):
                if holder in stop:
                    continue
                if holder == kname:  # the recorded array itself, left inactive
                    stop.append(holder)
                    continue
                if not holder.startswith("md"):
                    raise StillpointError("%s (member of %s) is in use by %s; refusing to assemble. Nothing was "
                                          "assembled." % (member, dev, holder))
                hdev = "/dev/" + holder
                hdetail = self._md_detail(hdev) or {}
                above = self.resolver.holders(hdev)
                auto_vgs = self._auto_activated_vgs(above) if md_uuid_key(hdetail.get("MD_UUID")) == want else None
                if auto_vgs:
                    # LVM's udev autoactivation found the set's volume group on the copy udev assembled
                    for vg in auto_vgs:
                        if vg not in deactivate:
                            deactivate.append(vg)
                    above = []
                in_use = above or self._visible_by_majmin(self.resolver.majmin_of(hdev))
                if md_uuid_key(hdetail.get("MD_UUID")) != want or in_use:
                    raise StillpointError(
                        "%s (member of %s) is held by %s (array UUID %s%s). Refusing to take it over; stop it "
                        "yourself if that is safe. Nothing was assembled."
                        % (member, dev, hdev, hdetail.get("MD_UUID", "unknown"), ", in use" if in_use else ""))
                stop.append(holder)
        if state == "inactive" and kname not in stop:
            raise StillpointError(
                "%s exists but is inactive over devices that are not this restore's members; refusing to stop it. "
                "Stop it yourself (mdadm --stop %s) if it is a leftover." % (dev, dev))
        for vg in deactivate:
            self.rec.act("deactivate volume group %s (activated by udev on the copy of %s assembled under another name)"
                         % (vg, dev), [self._bin("vgchange"), "-an", vg], fail="cannot deactivate volume group %s" % vg)
        for name in stop:
            target = dev if name == kname else "/dev/" + name
            self.rec.act("stop %s (assembled from the restored members by udev, or left inactive) so that %s is "
                         "assembled in the recorded order" % (target, dev), [self._bin("mdadm"), "--stop", target],
                         fail="cannot stop %s" % target)
        if update:
            self.rec.act("assemble %s with a new UUID (a copy of array %s)" % (dev, md["clone_of"]),
                         [self._bin("mdadm"), "--assemble", dev, "--update=uuid"] + members,
                         fail="mdadm could not assemble %s" % dev)
        else:
            self.rec.act("assemble %s" % dev, [self._bin("mdadm"), "--assemble", dev] + members,
                         fail="mdadm could not assemble %s" % dev)
        if not self.check_mode:
            detail = self._md_detail(dev)
            if detail is None:
                raise StillpointError("%s is not running after mdadm --assemble returned 0" % dev)
            self._check_running(md, detail, members)

    def _refuse_beside_source(self, layout, devices):
        """Refuse (before anything is assembled) to bring up an md array whose recorded UUID is already
        running on this host under another name over other devices: its source or another copy."""
        candidates = [md for md in layout.md if md["uuid"] and not md["clone_of"]]
        if not candidates:
            return
        try:
            names = sorted(n for n in os.listdir(os.path.join(self.resolver.sys_root, "block")) if n.startswith("md"))
        except OSError:
            return
        ours = set()
        for md in candidates:
            ours.add(self.resolver.present_kernel_name(md["device"]))
            for i in md["members"]:
                if not devices[i].startswith("<"):
                    ours.update(self.resolver.holders(devices[i]))
        for name in names:
            if name in ours or self._md_state("/dev/" + name) in (None, "inactive"):
                continue
            detail = self._md_detail("/dev/" + name) or {}
            for md in candidates:
                if md_uuid_key(detail.get("MD_UUID")) == md_uuid_key(md["uuid"]):
                    raise StillpointError(
                        "The set's md array %s (UUID %s) is already running on this host as /dev/%s over %s: its "
                        "source, or another copy. The restored copy carries the same md, LVM and filesystem UUIDs; "
                        "refusing to assemble it beside (nothing was assembled). To do so, %s."
                        % (md["device"], md["uuid"], name,
                           ", ".join(d["dev"] for d in md_detail_devices(detail)) or "unknown devices", _BESIDE_HINT))

    def _auto_activated_vgs(self, holders):
        """Volume groups of this layout whose LVs are all of ``holders`` (device-mapper names such as
        ``dm-0``), none of them mounted or open; None when a holder is anything else."""
        if not holders:
            return None
        by_uuid = dict((lvm_uuid_key(vg["uuid"]), vg["vg"]) for vg in self._layout_lvm if vg["uuid"])
        found = []
        for holder in holders:
            dm_uuid = self.resolver.sys_attr(holder, "dm", "uuid") or ""
            # an LV's dm uuid is "LVM-" + the VG UUID and the LV UUID, without dashes (32 characters each)
            vg = by_uuid.get(dm_uuid[4:36]) if dm_uuid.startswith("LVM-") else None
            dev = "/dev/" + holder
            if vg is None or self.resolver.holders(dev) or self._visible_by_majmin(self.resolver.majmin_of(dev)) or \
                    self.claimed(self.resolver.dev_path(dev)):
                return None
            if vg not in found:
                found.append(vg)
        return found

    def _visible_by_majmin(self, majmin):
        return majmin is not None and any(m["majmin"] == majmin for m in self.resolver.mounts())

    def _check_running(self, md, detail, members):
        dev = md["device"]
        want_uuid = md_uuid_key(md["uuid"]) if md["uuid"] else None
        have = md_detail_devices(detail)
        have_real = set(os.path.realpath(self.resolver.dev_path(d["dev"])) for d in have)
        want_real = set(os.path.realpath(self.resolver.dev_path(m)) for m in members)
        if want_uuid and md_uuid_key(detail.get("MD_UUID")) == want_uuid and have and have_real != want_real:
            raise StillpointError(
                "%s is running the set's array %s over %s, not over the restored members %s: its source (or another "
                "copy) is up on this host, and the restored copy carries the same md, LVM and filesystem UUIDs. "
                "Refusing to assemble it beside; %s."
                % (dev, md["uuid"], ", ".join(d["dev"] for d in have), ", ".join(members), _BESIDE_HINT))
        if (want_uuid and md_uuid_key(detail.get("MD_UUID")) != want_uuid) or (have and have_real != want_real):
            raise StillpointError(
                "%s is running as array %s over %s, not the set's array %s over the restored members %s. Refusing "
                "to touch it; stop it first if it is an old copy." % (
                    dev, detail.get("MD_UUID", "unknown"), ", ".join(d["dev"] for d in have) or "unknown devices",
                    md["uuid"] or "(no UUID recorded)", ", ".join(members)))
        roles = {os.path.realpath(self.resolver.dev_path(d["dev"])): d["role"] for d in have}
        for position, member in enumerate(members):
            role = roles.get(os.path.realpath(self.resolver.dev_path(member)))
            if role is not None and role != position:
                self.warnings.append(
                    "%s: member %d (%s) has md role %s, not %d as recorded; md assembles by its superblocks, so the "
                    "data is intact, but the catalog's member order for this array is wrong" % (
                        dev, md["members"][position], member, role, position))

    def _vgs(self):
        rc, out, err = self.rec.probe([self._bin("vgs"), "--reportformat", "json", "-o", "vg_name,vg_uuid"])
        if rc != 0:
            raise StillpointError("vgs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out, stderr=err)
        return parse_lvm_report(out, "vg")

    def _lvs(self, vg):
        rc, out, err = self.rec.probe([self._bin("lvs"), "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", vg])
        if rc != 0:
            raise StillpointError("lvs %s failed (rc=%s): %s" % (vg, rc, (err or out).strip()), rc=rc, stdout=out,
                                  stderr=err)
        return parse_lvm_report(out, "lv")

    @staticmethod
    def _find_vg(vgs, vg):
        named = [v for v in vgs if v.get("vg_name") == vg["vg"]]
        if len(named) > 1:
            raise StillpointError(
                "%d volume groups are named %s (UUIDs %s): a copy and its source on one host? Refusing to pick one."
                % (len(named), vg["vg"], ", ".join(v.get("vg_uuid", "?") for v in named)))
        if not named:
            return None
        if vg["uuid"] and lvm_uuid_key(named[0].get("vg_uuid")) != lvm_uuid_key(vg["uuid"]):
            raise StillpointError(
                "Volume group %s has UUID %s, but the layout records %s: it is not this set's volume group. "
                "Refusing to touch it." % (vg["vg"], named[0].get("vg_uuid"), vg["uuid"]))
        return named[0]

    def _activate(self, vg, devices):
        pending = self.check_mode and (any(p.startswith("<") for p in devices.values()) or
                                       any(s["what"].startswith("assemble ") for s in self.rec.planned))
        if pending:  # what it sits on is only planned
            if vg["clone_of"]:
                self.rec.act("import volume group %s as %s with new UUIDs" % (vg["clone_of"], vg["vg"]),
                             [self._bin("vgimportclone"), "--basevgname", vg["vg"]] + self._pv_paths(vg, devices))
            self.rec.act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]])
            return
        found = self._find_vg(self._vgs(), vg)
        if found is None and vg["clone_of"]:
            # the copy's PVs still carry the source's PV and VG UUIDs: new UUIDs and the new name
            self.rec.act("import the copy of volume group %s as %s with new UUIDs" % (vg["clone_of"], vg["vg"]),
                         [self._bin("vgimportclone"), "--basevgname", vg["vg"]] + self._pv_paths(vg, devices),
                         fail="vgimportclone could not import the copy as %s" % vg["vg"])
            if self.check_mode:
                self.rec.act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]])
                return
            found = self._find_vg(self._vgs(), vg)
        if found is None:
            raise StillpointError(
                "Volume group %s is not visible on this host after the restore: its PVs (%s) do not carry it, or LVM "
                "does not scan them (a filter in lvm.conf, or a devices file such as /etc/lvm/devices/system.devices "
                "that lists the old volumes: add the new ones with vgimportdevices %s)."
                % (vg["vg"], ", ".join(self._pv_paths(vg, devices)) or "not recorded", vg["vg"]))
        if vg["pvs"]:
            self._check_pvs(vg, devices)
        lvs = self._lvs(vg["vg"])
        names = [lv.get("lv_name") for lv in lvs]
        missing = [lv for lv in vg["lvs"] if lv not in names]
        if missing:
            raise StillpointError("Volume group %s has no LV %s (it has %s); refusing to go on."
                                  % (vg["vg"], ", ".join(missing), ", ".join(names) or "none"))
        wanted = [lv for lv in lvs if not vg["lvs"] or lv.get("lv_name") in vg["lvs"]]
        if any(len(lv.get("lv_attr", "")) < 5 or lv["lv_attr"][4] != "a" for lv in wanted):
            self.rec.act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]],
                         fail="cannot activate volume group %s" % vg["vg"])

    def _pv_paths(self, vg, devices):
        return [devices[pv] if isinstance(pv, int) else pv for pv in vg["pvs"]]

    def _check_pvs(self, vg, devices):
        rc, out, err = self.rec.probe([self._bin("pvs"), "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"])
        if rc != 0:
            raise StillpointError("pvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out, stderr=err)
        rows = [r for r in parse_lvm_report(out, "pv") if r.get("vg_name") == vg["vg"]]
        have = sorted(os.path.realpath(self.resolver.dev_path(r["pv_name"])) for r in rows)
        want = sorted(os.path.realpath(self.resolver.dev_path(p)) for p in self._pv_paths(vg, devices))
        if have != want:
            raise StillpointError(
                "Volume group %s sits on %s, but the set records it on %s (the restored volumes). Refusing to activate "
                "it: it would mix volumes that are not this restore's. If that is its source (or another copy) on this "
                "host, the restored copy carries the same PV and VG UUIDs: %s." % (
                    vg["vg"], ", ".join(r["pv_name"] for r in rows) or "nothing", ", ".join(self._pv_paths(vg, devices)),
                    _BESIDE_HINT))

    def _verify(self, fs, sources, devices):
        base = CHECKS.get(fs["fstype"])
        where = "%s %s on %s" % (fs["fstype"], fs["mountpoint"], self._describe(fs, sources, devices))
        if base is None:
            self.warnings.append("no read-only check is known for %s; mounted without one" % where)
            return
        argv = [self._bin(base[0])] + base[1:] + [sources[0]]
        res = self.rec.act("check %s (read-only)" % where, argv, fail=False, changes=False)
        if res is None:
            return
        rc, out, err = res
        text = (out + "\n" + err).strip()
        if rc != 0 and _UNREPLAYED_RE.search(text):
            # A frozen or crash-consistent copy carries a log/journal to replay (an XFS frozen for its
            # snapshot always does): the read-only check cannot judge it. The restored volume is a new
            # copy, so replay it the way the kernel would, on a private mountpoint, then check again.
            self._replay(fs, sources, where)
            rc, out, err = self.rec.act("check %s again after the log replay (read-only)" % where, argv, fail=False,
                                        changes=False)
            text = (out + "\n" + err).strip()
        if rc != 0:
            hint = ""
            if _UNREPLAYED_RE.search(text):
                hint = (" Its journal/log still needs a replay after one was done; mount it by hand and check again, "
                        "or set verify=false if you accept the risk.")
            tail = "\n".join(text.splitlines()[-12:])
            raise StillpointError(
                "Read-only check of %s failed (%s rc=%s). Not mounted; nothing was mounted.%s\n%s"
                % (where, os.path.basename(argv[0]) + " " + " ".join(base[1:]), rc, hint, tail),
                rc=rc, stdout=out, stderr=err, cmd=argv, mountpoint=fs["mountpoint"])

    def _replay(self, fs, sources, where):
        """Replay a filesystem's log/journal: mount it on a private directory and unmount it again."""
        private = tempfile.mkdtemp(prefix="stillpoint-replay-")
        argv = [self._bin("mount"), "-t", fs["fstype"]]
        options = ["nouuid"] if fs["fstype"] == "xfs" else []  # its source may be mounted on this host too
        if fs["kind"] == "btrfs-multi":
            options += ["device=%s" % s for s in sources]
        if options:
            argv += ["-o", ",".join(options)]
        try:
            self.rec.act("replay the log of %s (mount on %s)" % (where, private), argv + [sources[0], private],
                         fail="cannot mount %s to replay its log" % where, changes=False)
            self.rec.act("unmount %s after the log replay" % private, [self._bin("umount"), private],
                         fail="cannot unmount %s after the log replay" % private, changes=False)
        finally:
            try:
                os.rmdir(private)
            except OSError:
                pass

    def _describe(self, fs, sources, devices):
        """``vol-... (/dev/nvme1n1)`` of the volumes under a filesystem."""
        vols = self._volume_ids
        parts = []
        for i in fs["members"]:
            parts.append("member %d %s(%s)" % (i, (vols[i] + " ") if vols else "", devices.get(i, "?")))
        if fs["device"]:
            return "%s over %s" % (fs["device"], ", ".join(parts) or "its members")
        return ", ".join(parts) or ", ".join(sources)

    def _mount(self, fs, sources, extra):
        mp = fs["mountpoint"]
        if not os.path.isdir(mp):
            self.rec.act("create mountpoint %s" % mp, [self._bin("mkdir"), "-p", mp],
                         fail="cannot create the mountpoint %s" % mp)
        options = list(fs["options"]) + [o for o in extra if o not in fs["options"]]
        if fs["kind"] == "btrfs-multi":
            options += ["device=%s" % s for s in sources]
        argv = [self._bin("mount"), "-t", fs["fstype"]]
        if options:
            argv += ["-o", ",".join(options)]
        argv += [sources[0], mp]
        self.rec.act("mount %s" % mp, argv, fail="cannot mount %s" % mp)

    def _check_sentinels(self, layout, sentinel):
        if self.check_mode:
            self.rec.note("check that %s exists on every filesystem" % sentinel)
            return
        missing = []
        for fs in layout.mount_order():
            path = os.path.join(fs["mountpoint"], sentinel)
            if not os.path.lexists(path):
                missing.append(path)
        self.rec.note("check sentinel %s" % sentinel, missing=missing)
        if missing:
            raise StillpointError(
                "Sentinel missing after mounting: %s. The restored filesystems are not the data the set should hold; "
                "they stay mounted for inspection and the application was NOT started." % ", ".join(missing),
                missing=missing)

    # result -------------------------------------------------------------------------------

    def _result(self, layout, extra):
        mounts = self.resolver.mounts()
        final = []
        for fs in layout.mount_order():
            m = visible_mount(mounts, fs["mountpoint"])
            entry = dict(mountpoint=fs["mountpoint"], fstype=fs["fstype"], mounted=m is not None)
            if m is not None:
                entry.update(source=m["source"], majmin=m["majmin"], options=",".join(m["options"]))
            final.append(entry)
        out = dict(changed=self.changed, actions=self.actions, mounts=final)
        out.update(extra)
        return out


def array_host(runner, params, check_mode=False, which=None, resolver=None, warn=None, **hostops):
    """The array_host module: ``params["state"]`` (down or up) for ``params["layout"]`` (with
    ``import_clone``, the copy's layout from :func:`~._layout.clone_layout`) and the hooks of
    ``stop_command``/``start_command``/``checksum_command``.

    Returns :meth:`HostOps.down`'s or :meth:`HostOps.up`'s result; a failure's StillpointError carries
    ``changed`` and ``actions`` too. ``warn(text)`` gets each warning."""
    p = params
    ops = HostOps(runner, resolver or DeviceResolver(by_id_dir=p["by_id_dir"]), check_mode=check_mode, which=which,
                  **hostops)
    try:
        if p["import_clone"]:
            layout = Layout(clone_layout(p["layout"], p["mountpoint_map"], p["vg_map"], p["md_map"]))
        elif p["mountpoint_map"] or p["vg_map"] or p["md_map"]:
            raise StillpointError("mountpoint_map, vg_map and md_map only apply with import_clone: true (a copy "
                                  "brought up beside its source under new names).")
        else:
            layout = Layout(p["layout"])

        def hooks(pre=None, post=None):
            return Hooks(lambda argv: runner(argv, check=False), pre=pre, post=post, timeout=p["hook_timeout"],
                         on_failure="continue", timeout_bin=runner.bin("timeout"))

        both = hooks(p["stop_command"], p["start_command"]) if p["stop_command"] or p["start_command"] else None
        if p["state"] == "down":
            result = ops.down(layout, volume_ids=p["volume_ids"], hooks=both, run_hooks=p["run_hooks"],
                              force_unmount=p["force_unmount"])
        else:
            result = ops.up(layout, volume_ids=p["volume_ids"], hooks=both, run_hooks=p["run_hooks"],
                            device_timeout=p["device_timeout"], verify=p["verify"], sentinel=p["sentinel"],
                            checksum=hooks(p["checksum_command"]) if p["checksum_command"] else None,
                            mount_options_extra=p["mount_options_extra"])
    except StillpointError as exc:
        exc.details.update(changed=ops.changed, actions=ops.actions)
        raise
    finally:
        for warning in ops.warnings:
            (warn or (lambda text: None))(warning)
    return result
