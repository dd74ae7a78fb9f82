# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The array descriptor of a backup set: what a restore brings up, validated.

Private to the collection. The catalog records it at backup time (``_setplan.layout``) and
``backup_set_info`` returns it as ``array``; ``_hostops`` takes a set's filesystems down and brings
the restored ones up by it::

    filesystems: [{mountpoint, fstype, options, members: [member indexes],
                   device (optional: an md device or /dev/<vg>/<lv> of this layout),
                   partition (optional: partition number on the single member)}]
    md:  [{device: /dev/md0, uuid, level, chunk, members: [member indexes in md role order]}]
    lvm: [{vg, uuid, pvs: [member indexes or md devices of this layout], lvs: [lv names]}]

Everything else in the descriptor is ignored. :func:`clone_layout` gives a restored copy new names
so that it can come up beside its source on one host.
"""

from __future__ import annotations

import posixpath
import re

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import ebs_id_from_serial


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
