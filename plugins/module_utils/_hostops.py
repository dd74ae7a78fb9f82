# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host side of a restore: take a set's filesystems down, bring the restored ones up.

Private to the collection. Pure Python: commands go through a
:class:`~._common.CommandRunner` (argv lists, ``LC_ALL=C``), devices are found by EBS volume id
through :class:`~._devices.DeviceResolver`, never by device name or enumeration order.

The order follows seed 000, the other way round for a restore:

* ``down``: the application (stop hook), then the filesystems (unmounted deepest first), then the
  volume managers (``vgchange -an``, then ``mdadm --stop``), so that the volumes can be detached.
* ``up``: wait for every restored volume by id, ``mdadm --assemble`` in the recorded member order,
  ``vgchange -ay``, a read-only check of every filesystem, mount, sentinel and checksum, then the
  application (start hook).

Both are idempotent (what is already down or up is left alone) and, in check mode, return the
plan of commands without running any that changes state (read-only probes still run).

The layout is the set's array descriptor from the catalog (``backup_set_info`` returns it as
``array``)::

    filesystems: [{mountpoint, fstype, options, members: [member indexes],
                   device (optional: an md device or /dev/<vg>/<lv> of this layout),
                   partition (optional: partition number on the single member)}]
    md:  [{device: /dev/md0, uuid, level, chunk, members: [member indexes in md role order]}]
    lvm: [{vg, uuid, pvs: [member indexes or md devices of this layout], lvs: [lv names]}]

Everything else in the descriptor is ignored. ``/etc/fstab`` is never read or written.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import pwd
import re
import tempfile
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import ebs_id_from_serial

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


# -- parsing --------------------------------------------------------------------------------


def parse_export(text):
    """``KEY=VALUE`` lines (``mdadm --examine --export``, ``mdadm --detail --export``) -> dict.

    Blank lines and lines without ``=`` are skipped; a value in single or double quotes is
    unquoted; the last of repeated keys wins."""
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def md_detail_devices(export):
    """Member devices of a running array from ``mdadm --detail --export`` (parsed):
    ``[{"dev": "/dev/nvme1n1", "role": 0}]`` (role ``"spare"`` for a spare), sorted by role.

    mdadm names the keys after the member's sysfs entry (``MD_DEVICE_ev_nvme1n1_ROLE`` /
    ``_DEV``); only the pairing of ``_ROLE`` and ``_DEV`` under one key is relied on."""
    roles, devs = {}, {}
    for key, value in export.items():
        if not key.startswith("MD_DEVICE_"):
            continue
        if key.endswith("_ROLE"):
            roles[key[len("MD_DEVICE_"):-len("_ROLE")]] = value
        elif key.endswith("_DEV"):
            devs[key[len("MD_DEVICE_"):-len("_DEV")]] = value
    out = []
    for name, dev in devs.items():
        role = roles.get(name)
        if role is not None and role.isdigit():
            role = int(role)
        out.append(dict(dev=dev, role=role))
    out.sort(key=lambda d: (not isinstance(d["role"], int), d["role"] if isinstance(d["role"], int) else 0, d["dev"]))
    return out


def parse_lvm_report(text, section):
    """Rows of an LVM ``--reportformat json`` report section (``"vg"``, ``"lv"``, ``"pv"``)."""
    try:
        data = json.loads(text)
        rows = []
        for report in data["report"]:
            rows.extend(report.get(section, []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StillpointError(
            "Cannot parse the LVM JSON report (section %r): %r. LVM 2.02.158 or later is needed for "
            "--reportformat json." % (section, (text or "")[:200]))
    return rows


def md_uuid_key(uuid):
    """An md UUID in a comparable form: mdadm's ``5f3c2a1e:9b0d4e77:...``, the dashed form of
    ``blkid``/``lsblk`` and any case compare equal."""
    return re.sub(r"[^0-9a-f]", "", (uuid or "").lower())


def lvm_uuid_key(uuid):
    """An LVM UUID without its dashes (LVM UUIDs are case-sensitive)."""
    return (uuid or "").replace("-", "").strip()


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


# -- the layout -----------------------------------------------------------------------------


def _layout_error(msg):
    return StillpointError(
        "Invalid array layout: %s. The layout is the set's array descriptor (backup_set_info's "
        "`array`): filesystems, and optionally md and lvm." % msg)


def _index_list(value, where):
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise _layout_error("%s must be a list of member indexes (integers >= 0), not %r" % (where, value))
    if len(set(value)) != len(value):
        raise _layout_error("%s names a member twice: %r" % (where, value))
    return list(value)


class Layout:
    """A validated array descriptor (see the module docstring for the keys)."""

    def __init__(self, raw):
        if not isinstance(raw, dict):
            raise _layout_error("expected a dict, got %s" % type(raw).__name__)
        self.md = [self._md(i, m) for i, m in enumerate(raw.get("md") or [])]
        self.lvm = [self._lvm(i, v) for i, v in enumerate(raw.get("lvm") or [])]
        self.filesystems = [self._fs(i, f) for i, f in enumerate(raw.get("filesystems") or [])]
        seen = set()
        for kind, items, key in (("md device", self.md, "device"), ("volume group", self.lvm, "vg"),
                                 ("mountpoint", self.filesystems, "mountpoint")):
            for item in items:
                if item[key] in seen:
                    raise _layout_error("%s %s appears twice" % (kind, item[key]))
                seen.add(item[key])

    # each part ----------------------------------------------------------------------------

    @staticmethod
    def _md(i, m):
        where = "md[%d]" % i
        if not isinstance(m, dict):
            raise _layout_error("%s must be a dict" % where)
        device = m.get("device")
        if not isinstance(device, str) or not device.startswith("/dev/"):
            raise _layout_error("%s.device must be the md device path (/dev/md0 or /dev/md/name), not %r" % (where, device))
        members = _index_list(m.get("members"), where + ".members")
        if not members:
            raise _layout_error("%s.members is empty" % where)
        return dict(device=device, uuid=m.get("uuid") or None, level=m.get("level") or None,
                    chunk=m.get("chunk") or None, members=members, clone_of=m.get("clone_of") or None)

    def _lvm(self, i, v):
        where = "lvm[%d]" % i
        if not isinstance(v, dict):
            raise _layout_error("%s must be a dict" % where)
        vg = v.get("vg")
        if not isinstance(vg, str) or not re.match(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$", vg):
            raise _layout_error("%s.vg must be a volume group name, not %r" % (where, vg))
        md_devices = [m["device"] for m in self.md]
        pvs = []
        for pv in v.get("pvs") or []:
            if isinstance(pv, int) and not isinstance(pv, bool) and pv >= 0:
                pvs.append(pv)
            elif isinstance(pv, str) and pv in md_devices:
                pvs.append(pv)
            else:
                raise _layout_error("%s.pvs entries are member indexes or md devices of this layout (%s), not %r"
                                    % (where, ", ".join(md_devices) or "none", pv))
        lvs = v.get("lvs") or []
        if not isinstance(lvs, list) or not all(isinstance(x, str) and x for x in lvs):
            raise _layout_error("%s.lvs must be a list of LV names" % where)
        return dict(vg=vg, uuid=v.get("uuid") or None, pvs=pvs, lvs=list(lvs), clone_of=v.get("clone_of") or None)

    def _fs(self, i, f):
        where = "filesystems[%d]" % i
        if not isinstance(f, dict):
            raise _layout_error("%s must be a dict" % where)
        mp = f.get("mountpoint")
        if not isinstance(mp, str) or not mp.startswith("/") or mp == "/":
            raise _layout_error("%s.mountpoint must be an absolute path other than /, not %r" % (where, mp))
        mp = posixpath.normpath(mp)
        fstype = f.get("fstype")
        if not isinstance(fstype, str) or not re.match(r"^[a-z0-9_.]+$", fstype):
            raise _layout_error("%s.fstype must be a filesystem type (ext4, xfs, btrfs...), not %r" % (where, fstype))
        options = f.get("options") or []
        if isinstance(options, str):
            options = [o for o in options.split(",") if o]
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise _layout_error("%s.options must be a comma-separated string or a list" % where)
        members = _index_list(f.get("members") or [], where + ".members")
        device = f.get("device") or None
        partition = f.get("partition")
        if partition is not None and (not isinstance(partition, int) or isinstance(partition, bool) or partition < 1):
            raise _layout_error("%s.partition must be a partition number >= 1, not %r" % (where, partition))
        if device is not None:
            if device in [m["device"] for m in self.md]:
                kind = "md"
            elif device.startswith("/dev/") and device.count("/") == 3 and \
                    device.split("/")[2] in [v["vg"] for v in self.lvm]:
                kind = "lv"
            else:
                raise _layout_error("%s.device %r is neither an md device of this layout nor /dev/<vg>/<lv> of one "
                                    "of its volume groups" % (where, device))
            if partition is not None:
                raise _layout_error("%s: partition goes only with a filesystem directly on a member volume" % where)
        elif not members:
            raise _layout_error("%s (%s) names no members and no device" % (where, mp))
        elif len(members) > 1 and fstype != "btrfs":
            raise _layout_error("%s (%s, %s) spans members %s but names no md or LVM device: only btrfs spans several "
                                "volumes by itself; record the md/LVM layout and the filesystem's device"
                                % (where, mp, fstype, members))
        elif len(members) > 1 and partition is not None:
            raise _layout_error("%s: partition goes only with a single-member filesystem" % where)
        else:
            kind = "btrfs-multi" if len(members) > 1 else "plain"
        return dict(mountpoint=mp, fstype=fstype, options=list(options), members=members, device=device,
                    partition=partition, kind=kind)

    # derived ------------------------------------------------------------------------------

    def member_indexes(self):
        used = set()
        for fs in self.filesystems:
            used.update(fs["members"])
        for md in self.md:
            used.update(md["members"])
        for vg in self.lvm:
            used.update(pv for pv in vg["pvs"] if isinstance(pv, int))
        return sorted(used)

    def mount_order(self):
        """Filesystems, parents before the filesystems mounted inside them (stable)."""
        return sorted(self.filesystems, key=lambda f: f["mountpoint"].rstrip("/").count("/"))


def validate_volume_ids(volume_ids, layout, required):
    """Volume ids by member index; every member the layout names must have one."""
    if not volume_ids:
        if required and layout.member_indexes():
            raise StillpointError(
                "volume_ids is required with state=up: the restored volume of each member, by member index "
                "(the layout uses members %s)." % layout.member_indexes())
        return []
    out = []
    for index, vol in enumerate(volume_ids):
        norm = ebs_id_from_serial(vol)
        if norm is None:
            raise StillpointError("volume_ids[%d] = %r is not an EBS volume id (vol-0123456789abcdef0)." % (index, vol))
        if norm in out:
            raise StillpointError("volume_ids names %s twice (members %d and %d)." % (norm, out.index(norm), index))
        out.append(norm)
    missing = [i for i in layout.member_indexes() if i >= len(out)]
    if missing:
        raise StillpointError(
            "The layout uses members %s but volume_ids has only %d entries (members 0..%d). Pass the volume id of "
            "every member, in member order." % (missing, len(out), len(out) - 1))
    return out


def clone_layout(raw, mountpoint_map, vg_map=None, md_map=None):
    """The layout of a restored copy brought up beside its source on one host (``import_clone``).

    The copy carries the source's md UUID, LVM PV/VG UUIDs and filesystem UUIDs. The returned
    layout gives it new names: each md array is assembled at ``md_map[device]`` (default
    ``/dev/md/<name>_clone``) with a new random UUID (``mdadm --assemble --update=uuid``), each
    volume group is imported as ``vg_map[vg]`` (default ``<vg>_clone``) with new UUIDs
    (``vgimportclone``), each filesystem is mounted at ``mountpoint_map[mountpoint]`` (required for
    every filesystem; never one of the set's own mountpoints), XFS with ``nouuid``. The recorded
    UUIDs are kept as ``clone_of``: a member still carrying one is re-identified, one that no
    longer does (a re-run, a reboot) is taken as already imported."""
    if not isinstance(raw, dict):
        raise _layout_error("expected a dict, got %s" % type(raw).__name__)
    mountpoint_map = dict(mountpoint_map or {})
    vg_map = dict(vg_map or {})
    md_map = dict(md_map or {})
    fss = raw.get("filesystems") or []
    recorded = set(posixpath.normpath(f.get("mountpoint") or "") for f in fss if isinstance(f, dict))
    mp_map = dict((posixpath.normpath(k), v) for k, v in mountpoint_map.items())
    missing = sorted(mp for mp in recorded if mp not in mp_map)
    if missing:
        raise StillpointError(
            "import_clone needs mountpoint_map to name a new mountpoint for every filesystem of the set; missing: %s. "
            "The copy must not be mounted over its source." % ", ".join(missing))
    targets = []
    for source, target in sorted(mp_map.items()):
        if source not in recorded:
            raise StillpointError("mountpoint_map names %s, which is not a filesystem of the set (%s)"
                                  % (source, ", ".join(sorted(recorded)) or "none"))
        if not isinstance(target, str) or not target.startswith("/") or posixpath.normpath(target) == "/":
            raise StillpointError("mountpoint_map[%s] must be an absolute path other than /, not %r" % (source, target))
        target = posixpath.normpath(target)
        if target in recorded or target in targets:
            raise StillpointError(
                "mountpoint_map[%s] = %s is %s: the copy would be mounted over %s. Give each filesystem of the copy "
                "its own new mountpoint." % (source, target, "a mountpoint of the set" if target in recorded
                                             else "given twice", "its source" if target in recorded else "itself"))
        targets.append(target)
    md_new = {}
    for m in raw.get("md") or []:
        if not isinstance(m, dict) or not isinstance(m.get("device"), str):
            continue
        dev = m["device"]
        new = md_map.get(dev) or "/dev/md/%s_clone" % posixpath.basename(dev)
        if not isinstance(new, str) or not new.startswith("/dev/") or new == dev:
            raise StillpointError("md_map[%s] must be another md device path (/dev/md/<name> or /dev/mdN), not %r"
                                  % (dev, new))
        md_new[dev] = new
    vg_new = {}
    for v in raw.get("lvm") or []:
        if not isinstance(v, dict) or not isinstance(v.get("vg"), str):
            continue
        new = vg_map.get(v["vg"]) or v["vg"] + "_clone"
        if not isinstance(new, str) or new == v["vg"] or not re.match(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$", new):
            raise StillpointError("vg_map[%s] must be another volume group name, not %r" % (v["vg"], new))
        vg_new[v["vg"]] = new
    if len(set(md_new.values())) != len(md_new) or len(set(vg_new.values())) != len(vg_new):
        raise StillpointError("md_map/vg_map give two arrays or volume groups the same new name")
    out = dict(raw)
    out["md"] = [dict(m, device=md_new[m["device"]], uuid=None, clone_of=m.get("uuid") or m.get("clone_of"))
                 for m in raw.get("md") or [] if isinstance(m, dict) and m.get("device") in md_new]
    out["lvm"] = [dict(v, vg=vg_new[v["vg"]], uuid=None, clone_of=v.get("uuid") or v.get("clone_of") or "unknown",
                       pvs=[md_new.get(pv, pv) if isinstance(pv, str) else pv for pv in v.get("pvs") or []])
                  for v in raw.get("lvm") or [] if isinstance(v, dict) and v.get("vg") in vg_new]
    new_fss = []
    for f in fss:
        f = dict(f)
        f["mountpoint"] = mp_map[posixpath.normpath(f["mountpoint"])]
        dev = f.get("device")
        if dev in md_new:
            f["device"] = md_new[dev]
        elif isinstance(dev, str) and dev.count("/") == 3 and dev.split("/")[2] in vg_new:
            f["device"] = "/dev/%s/%s" % (vg_new[dev.split("/")[2]], dev.split("/")[3])
        if f.get("fstype") == "xfs":
            options = f.get("options") or []
            if isinstance(options, str):
                options = [o for o in options.split(",") if o]
            f["options"] = list(options) + (["nouuid"] if "nouuid" not in options else [])
        new_fss.append(f)
    out["filesystems"] = new_fss
    return out


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
        self.steps = []
        self.plan = []
        self.warnings = []
        self.changed = False
        self._volume_ids = []
        self._layout_lvm = []

    # plumbing -----------------------------------------------------------------------------

    def _bin(self, name):
        return self.run.bin(name)

    def _probe(self, argv):
        """A read-only command (runs in check mode too); returns (rc, stdout, stderr)."""
        return self.run(argv, check=False)

    def _act(self, what, argv, fail=None, changes=True):
        """A command that changes state: planned in check mode, else run and recorded as a step.

        Returns (rc, out, err), or None in check mode. A non-zero rc raises ``fail`` (a message,
        completed with the command's output) unless ``fail`` is False."""
        argv = list(argv)
        if self.check_mode:
            self.plan.append(dict(what=what, argv=argv))
            if changes:
                self.changed = True
            return None
        t0 = self.clock()
        rc, out, err = self.run(argv, check=False)
        self.steps.append(dict(what=what, argv=argv, rc=rc, ms=ms_since(t0, self.clock())))
        if rc == 0 and changes:
            self.changed = True
        if rc != 0 and fail is not False:
            raise StillpointError(
                "%s: %s (rc=%s): %s" % (fail or ("%s failed" % what), " ".join(argv), rc, (err or out).strip()),
                rc=rc, stdout=out, stderr=err, cmd=argv)
        return rc, out, err

    def _note(self, what, **extra):
        """A step that runs no command (a wait, a sentinel check)."""
        entry = dict(what=what, argv=[])
        entry.update(extra)
        if self.check_mode:
            self.plan.append(entry)
        else:
            self.steps.append(entry)

    def _dev(self, path):
        """A /dev path as seen under the resolver's dev_root (identity on a real host)."""
        if path.startswith("/dev/") and self.resolver.dev_root != "/dev":
            return os.path.join(self.resolver.dev_root, path[len("/dev/"):])
        return path

    def _sysblock(self, name, *parts):
        for base in ("class/block", "block"):
            p = os.path.join(self.resolver.sys_root, base, name)
            if os.path.exists(p):
                return os.path.join(p, *parts)
        return None

    def _kernel_name(self, path):
        """Kernel name of a block device path (``/dev/data/pg`` -> ``dm-0``), None if absent."""
        real = os.path.realpath(self._dev(path))
        if os.path.exists(real) or self._sysblock(os.path.basename(real)):
            return os.path.basename(real)
        return None

    def _majmin(self, path):
        """``"maj:min"`` of a block device path (stat, else sysfs ``dev``), None if absent."""
        real = os.path.realpath(self._dev(path))
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is not None and (st.st_mode & 0o170000) == 0o060000:
            return "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        p = self._sysblock(os.path.basename(real), "dev")
        if p and os.path.exists(p):
            with open(p) as f:
                return f.read().strip()
        return None

    def _holders(self, path):
        name = self._kernel_name(path)
        d = self._sysblock(name, "holders") if name else None
        try:
            return sorted(os.listdir(d)) if d else []
        except OSError:
            return []

    def _md_state(self, device):
        """``None`` (no such array or stopped), ``"inactive"`` (members claimed, not started) or the
        running state from sysfs ``md/array_state``."""
        name = self._kernel_name(device)
        if name is None and re.match(r"^/dev/md\d+$", device):
            name = os.path.basename(device)
        p = self._sysblock(name, "md", "array_state") if name else None
        if not p or not os.path.exists(p):
            return None
        with open(p) as f:
            state = f.read().strip()
        return None if state in ("clear", "") else state

    def _mounts(self):
        return self.resolver.mounts()

    @staticmethod
    def _visible(mounts, mountpoint):
        """The visible mount at ``mountpoint`` (the last one stacked there), or None."""
        real = os.path.realpath(mountpoint)
        found = None
        for m in mounts:
            if m["mountpoint"] in (mountpoint, real):
                found = m
        return found

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
        rc, out, err = self._probe([fuser, "-v", "-m", mountpoint])
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
        if self.check_mode:
            self.plan.append(dict(what=label, argv=[hooks.timeout_bin, "--kill-after=5", "%g" % hooks.timeout] + cmd))
            return None
        ok, report = hooks.pre() if which == "pre" else hooks.post()
        self.steps.append(dict(what=label, argv=[hooks.timeout_bin, "--kill-after=5", "%g" % hooks.timeout] + cmd,
                               rc=report["rc"], ms=report["ms"], timed_out=report["timed_out"]))
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
        mounts = self._mounts()
        layout_mps = set(f["mountpoint"] for f in layout.filesystems)
        to_unmount, members_seen = [], []
        for fs in reversed(layout.mount_order()):
            mount = self._visible(mounts, fs["mountpoint"])
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
            self._act("deactivate volume group %s" % vg["vg"], [self._bin("vgchange"), "-an", vg["vg"]],
                      fail="cannot deactivate volume group %s (an LV still open?)" % vg["vg"])
        for md in md_active:
            self._act("stop md array %s" % md["device"], [self._bin("mdadm"), "--stop", md["device"]],
                      fail="cannot stop %s (still in use?)" % md["device"])

        released = self._check_released(volume_ids, force_unmount)
        return self._result(layout, dict(released=released))

    def _unmount(self, fs, mount, force):
        mp = fs["mountpoint"]
        for _attempt in range(_MAX_STACKED_MOUNTS):
            res = self._act("unmount %s" % mp, [self._bin("umount"), mp], fail=False)
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
                self._act("lazy unmount %s (busy: %s)" % (mp, who), [self._bin("umount"), "-l", mp],
                          fail="lazy unmount of %s failed" % mp)
                self.warnings.append("%s was busy (%s) and was unmounted lazily (force_unmount): the filesystem stays "
                                     "alive until its users let go" % (mp, who))
            now = self._visible(self._mounts(), mp)
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
                    busy.append("member %d %s (%s) held by %s" % (index, vol, dev, ", ".join(self._holders(dev))
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

        mounts = self._mounts()
        plan = []
        for fs in layout.mount_order():
            sources = self._sources(fs, devices)
            mount = self._visible(mounts, fs["mountpoint"])
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
            mounts = self._mounts()
        for fs, sources in plan:
            for src in sources:
                if not self.check_mode:
                    self._wait_path(src, min(device_timeout, 30.0))
                    busy = [m["mountpoint"] for m in mounts if m["majmin"] == self._majmin(src)]
                    if busy or self.claimed(self._dev(src)):
                        raise StillpointError(
                            "%s (for %s) is in use: %s. Refusing to check or mount it; nothing was mounted."
                            % (src, fs["mountpoint"], "mounted at " + ", ".join(busy) if busy else
                               "claimed by %s" % (", ".join(self._holders(src)) or "a mounted filesystem")))
        if verify:
            for fs, sources in plan:
                self._verify(fs, sources, devices)
        for fs, sources in plan:
            self._mount(fs, sources, mount_options_extra)

        if not self.check_mode:
            for fs, sources in plan:
                mount = self._visible(self._mounts(), fs["mountpoint"])
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
            self._note("wait for devices by volume id", ms=ms_since(t0, self.clock()),
                       devices={str(i): out[i] for i in wanted})
        elif len(found) < len(wanted):
            self._note("wait up to %gs for %s to appear" % (timeout, ", ".join(problems[i] for i in sorted(problems))))
        return out

    def _wait_path(self, path, timeout):
        t0 = self.clock()
        while not os.path.exists(self._dev(path)):
            if self.clock() - t0 >= timeout:
                raise StillpointError("%s did not appear within %gs (udev?)" % (path, timeout))
            self.sleep(_POLL)

    def _partition(self, disk, number):
        """Path of partition ``number`` of ``disk`` (from sysfs, whatever the naming scheme)."""
        name = os.path.basename(os.path.realpath(disk))
        base = self._sysblock(name)
        if base:
            for entry in sorted(os.listdir(base)):
                p = os.path.join(base, entry, "partition")
                if os.path.exists(p):
                    with open(p) as f:
                        if f.read().strip() == str(number):
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
        majmin = self._majmin(path)
        if majmin is None:
            return []
        try:
            return self.resolver.leaf_disks(majmin)
        except StillpointError:
            return [os.path.basename(os.path.realpath(self._dev(path)))]

    def _mounted_from(self, mount, fs, sources):
        """Is ``mount`` the filesystem on ``sources``? By device number; a btrfs mount has an
        anonymous one, so by the set of disks under it."""
        if mount["major"] == 0 and fs["fstype"] == "btrfs":
            want = sorted(set(d for s in sources for d in self._leaf_disks(s)))
            return bool(want) and self._mount_disks(mount) == want
        want = self._majmin(sources[0])
        return want is not None and mount["majmin"] == want

    def _md_detail(self, device):
        rc, out, _err = self._probe([self._bin("mdadm"), "--detail", "--export", device])
        return parse_export(out) if rc == 0 else None

    def _assemble(self, md, devices):
        dev = md["device"]
        members = [devices[i] for i in md["members"]]
        if any(m.startswith("<") for m in members):  # check mode before the volumes exist: only the plan
            self._act("assemble %s" % dev, [self._bin("mdadm"), "--assemble", dev] +
                      (["--update=uuid"] if md["clone_of"] else []) + members)
            return
        state = self._md_state(dev)
        if state is not None and state != "inactive":
            self._check_running(md, self._md_detail(dev) or {}, members)
            return
        uuids = []
        for index, member in zip(md["members"], members):
            rc, out, err = self._probe([self._bin("mdadm"), "--examine", "--export", member])
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
        kname = self._kernel_name(dev)
        stop, deactivate = [], []
        for member in members:
            for holder in self._holders(member):
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
                above = self._holders(hdev)
                auto_vgs = self._auto_activated_vgs(above) if md_uuid_key(hdetail.get("MD_UUID")) == want else None
                if auto_vgs:
                    # LVM's udev autoactivation found the set's volume group on the copy udev assembled
                    for vg in auto_vgs:
                        if vg not in deactivate:
                            deactivate.append(vg)
                    above = []
                in_use = above or self._visible_by_majmin(self._majmin(hdev))
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
            self._act("deactivate volume group %s (activated by udev on the copy of %s assembled under another name)"
                      % (vg, dev), [self._bin("vgchange"), "-an", vg], fail="cannot deactivate volume group %s" % vg)
        for name in stop:
            target = dev if name == kname else "/dev/" + name
            self._act("stop %s (assembled from the restored members by udev, or left inactive) so that %s is "
                      "assembled in the recorded order" % (target, dev), [self._bin("mdadm"), "--stop", target],
                      fail="cannot stop %s" % target)
        if update:
            self._act("assemble %s with a new UUID (a copy of array %s)" % (dev, md["clone_of"]),
                      [self._bin("mdadm"), "--assemble", dev, "--update=uuid"] + members,
                      fail="mdadm could not assemble %s" % dev)
        else:
            self._act("assemble %s" % dev, [self._bin("mdadm"), "--assemble", dev] + members,
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
            ours.add(self._kernel_name(md["device"]))
            for i in md["members"]:
                if not devices[i].startswith("<"):
                    ours.update(self._holders(devices[i]))
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
            dm_uuid = self._sysread(holder, "dm", "uuid") or ""
            # an LV's dm uuid is "LVM-" + the VG UUID and the LV UUID, without dashes (32 characters each)
            vg = by_uuid.get(dm_uuid[4:36]) if dm_uuid.startswith("LVM-") else None
            if vg is None or self._holders("/dev/" + holder) or \
                    self._visible_by_majmin(self._majmin("/dev/" + holder)) or self.claimed(self._dev("/dev/" + holder)):
                return None
            if vg not in found:
                found.append(vg)
        return found

    def _sysread(self, name, *parts):
        p = self._sysblock(name, *parts)
        if not p or not os.path.exists(p):
            return None
        with open(p) as f:
            return f.read().strip()

    def _visible_by_majmin(self, majmin):
        return majmin is not None and any(m["majmin"] == majmin for m in self._mounts())

    def _check_running(self, md, detail, members):
        dev = md["device"]
        want_uuid = md_uuid_key(md["uuid"]) if md["uuid"] else None
        have = md_detail_devices(detail)
        have_real = set(os.path.realpath(self._dev(d["dev"])) for d in have)
        want_real = set(os.path.realpath(self._dev(m)) for m in members)
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
        roles = {os.path.realpath(self._dev(d["dev"])): d["role"] for d in have}
        for position, member in enumerate(members):
            role = roles.get(os.path.realpath(self._dev(member)))
            if role is not None and role != position:
                self.warnings.append(
                    "%s: member %d (%s) has md role %s, not %d as recorded; md assembles by its superblocks, so the "
                    "data is intact, but the catalog's member order for this array is wrong" % (
                        dev, md["members"][position], member, role, position))

    def _vgs(self):
        rc, out, err = self._probe([self._bin("vgs"), "--reportformat", "json", "-o", "vg_name,vg_uuid"])
        if rc != 0:
            raise StillpointError("vgs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out, stderr=err)
        return parse_lvm_report(out, "vg")

    def _lvs(self, vg):
        rc, out, err = self._probe([self._bin("lvs"), "--reportformat", "json", "-o", "vg_name,lv_name,lv_attr", vg])
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
                                       any(s["what"].startswith("assemble ") for s in self.plan))
        if pending:  # what it sits on is only planned
            if vg["clone_of"]:
                self._act("import volume group %s as %s with new UUIDs" % (vg["clone_of"], vg["vg"]),
                          [self._bin("vgimportclone"), "--basevgname", vg["vg"]] + self._pv_paths(vg, devices))
            self._act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]])
            return
        found = self._find_vg(self._vgs(), vg)
        if found is None and vg["clone_of"]:
            # the copy's PVs still carry the source's PV and VG UUIDs: new UUIDs and the new name
            self._act("import the copy of volume group %s as %s with new UUIDs" % (vg["clone_of"], vg["vg"]),
                      [self._bin("vgimportclone"), "--basevgname", vg["vg"]] + self._pv_paths(vg, devices),
                      fail="vgimportclone could not import the copy as %s" % vg["vg"])
            if self.check_mode:
                self._act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]])
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
            self._act("activate volume group %s" % vg["vg"], [self._bin("vgchange"), "-ay", vg["vg"]],
                      fail="cannot activate volume group %s" % vg["vg"])

    def _pv_paths(self, vg, devices):
        return [devices[pv] if isinstance(pv, int) else pv for pv in vg["pvs"]]

    def _check_pvs(self, vg, devices):
        rc, out, err = self._probe([self._bin("pvs"), "--reportformat", "json", "-o", "pv_name,vg_name,vg_uuid"])
        if rc != 0:
            raise StillpointError("pvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out, stderr=err)
        rows = [r for r in parse_lvm_report(out, "pv") if r.get("vg_name") == vg["vg"]]
        have = sorted(os.path.realpath(self._dev(r["pv_name"])) for r in rows)
        want = sorted(os.path.realpath(self._dev(p)) for p in self._pv_paths(vg, devices))
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
        res = self._act("check %s (read-only)" % where, argv, fail=False, changes=False)
        if res is None:
            return
        rc, out, err = res
        text = (out + "\n" + err).strip()
        if rc != 0 and _UNREPLAYED_RE.search(text):
            # A frozen or crash-consistent copy carries a log/journal to replay (an XFS frozen for its
            # snapshot always does): the read-only check cannot judge it. The restored volume is a new
            # copy, so replay it the way the kernel would, on a private mountpoint, then check again.
            self._replay(fs, sources, where)
            rc, out, err = self._act("check %s again after the log replay (read-only)" % where, argv, fail=False,
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
            self._act("replay the log of %s (mount on %s)" % (where, private), argv + [sources[0], private],
                      fail="cannot mount %s to replay its log" % where, changes=False)
            self._act("unmount %s after the log replay" % private, [self._bin("umount"), private],
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
            self._act("create mountpoint %s" % mp, [self._bin("mkdir"), "-p", mp],
                      fail="cannot create the mountpoint %s" % mp)
        options = list(fs["options"]) + [o for o in extra if o not in fs["options"]]
        if fs["kind"] == "btrfs-multi":
            options += ["device=%s" % s for s in sources]
        argv = [self._bin("mount"), "-t", fs["fstype"]]
        if options:
            argv += ["-o", ",".join(options)]
        argv += [sources[0], mp]
        self._act("mount %s" % mp, argv, fail="cannot mount %s" % mp)

    def _check_sentinels(self, layout, sentinel):
        if self.check_mode:
            self._note("check that %s exists on every filesystem" % sentinel)
            return
        missing = []
        for fs in layout.mount_order():
            path = os.path.join(fs["mountpoint"], sentinel)
            if not os.path.lexists(path):
                missing.append(path)
        self._note("check sentinel %s" % sentinel, missing=missing)
        if missing:
            raise StillpointError(
                "Sentinel missing after mounting: %s. The restored filesystems are not the data the set should hold; "
                "they stay mounted for inspection and the application was NOT started." % ", ".join(missing),
                missing=missing)

    # result -------------------------------------------------------------------------------

    def _result(self, layout, extra):
        mounts = self._mounts()
        final = []
        for fs in layout.mount_order():
            m = self._visible(mounts, fs["mountpoint"])
            entry = dict(mountpoint=fs["mountpoint"], fstype=fs["fstype"], mounted=m is not None)
            if m is not None:
                entry.update(source=m["source"], majmin=m["majmin"], options=",".join(m["options"]))
            final.append(entry)
        out = dict(changed=self.changed, steps=self.steps, mounts=final)
        if self.check_mode:
            out["plan"] = self.plan
        out.update(extra)
        return out


# -- discovery at backup time ---------------------------------------------------------------


def _sysfs_node(resolver, majmin):
    p = os.path.join(resolver.sys_root, "dev", "block", majmin)
    return os.path.realpath(p) if os.path.exists(p) else None


def _read_sys(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _slaves(node):
    try:
        return sorted(os.listdir(os.path.join(node, "slaves")))
    except OSError:
        return []


def _chunk_text(chunk_bytes):
    """sysfs ``md/chunk_size`` (bytes) -> ``"512K"`` as mdadm prints it; None for 0 or unknown."""
    if not chunk_bytes or not chunk_bytes.isdigit() or int(chunk_bytes) == 0:
        return None
    return "%dK" % (int(chunk_bytes) // 1024)


class StackDiscovery:
    """What a set's filesystems sit on, at backup time: md arrays (``mdadm --detail --export``) and
    LVM (``pvs``/``lvs --reportformat json``), found by walking sysfs from each mount's device.

    ``discover(mount)`` takes an entry of :meth:`DeviceResolver.resolve` and returns
    ``{"device", "partition", "md": [...], "lvm": [...], "volume_ids": [...]}`` with md members and
    LVM PVs named by EBS volume id (or, for a PV on an md array, by md device); ``volume_ids`` is
    the stack's member order (md role order, PVs in the order LVM lists them, every PV of the
    volume group, not only those under this LV). Returns None (and adds a warning) for stacks a
    restore cannot rebuild from whole volumes (partitions under md/LVM, dm-crypt, multipath).
    A filesystem directly on a volume returns ``{"device": None, "partition": N or None, ...}``.
    """

    def __init__(self, runner, resolver):
        self.run = runner
        self.resolver = resolver
        self.warnings = []
        self._by_id = None
        self._lvm = None

    def _vol(self, kname):
        if self._by_id is None:
            self._by_id = self.resolver.by_id_volumes()
        return self.resolver.volume_id(kname, _by_id=self._by_id)

    def _node(self, kname):
        for base in ("class/block", "block"):
            p = os.path.join(self.resolver.sys_root, base, kname)
            if os.path.exists(p):
                return os.path.realpath(p)
        return None

    def _kname(self, path):
        """Kernel name of a /dev path (``/dev/data/pg`` -> ``dm-0``, ``/dev/md/0`` -> ``md127``)."""
        if path.startswith("/dev/") and self.resolver.dev_root != "/dev":
            path = os.path.join(self.resolver.dev_root, path[len("/dev/"):])
        return os.path.basename(os.path.realpath(path))

    def _lvm_reports(self):
        if self._lvm is None:
            rc, out, err = self.run([self.run.bin("lvs"), "--reportformat", "json", "-o",
                                     "vg_name,vg_uuid,lv_name,lv_uuid,lv_kernel_major,lv_kernel_minor,lv_attr"],
                                    check=False)
            if rc != 0:
                raise StillpointError("lvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out,
                                      stderr=err)
            lvs = parse_lvm_report(out, "lv")
            rc, out, err = self.run([self.run.bin("pvs"), "--reportformat", "json", "-o",
                                     "pv_name,pv_uuid,vg_name,vg_uuid"], check=False)
            if rc != 0:
                raise StillpointError("pvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out,
                                      stderr=err)
            self._lvm = (lvs, parse_lvm_report(out, "pv"))
        return self._lvm

    def _whole_volume(self, kname, what):
        """The volume id of a whole disk; None (and a warning) for anything else."""
        node = self._node(kname)
        if node is None or os.path.exists(os.path.join(node, "partition")) or _slaves(node):
            self.warnings.append(
                "%s sits on %s, which is not a whole EBS volume (a partition, or another device-mapper layer): "
                "the md/LVM layout is not recorded, a restore must be given it by hand" % (what, kname))
            return None
        vol = self._vol(kname)
        if vol is None:
            self.warnings.append("%s sits on %s, which has no EBS volume id; the md/LVM layout is not recorded"
                                 % (what, kname))
        return vol

    def _md(self, kname, node):
        dev = "/dev/" + kname
        rc, out, err = self.run([self.run.bin("mdadm"), "--detail", "--export", dev], check=False)
        if rc != 0:
            raise StillpointError("mdadm --detail --export %s failed (rc=%s): %s" % (dev, rc, (err or out).strip()),
                                  rc=rc, stdout=out, stderr=err)
        detail = parse_export(out)
        if not detail.get("MD_UUID"):
            raise StillpointError("mdadm --detail --export %s printed no MD_UUID; is it a running md array?" % dev,
                                  stdout=out)
        members = []
        for d in md_detail_devices(detail):
            if not isinstance(d["role"], int):
                continue  # spares and faulty devices are not part of the data
            vol = self._whole_volume(self._kname(d["dev"]), dev)
            if vol is None:
                return None
            members.append(vol)
        expected = detail.get("MD_DEVICES")
        if expected and expected.isdigit() and int(expected) != len(members):
            self.warnings.append("%s has %s raid devices but %d active members: the set holds a degraded array"
                                 % (dev, expected, len(members)))
        return dict(device=dev, uuid=detail["MD_UUID"], level=detail.get("MD_LEVEL") or None,
                    chunk=_chunk_text(_read_sys(os.path.join(node, "md", "chunk_size"))), members=members)

    def _pv_entry(self, kname, vg, mds):
        node = self._node(kname)
        if node is not None and os.path.isdir(os.path.join(node, "md")):
            md = self._md(kname, node)
            if md is None:
                return None
            if md["device"] not in [m["device"] for m in mds]:
                mds.append(md)
            return md["device"]
        return self._whole_volume(kname, "volume group %s" % vg)

    def _lv(self, kname, node, top):
        majmin = _read_sys(os.path.join(node, "dev"))
        lvs, pvs = self._lvm_reports()
        rows = [r for r in lvs if "%s:%s" % (r.get("lv_kernel_major"), r.get("lv_kernel_minor")) == majmin]
        if len(rows) != 1:
            self.warnings.append("%s (%s) is a device-mapper device LVM does not report as one LV; its layout is "
                                 "not recorded" % (top["mountpoint"], kname))
            return None
        row = rows[0]
        vg = row["vg_name"]
        mds, pv_entries, order = [], [], []
        vg_pvs = [p for p in pvs if p.get("vg_name") == vg]
        if not vg_pvs:
            raise StillpointError("pvs lists no physical volume of volume group %s" % vg)
        for pv in vg_pvs:
            entry = self._pv_entry(self._kname(pv["pv_name"]), vg, mds)
            if entry is None:
                return None
            pv_entries.append(entry)
        for entry in pv_entries:
            if entry.startswith("/dev/"):
                order.extend(v for v in [m for m in mds if m["device"] == entry][0]["members"] if v not in order)
            elif entry not in order:
                order.append(entry)
        lv_names = [r["lv_name"] for r in lvs if r.get("vg_name") == vg and r.get("lv_name")]
        return dict(device="/dev/%s/%s" % (vg, row["lv_name"]), partition=None, md=mds,
                    lvm=[dict(vg=vg, uuid=row.get("vg_uuid") or None, pvs=pv_entries, lvs=lv_names)],
                    volume_ids=order)

    def discover(self, mount):
        node = _sysfs_node(self.resolver, mount["majmin"]) if mount.get("majmin") else None
        if node is None or mount["majmin"].split(":")[0] == "0":  # btrfs (anonymous dev) and the like
            return dict(device=None, partition=None, md=[], lvm=[], volume_ids=list(mount["volume_ids"]))
        kname = os.path.basename(node)
        if os.path.exists(os.path.join(node, "partition")):
            parent = os.path.basename(os.path.dirname(node))
            number = _read_sys(os.path.join(node, "partition"))
            if _slaves(os.path.dirname(node)) or not (number or "").isdigit():
                self.warnings.append("%s is on partition %s of a stacked device; its layout is not recorded"
                                     % (mount["mountpoint"], kname))
                return None
            return dict(device=None, partition=int(number), md=[], lvm=[], volume_ids=[self._vol(parent)])
        if os.path.isdir(os.path.join(node, "md")):
            md = self._md(kname, node)
            if md is None:
                return None
            return dict(device=md["device"], partition=None, md=[md], lvm=[], volume_ids=list(md["members"]))
        if os.path.isdir(os.path.join(node, "dm")):
            uuid = _read_sys(os.path.join(node, "dm", "uuid")) or ""
            if not uuid.startswith("LVM-"):
                self.warnings.append("%s is on device-mapper device %s (%s), not an LVM logical volume; its layout "
                                     "is not recorded" % (mount["mountpoint"], kname, uuid.split("-")[0] or "no uuid"))
                return None
            return self._lv(kname, node, mount)
        return dict(device=None, partition=None, md=[], lvm=[], volume_ids=list(mount["volume_ids"]))


def discover_stacks(runner, resolver, mounts):
    """Add ``stack`` (see :class:`StackDiscovery`) to each resolved mount and put its
    ``volume_ids`` in stack order (every PV of a volume group included). Returns the warnings."""
    disc = StackDiscovery(runner, resolver)
    for mount in mounts:
        stack = disc.discover(mount)
        mount["stack"] = stack
        if stack is not None:
            ordered = [v for v in stack["volume_ids"] if v]
            mount["volume_ids"] = ordered + [v for v in mount["volume_ids"] if v not in ordered]
    return disc.warnings
