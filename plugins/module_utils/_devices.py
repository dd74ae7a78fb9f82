# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mountpoint -> block devices -> EBS volume ids.

Private to the collection. Pure Python over ``/proc`` and ``/sys``; every root path is
injectable so that tests can point the resolver at a fake tree.

The walk: a mountpoint's ``maj:min`` (from ``/proc/self/mountinfo``) names a node under
``/sys/dev/block``; a partition is replaced by its parent disk; a stacked device (device-mapper,
md) is replaced by the members listed in its ``slaves/`` directory, recursively, down to whole
disks. Each whole disk is then identified by volume id, never by its name or enumeration order:

* Nitro (NVMe): the controller serial is the volume id without the dash (``vol0123...``), read
  from ``/sys/block/<disk>/device/serial``;
* otherwise a udev link ``nvme-Amazon_Elastic_Block_Store_vol...`` in ``/dev/disk/by-id`` that
  points at the disk (the tests and the demo use such links to stand loop devices in for EBS);
* Xen (``xvdX``) disks expose no volume id inside the guest: they can only be matched by device
  name against the instance's block device mappings, passed in as ``attachments``.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

EBS_MODEL = "Amazon Elastic Block Store"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"

# Volume ids: 8 hex digits (old) or 17 (current). The NVMe serial drops the dash.
_VOLUME_RE = re.compile(r"^vol-?([0-9a-f]{8}|[0-9a-f]{17})$")

# udev by-id links of an EBS namespace. Accepted suffixes name the namespace (systemd's "_1",
# amazon-ec2-utils' "-ns-1") and still point at the whole disk; "-partN" links point at a
# partition and are ignored.
_BY_ID_RE = re.compile(
    r"^nvme-Amazon_Elastic_Block_Store_(vol-?(?:[0-9a-f]{8}|[0-9a-f]{17}))(?:_\d+|-ns-\d+)?$"
)

# Device names accepted by AttachVolume and how a Xen guest names them.
_ATTACH_NAME_RE = re.compile(r"^(?:/dev/)?(?:xvd|sd)([a-z]{1,2})(\d*)$")

_MAX_DEPTH = 16

# The option of the modules that find disks by volume id (doc fragment stillpoint.snapshots.devices).
DEVICES_ARGS = dict(by_id_dir=dict(type="path", default="/dev/disk/by-id"))

REMEDY_NOT_EBS = (
    "Instance-store (ephemeral) and other non-EBS disks cannot be snapshotted by EBS; keep the "
    "data to back up on EBS volumes, or leave this mountpoint out of the set."
)


_ESCAPE_RE = re.compile(rb"\\([0-7]{3})")


def _unescape(raw):
    """Decode the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012``, ``\\134``).

    The escapes stand for bytes: decode them as bytes, then as ``os`` functions see file names.
    """
    return os.fsdecode(_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def parse_mountinfo(text):
    """Parse ``/proc/<pid>/mountinfo`` (str or bytes) into a list of dicts, in file order.

    This is the collection's one mount-table parser (``_freeze`` uses it too). Each dict has
    ``mount_id``, ``parent_id``, ``dev`` (``"259:1"``, also as ``majmin``), ``major``, ``minor``,
    ``root``, ``mountpoint``, ``options`` (per-mount options, a list), ``optional`` (e.g.
    ``shared:1``), ``fstype``, ``source``, ``super_options`` (a list) and ``read_only``. Paths are
    unescaped; bytes that are not UTF-8 become surrogates (``os.fsdecode``).
    """
    if isinstance(text, str):
        text = os.fsencode(text)
    mounts = []
    for lineno, line in enumerate(text.split(b"\n"), 1):
        if not line.strip():
            continue
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = (int(x) for x in fields[2].split(b":"))
            tail = fields[sep + 1:] + [b"", b"", b""]
            entry = dict(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                dev="%d:%d" % (major, minor),
                majmin="%d:%d" % (major, minor),
                major=major,
                minor=minor,
                root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                options=fields[5].decode("ascii", "replace").split(","),
                optional=[f.decode("ascii", "replace") for f in fields[6:sep]],
                fstype=_unescape(tail[0]),
                source=_unescape(tail[1]),
                super_options=[o for o in _unescape(tail[2]).split(",") if o],
            )
        except (ValueError, IndexError):
            raise StillpointError(
                "Cannot parse mountinfo line %d: %r. Is this a /proc/<pid>/mountinfo file?" % (lineno, line)
            )
        entry["read_only"] = "ro" in entry["options"]
        mounts.append(entry)
    return mounts


def read_mountinfo(path="/proc/self/mountinfo"):
    """Read and parse a mountinfo file (see :func:`parse_mountinfo`)."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise StillpointError("Cannot read the mount table %s: %s; is /proc mounted?" % (path, e.strerror))
    return parse_mountinfo(text)


def ebs_id_from_serial(serial):
    """``"vol0123456789abcdef0"`` or ``"vol-0123456789abcdef0"`` -> ``"vol-0123456789abcdef0"``.

    Surrounding blanks and NULs (NVMe serials are space-padded to 20 bytes) are ignored. Returns
    None for anything that is not a volume id (an instance-store serial such as ``AWS1A2B...``).
    """
    if serial is None:
        return None
    if isinstance(serial, bytes):
        serial = serial.decode("ascii", "replace")
    m = _VOLUME_RE.match(serial.strip(" \t\r\n\x00"))
    if not m:
        return None
    return "vol-" + m.group(1)


def normalize_device_name(name):
    """A device name in the form the EBS API uses: ``/dev/xvdf``, ``xvdf``, ``sdf`` -> ``/dev/sdf``.

    A trailing partition number is kept (``/dev/xvda1`` -> ``/dev/sda1``): the API's root device
    name is often ``/dev/sda1``. NVMe and other names have no API form: StillpointError.
    """
    m = _ATTACH_NAME_RE.match((name or "").strip())
    if not m:
        raise StillpointError(
            "%r is not an EBS attachment device name (/dev/sdX, /dev/xvdX). NVMe names such as "
            "nvme1n1 follow enumeration order and do not say which volume they are: select disks "
            "by volume id." % (name,)
        )
    return "/dev/sd%s%s" % (m.group(1), m.group(2))


def read_sysfs(path):
    """The stripped text of a sysfs (or /proc) attribute; None when it cannot be read."""
    try:
        with open(path, "r") as f:
            return f.read().strip(" \t\r\n\x00")
    except (OSError, UnicodeDecodeError):
        return None


def slaves(node):
    """Kernel names of the devices a sysfs block node sits on (its ``slaves/``), sorted."""
    try:
        return sorted(os.listdir(os.path.join(node, "slaves")))
    except OSError:
        return []


def visible_mounts(mounts):
    """mountpoint -> the entry visible there (the top one when a path is mounted over)."""
    by_path = {}
    for entry in mounts:
        by_path.setdefault(entry["mountpoint"], []).append(entry)
    visible = {}
    for path, entries in by_path.items():
        if len(entries) > 1:
            parents = {e["parent_id"] for e in entries}
            tops = [e for e in entries if e["mount_id"] not in parents]
            entries = tops or entries
        visible[path] = entries[-1]
    return visible


def visible_mount(mounts, mountpoint):
    """The entry visible at ``mountpoint`` (as given or its real path), or None."""
    visible = visible_mounts(mounts)
    return visible.get(mountpoint) or visible.get(os.path.realpath(mountpoint))


def containing_mount(path, visible):
    """The visible mount (of :func:`visible_mounts`) whose filesystem holds ``path`` (normalized, absolute)."""
    probe = path
    while True:
        if probe in visible:
            return visible[probe]
        if probe == "/" or not probe:
            return None
        probe = os.path.dirname(probe)


class DeviceResolver:
    """Find the EBS volumes under mountpoints, and the disks of a volume id."""

    def __init__(self, sys_root="/sys", dev_root="/dev", by_id_dir="/dev/disk/by-id",
                 mountinfo_path="/proc/self/mountinfo"):
        self.sys_root = sys_root
        self.dev_root = dev_root
        self.by_id_dir = by_id_dir
        self.mountinfo_path = mountinfo_path

    # mounts ---------------------------------------------------------------------------------

    def mounts(self):
        return read_mountinfo(self.mountinfo_path)

    def mount_for(self, path):
        """The mount that contains ``path`` (of mounts stacked on one mountpoint the visible one).
        Adds ``path`` (the real path)."""
        real = os.path.realpath(path)
        best = containing_mount(real, visible_mounts(self.mounts()))
        if best is None:
            raise StillpointError(
                "No mount in %s contains %s. Is %s the mount table of this host?"
                % (self.mountinfo_path, real, self.mountinfo_path)
            )
        best = dict(best)
        best["path"] = real
        return best

    # sysfs walk -----------------------------------------------------------------------------

    def _sys(self, *parts):
        return os.path.join(self.sys_root, *parts)

    def node(self, name):
        """Real sysfs directory of a block device (disk or partition) by kernel name, or None."""
        for base in ("class/block", "block"):
            p = self._sys(base, name)
            if os.path.exists(p):
                return os.path.realpath(p)
        return None

    def majmin_node(self, majmin):
        """Real sysfs directory of the block device ``maj:min``, or None."""
        p = self._sys("dev", "block", majmin)
        return os.path.realpath(p) if os.path.exists(p) else None

    def _node_for_majmin(self, majmin):
        node = self.majmin_node(majmin)
        if node is None:
            raise StillpointError(
                "No block device %s in %s: the device was removed, or %s is not this host's sysfs."
                % (majmin, self._sys("dev", "block"), self.sys_root)
            )
        return node

    def sys_attr(self, name, *parts):
        """A sysfs attribute of the block device ``name`` (``sys_attr("md0", "md", "array_state")``), or None."""
        node = self.node(name) if name else None
        return read_sysfs(os.path.join(node, *parts)) if node else None

    def dev_path(self, path):
        """A /dev path as seen under ``dev_root`` (identity on a real host)."""
        if path.startswith("/dev/") and self.dev_root != "/dev":
            return os.path.join(self.dev_root, path[len("/dev/"):])
        return path

    def kernel_name(self, path):
        """Kernel name of a /dev path (``/dev/data/pg`` -> ``dm-0``, ``/dev/md/0`` -> ``md127``)."""
        return os.path.basename(os.path.realpath(self.dev_path(path)))

    def present_kernel_name(self, path):
        """:meth:`kernel_name` of a device that exists (as a node, or in sysfs), else None."""
        name = self.kernel_name(path)
        if os.path.exists(os.path.realpath(self.dev_path(path))) or self.node(name):
            return name
        return None

    def majmin_of(self, path):
        """``"maj:min"`` of a block device path (stat, else sysfs ``dev``), None if absent."""
        real = os.path.realpath(self.dev_path(path))
        try:
            st = os.stat(real)
        except OSError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            return "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
        return self.sys_attr(os.path.basename(real), "dev")

    def holders(self, path):
        """Kernel names of what holds a block device path (its sysfs ``holders/``), sorted."""
        name = self.present_kernel_name(path)
        node = self.node(name) if name else None
        try:
            return sorted(os.listdir(os.path.join(node, "holders"))) if node else []
        except OSError:
            return []

    def _walk(self, node, out, depth):
        if depth > _MAX_DEPTH:
            raise StillpointError(
                "Block device stack under %s is deeper than %d levels (a loop in sysfs slaves/?)."
                % (node, _MAX_DEPTH)
            )
        if os.path.exists(os.path.join(node, "partition")):
            node = os.path.dirname(node)
        below = slaves(node)
        if not below:
            name = os.path.basename(node)
            if name not in out:
                out.append(name)
            return
        for s in below:
            self._walk(os.path.realpath(os.path.join(node, "slaves", s)), out, depth + 1)

    def leaf_disks(self, majmin):
        """Whole disks (kernel names) under the block device ``majmin``, through partitions,
        device-mapper (LVM, crypt, multipath) and md layers, in sorted, de-duplicated order."""
        out = []
        self._walk(self._node_for_majmin(majmin), out, 0)
        return out

    def _btrfs_members(self, mount):
        """Block device nodes of a btrfs filesystem (its st_dev is anonymous, 0:N)."""
        source = mount["source"]
        if not source.startswith("/dev/"):
            return []
        src = os.path.realpath(os.path.join(self.dev_root, source[len("/dev/"):]))
        name = os.path.basename(src)
        base = self._sys("fs", "btrfs")
        try:
            fsids = sorted(os.listdir(base))
        except OSError:
            return []
        for fsid in fsids:
            devdir = os.path.join(base, fsid, "devices")
            if os.path.lexists(os.path.join(devdir, name)):
                return [os.path.realpath(os.path.join(devdir, d)) for d in sorted(os.listdir(devdir))]
        return []

    def disks_for_mount(self, mount):
        """Leaf disks under a parsed mount entry; StillpointError when it has no block device."""
        if mount["major"] != 0:
            return self.leaf_disks(mount["majmin"])
        nodes = self._btrfs_members(mount) if mount["fstype"] == "btrfs" else []
        if not nodes:
            raise StillpointError(
                "%s is a %s filesystem from %s, not on a block device: EBS cannot snapshot it."
                % (mount["mountpoint"], mount["fstype"], mount["source"])
            )
        out = []
        for node in nodes:
            self._walk(node, out, 0)
        return out

    # identification -------------------------------------------------------------------------

    def _link_disk(self, link):
        """Kernel name of the whole disk a /dev link points at (None for a partition or a
        dangling link)."""
        target = os.path.realpath(link)
        try:
            st = os.stat(target)
        except OSError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            node = self.majmin_node("%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        else:
            node = self.node(os.path.basename(target))
        if node is None or os.path.exists(os.path.join(node, "partition")):
            return None
        return os.path.basename(node)

    def by_id_volumes(self):
        """``{disk: volume_id}`` from the EBS links in ``by_id_dir``."""
        out = {}
        try:
            names = sorted(os.listdir(self.by_id_dir))
        except OSError:
            return out
        for n in names:
            m = _BY_ID_RE.match(n)
            if not m:
                continue
            disk = self._link_disk(os.path.join(self.by_id_dir, n))
            if disk is not None:
                out.setdefault(disk, ebs_id_from_serial(m.group(1)))
        return out

    def _disk_attr(self, disk, attr):
        for rel in (("device", attr), (attr,)):
            v = read_sysfs(self._sys("block", disk, *rel))
            if v:
                return v
        return None

    def serial_volume_id(self, disk):
        return ebs_id_from_serial(self._disk_attr(disk, "serial"))

    def volume_id(self, disk, attachments=None, _by_id=None):
        """EBS volume id of a whole disk: NVMe serial, else a by-id link, else (Xen disks only)
        its device name looked up in ``attachments`` (``{"/dev/sdf": "vol-..."}``, the instance's
        block device mappings). None when nothing says which volume it is."""
        vol = self.serial_volume_id(disk)
        if vol:
            return vol
        by_id = self.by_id_volumes() if _by_id is None else _by_id
        if disk in by_id:
            return by_id[disk]
        if attachments:
            return self._attachment_volume(disk, attachments)
        return None

    @staticmethod
    def _attachment_volume(disk, attachments):
        try:
            name = normalize_device_name(disk)
        except StillpointError:
            return None
        table = {}
        for key, vol in attachments.items():
            try:
                table[normalize_device_name(key)] = ebs_id_from_serial(vol)
            except StillpointError:
                continue
        if name in table:
            return table[name]
        # An HVM guest sees the API's root device /dev/sda1 as the whole disk xvda.
        if name[-1].isalpha() and name + "1" in table:
            return table[name + "1"]
        return None

    def _not_ebs_reason(self, disk):
        model = self._disk_attr(disk, "model")
        serial = self._disk_attr(disk, "serial")
        if model == INSTANCE_STORE_MODEL:
            return "it is an EC2 instance-store (ephemeral) NVMe disk (serial %s)" % serial
        if disk.startswith("xvd"):
            return (
                "it is a Xen disk (EBS device name %s) and Xen guests do not expose the volume "
                "id; pass the instance's block device mappings as attachments to match it by "
                "device name" % normalize_device_name(disk)
            )
        what = ", ".join("%s %r" % (k, v) for k, v in (("model", model), ("serial", serial)) if v)
        return (
            "it has %s and no nvme-Amazon_Elastic_Block_Store_vol... link in %s points at it"
            % (what or "no serial", self.by_id_dir)
        )

    # the public entry points ----------------------------------------------------------------

    def resolve(self, mountpoints, attachments=None):
        """For each mountpoint: ``{"mountpoint", "fstype", "source", "majmin", "disks":
        [{"name", "volume_id", "dev_path"}], "volume_ids"}``.

        Raises one StillpointError listing every problem (``details["problems"]``) when a path
        is not a mountpoint, is not on a block device, or has a disk without an EBS volume id.
        """
        results, problems, failed = [], [], set()
        by_id = self.by_id_volumes()
        for mp in mountpoints:
            n_problems = len(problems)
            self._resolve_one(mp, attachments, by_id, results, problems)
            if len(problems) > n_problems:
                failed.add(mp)
        if problems:
            raise StillpointError(
                "Cannot map %d of %d mountpoints to EBS volumes:\n- %s"
                % (len(failed), len(mountpoints), "\n- ".join(problems)),
                problems=problems,
            )
        return results

    def _resolve_one(self, mp, attachments, by_id, results, problems):
        try:
            mount = self.mount_for(mp)
        except StillpointError as e:
            problems.append("%s: %s" % (mp, e.msg))
            return
        if mount["path"] != mount["mountpoint"]:
            problems.append(
                "%s is not a mountpoint (%s in the %s filesystem mounted at %s); name the "
                "mountpoint of each filesystem to snapshot."
                % (mp, "it lies" if os.path.lexists(mp) else "it does not exist; its path lies",
                   mount["fstype"], mount["mountpoint"])
            )
            return
        try:
            disks = self.disks_for_mount(mount)
        except StillpointError as e:
            problems.append(e.msg)
            return
        entry = dict(
            mountpoint=mount["mountpoint"], fstype=mount["fstype"], source=mount["source"],
            majmin=mount["majmin"], options=",".join(mount["options"]), disks=[], volume_ids=[],
        )
        for disk in disks:
            vol = self.volume_id(disk, attachments=attachments, _by_id=by_id)
            entry["disks"].append(dict(name=disk, volume_id=vol, dev_path=os.path.join(self.dev_root, disk)))
            if vol is None:
                problems.append(
                    "%s: disk %s (%s) has no EBS volume id: %s. %s"
                    % (mp, disk, os.path.join(self.dev_root, disk), self._not_ebs_reason(disk), REMEDY_NOT_EBS)
                )
            elif vol not in entry["volume_ids"]:
                entry["volume_ids"].append(vol)
        results.append(entry)

    def volume_for_path(self, path):
        """EBS volume id of the disk behind ``path`` (a ``/dev`` node or a link to one; a partition counts
        as its disk), or None when it is not an EBS volume."""
        name = os.path.basename(os.path.realpath(path))
        if not os.path.isdir(self._sys("block", name)):
            parent = os.path.basename(os.path.dirname(os.path.realpath(self._sys("class", "block", name))))
            if os.path.isdir(self._sys("block", parent)):
                name = parent
        return self.volume_id(name)

    def devices_for_volume(self, volume_id):
        """``/dev/<disk>`` paths of the disks that are EBS volume ``volume_id`` (by NVMe serial or
        by-id link; never by name or enumeration order). Empty when the volume is not attached."""
        want = ebs_id_from_serial(volume_id)
        if want is None:
            raise StillpointError("%r is not an EBS volume id (vol-0123456789abcdef0)." % (volume_id,))
        found = []
        try:
            disks = sorted(os.listdir(self._sys("block")))
        except OSError as e:
            raise StillpointError("Cannot list block devices in %s: %s" % (self._sys("block"), e))
        for disk in disks:
            if self.serial_volume_id(disk) == want:
                found.append(disk)
        for disk, vol in sorted(self.by_id_volumes().items()):
            if vol == want and disk not in found:
                found.append(disk)
        return [os.path.join(self.dev_root, d) for d in found]

    def _mounts_by_disk(self):
        """``[(mountpoint, [leaf disk, ...])]`` of every mount on a block device, the last mounted
        first (the order to unmount them in). Mounts whose device is gone from sysfs are left out."""
        out = []
        for mount in reversed(self.mounts()):
            if mount["major"] == 0 and mount["fstype"] != "btrfs":
                continue
            try:
                disks = self.disks_for_mount(mount)
            except StillpointError:
                continue
            out.append((mount["mountpoint"], disks))
        return out

    def volume_mounts(self, volume_ids):
        """For each EBS volume id, in the given order: ``{"volume_id", "devices", "mountpoints",
        "present"}``.

        ``devices`` are the ``/dev/<disk>`` paths of :meth:`devices_for_volume` (NVMe serial or by-id
        link, never a device name); ``present`` is true when there is at least one. ``mountpoints``
        lists every mount of a filesystem on those disks, directly, on a partition, or on a stacked
        device above them (device-mapper, md), bind mounts included; one entry per mount, the last
        mounted first, so unmounting them in this order works. ``volume_id`` is given in its dashed
        form. Raises StillpointError naming every argument that is not a volume id.
        """
        bad = [v for v in volume_ids if ebs_id_from_serial(v) is None]
        if bad:
            raise StillpointError(
                "Not EBS volume ids: %s. Give ids such as vol-0123456789abcdef0 (from EC2, e.g. the instance's "
                "block device mappings)." % ", ".join(repr(v) for v in bad),
                invalid=bad,
            )
        out = []
        for vid in volume_ids:
            devices = self.devices_for_volume(vid)
            out.append(dict(volume_id=ebs_id_from_serial(vid), devices=devices, mountpoints=[],
                            present=bool(devices)))
        if any(entry["present"] for entry in out):
            mounts = self._mounts_by_disk()
            for entry in out:
                names = set(os.path.basename(d) for d in entry["devices"])
                entry["mountpoints"] = [mp for mp, disks in mounts if names.intersection(disks)]
        return out
