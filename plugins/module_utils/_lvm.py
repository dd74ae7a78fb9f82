# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named sets of LVM snapshots: create (all or nothing), list, mount, merge back, remove.

Private to the collection. Pure Python: commands go through a :class:`~._common.CommandRunner`
(argv lists, ``LC_ALL=C``) and every change through a :class:`~._common.Recorder` (LVM's ``--test``
is the dry run of check mode); LVM is read through ``lvs``/``vgs --reportformat json`` (parsed by
:func:`._lvm_report.parse_lvm_report`, which the restore side reads LVM with too), mounts through
``/proc/self/mountinfo``.

A set is found by its LVM tags, never by names alone. Every member carries:

* ``stillpoint-set.<set name>``: membership (``list``/``absent``/``reverted`` find members by it);
* ``stillpoint-count.<n>``: how many members the set has, so a partial set is recognised on any run;
* ``stillpoint-level.<crash|filesystem>``: the consistency the member reached;
* ``stillpoint-xlv.<yes|no>``: whether the members were consistent with each other.

Consistency. Measured in the lab (Debian bookworm, lvm2 2.03.16; kernel 6.1.0-56-cloud-amd64 in
tests/lab/test_lvm_snapshot_set.py and fixtures/lvm/*.cmd.json, bookworm-backports' 6.12.95 in
tests/lab/test_lvm_cross_lv.py):

* ``lvcreate --snapshot`` suspends the origin, and device-mapper freezes the filesystem on it for
  that moment: the ext4 inside a classic or thin snapshot of a mounted, written ext4 has no
  ``needs_recovery`` flag while its origin has. So a member of a mounted freezable filesystem is
  filesystem-consistent (fsfreeze(8) and the RHEL/Oracle XFS guides document the same).
* On 6.1 a filesystem frozen beforehand with ``fsfreeze -f`` cannot be snapshot, classic or thin:
  the suspend fails with EBUSY (the kernel's FIFREEZE and device-mapper's freeze do not nest), and
  the classic case leaves a half-made LV and a ``<vg>-<lv>-real`` node behind. There the members
  are taken one after another (about 1-2 s apart in the lab) and are NOT consistent with each other
  unless nothing could write between them (at most one member in use); a writer appending the same
  records to two LVs showed its snapshots dozens of records apart.
* From 6.6 the two freezes nest (the kernel counts user and kernel freezes separately): on 6.12 both
  filesystems of the set, frozen by FIFREEZE, were snapshot and the copies held the same records.

``cross_lv`` picks the mechanism (:meth:`SnapshotSets._choose`): ``freeze`` holds every mounted
filesystem of the members frozen through a guardian (:class:`GuardianFreezer`, the dead-man thaw of
``_freeze``: refusals of ``check_mountpoints`` first, thaw at the deadline or when this process
dies) from before the first ``lvcreate`` to after the last, thaws in ``finally`` and only then rolls
back a failure; the set is ``cross_lv_consistent``. It is refused on kernels older than 6.6 before
anything is done. ``auto`` freezes on kernels >= 6.6 when more than one member is in use (all of
them mounted), else it is ``sequential``. A set whose freeze ended at the deadline (or was thawed
by someone else) before its last member is rolled back: it is not of one instant.
"""

from __future__ import annotations

import math
import os
import re
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import Recorder
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError, lower_level, ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import read_mountinfo
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import parse_lvm_report
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import (
    DEFAULT_DEADLINE, FREEZABLE_FSTYPES, MAX_DEADLINE, Guardian, check_mountpoints)

TAG_SET = "stillpoint-set."
TAG_COUNT = "stillpoint-count."
TAG_LEVEL = "stillpoint-level."
TAG_XLV = "stillpoint-xlv."

# LV-level fields only: a segment-level field (segtype, seg_*) makes lvs print one row per segment
LVS_FIELDS = ("vg_name,lv_name,lv_uuid,lv_attr,lv_size,origin,pool_lv,lv_tags,data_percent,"
              "metadata_percent,lv_metadata_size,lv_kernel_major,lv_kernel_minor,lv_time,lv_merging")
VGS_FIELDS = "vg_name,vg_uuid,vg_extent_size,vg_extent_count,vg_free_count"

# filesystems whose super_operations implement freeze: device-mapper's lockfs quiesces them
FREEZABLE = FREEZABLE_FSTYPES

# mount options that keep a read-only mount of a snapshot from writing to it (no log replay), and
# let XFS mount a copy whose UUID is already mounted (the origin)
RO_OPTIONS = {"xfs": ["ro", "nouuid", "norecovery"], "ext3": ["ro", "noload"], "ext4": ["ro", "noload"]}

# cross_lv choices; the first kernel whose device-mapper snapshots a filesystem frozen by FIFREEZE
# (the kernel's freeze and device-mapper's nest since 6.6: measured on 6.1 (EBUSY) and 6.12 (works))
CROSS_LV = ("auto", "freeze", "sequential")
NESTED_FREEZE_KERNEL = (6, 6)
_KERNEL_RE = re.compile(r"^(\d+)\.(\d+)")

_SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_LV_NAME_RE = re.compile(r"^[A-Za-z0-9_.+][A-Za-z0-9_.+-]*$")
# LVM rejects LV names holding these (its internal sub-LV suffixes)
_RESERVED = ("_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog", "_pmspare",
             "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bBsSkKmMgGtTpPeE]?)\s*$")
_UNITS = {"b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60}


# -- pure helpers ----------------------------------------------------------------------------


def parse_size(text):
    """Bytes of an LVM size argument (``100m``, ``1.5G``, ``512k``, ``2048s``; no unit: MiB).
    Like ``lvcreate -L``, units are powers of 1024 whatever their case."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise StillpointError("Invalid size %r: give a number with an optional unit b, s, k, m, g, t, p or e "
                              "(powers of 1024, as lvcreate -L takes them), e.g. 512m or 2g." % (text,))
    return int(math.ceil(float(m.group(1)) * _UNITS[(m.group(2) or "m").lower()]))


def human(nbytes):
    """``123.00 MiB``: sizes in messages."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return "%.2f %s" % (value, unit) if unit != "B" else "%d B" % value
        value /= 1024.0
    return "%d B" % nbytes  # pragma: no cover


def set_tag(set_name):
    return TAG_SET + set_name


def snapshot_name(set_name, lv):
    """The snapshot LV of ``lv`` in set ``set_name``: ``<lv>-snap-<set>``."""
    return "%s-snap-%s" % (lv, set_name)


def validate_set_name(set_name):
    if not set_name or not _SET_NAME_RE.match(set_name):
        raise StillpointError(
            "Invalid set_name %r: use 1-64 characters of A-Z a-z 0-9 _ . + -, starting with a letter or digit "
            "(it becomes part of LVM tags and LV names)." % (set_name,))
    return set_name


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _tags(row):
    return [t for t in (row.get("lv_tags") or "").split(",") if t]


def _tag_value(tags, prefix):
    for tag in tags:
        if tag.startswith(prefix):
            return tag[len(prefix):]
    return None


def is_snapshot(row):
    """A classic snapshot (``lv_attr`` s/S) or a thin snapshot (thin volume V with an origin)."""
    attr = row.get("lv_attr") or ""
    return attr[:1] in ("s", "S") or (attr[:1] == "V" and bool(row.get("origin")))


def is_thin(row):
    """A thin volume (``lv_attr`` V)."""
    return (row.get("lv_attr") or "")[:1] == "V"


def is_open(row):
    attr = row.get("lv_attr") or ""
    return len(attr) > 5 and attr[5] == "o"


def is_active(row):
    attr = row.get("lv_attr") or ""
    return len(attr) > 4 and attr[4] == "a"


def is_invalid(row):
    """A classic snapshot that overflowed (``lv_attr`` state I, or S while suspended) or whose merge
    failed (m, M)."""
    attr = row.get("lv_attr") or ""
    return len(attr) > 4 and attr[4] in ("I", "S", "m", "M")


def is_merging(row):
    """A snapshot being merged into its origin: ``lv_merging`` set, or ``lv_attr`` S (classic)."""
    attr = row.get("lv_attr") or ""
    return is_snapshot(row) and (attr[:1] == "S" or bool(row.get("lv_merging")))


def majmin(row):
    major, minor = _int(row.get("lv_kernel_major"), -1), _int(row.get("lv_kernel_minor"), -1)
    if major < 0 or minor < 0:
        return None
    return "%d:%d" % (major, minor)


def normalize_volumes(volumes):
    """Validate the ``volumes`` option: ``[{vg, lv, size | percent_origin}]`` -> list of dicts."""
    if not volumes:
        raise StillpointError("volumes is empty: list the LVs of the set as {vg, lv, size | percent_origin}.")
    out, seen = [], set()
    for i, vol in enumerate(volumes):
        if not isinstance(vol, dict) or not vol.get("vg") or not vol.get("lv"):
            raise StillpointError("volumes[%d] = %r: each entry needs vg and lv." % (i, vol))
        key = (vol["vg"], vol["lv"])
        if key in seen:
            raise StillpointError("volumes lists %s/%s twice." % key)
        seen.add(key)
        size, pct = vol.get("size"), vol.get("percent_origin")
        if size is not None and pct is not None:
            raise StillpointError("volumes[%d] (%s/%s): give size or percent_origin, not both." % (i, key[0], key[1]))
        entry = dict(vg=vol["vg"], lv=vol["lv"], size=None, percent_origin=None)
        if size is not None:
            entry["size"] = parse_size(size)
            if entry["size"] <= 0:
                raise StillpointError("volumes[%d] (%s/%s): size must be above 0." % (i, key[0], key[1]))
        if pct is not None:
            pct = _float(pct)
            if pct is None or pct <= 0 or pct > 100:
                raise StillpointError("volumes[%d] (%s/%s): percent_origin must be in (0, 100], not %r."
                                      % (i, key[0], key[1], vol.get("percent_origin")))
            entry["percent_origin"] = pct
        out.append(entry)
    return out


# -- what LVM and the mount table say --------------------------------------------------------


class LvmState:
    """One reading of ``lvs``, ``vgs`` and the mount table."""

    def __init__(self, lvs, vgs, mounts):
        rows, seen = [], set()
        for row in lvs:
            row = dict(row)
            name = row.get("lv_name") or ""
            # lvs -a shows hidden LVs in brackets: a classic snapshot being merged is one of them
            row["hidden"] = name.startswith("[") and name.endswith("]")
            row["lv_name"] = name.strip("[]")
            key = (row.get("vg_name"), row["lv_name"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
        self.lvs = rows
        self.vgs = dict((v["vg_name"], v) for v in vgs)
        self.mounts = mounts
        self.by_name = dict(((r["vg_name"], r["lv_name"]), r) for r in lvs)

    @classmethod
    def from_text(cls, lvs_json, vgs_json, mounts):
        return cls(parse_lvm_report(lvs_json, "lv"), parse_lvm_report(vgs_json, "vg"), mounts)

    def lv(self, vg, lv):
        return self.by_name.get((vg, lv))

    def mounts_of(self, row):
        mm = majmin(row)
        if mm is None:
            return []
        return [m for m in self.mounts if m["majmin"] == mm]

    def members(self, set_name):
        """Rows of the LVs tagged as members of ``set_name`` (snapshots only), in LV order."""
        tag = set_tag(set_name)
        return [r for r in self.lvs if tag in _tags(r) and is_snapshot(r)]

    def tagged_non_snapshots(self, set_name):
        tag = set_tag(set_name)
        return [r for r in self.lvs if tag in _tags(r) and not is_snapshot(r)]

    def set_names(self):
        names = []
        for row in self.lvs:
            name = _tag_value(_tags(row), TAG_SET)
            if name and is_snapshot(row) and name not in names:
                names.append(name)
        return names

    def describe_member(self, row):
        tags = _tags(row)
        mounts = self.mounts_of(row)
        member = dict(
            vg=row["vg_name"], lv=row.get("origin") or "", snapshot=row["lv_name"],
            path="/dev/%s/%s" % (row["vg_name"], row["lv_name"]),
            kind="thin" if is_thin(row) else "classic", size=_int(row.get("lv_size")),
            uuid=row.get("lv_uuid"), created=row.get("lv_time"), active=is_active(row),
            invalid=is_invalid(row) and not is_merging(row), merging=is_merging(row),
            level=_tag_value(tags, TAG_LEVEL) or "crash",
            mounted_at=[m["mountpoint"] for m in mounts],
        )
        pct = _float(row.get("data_percent"))
        if pct is not None:
            member["data_percent"] = pct
        return member

    def describe_set(self, set_name):
        rows = self.members(set_name)
        members = [self.describe_member(r) for r in rows]
        counts = set(_tag_value(_tags(r), TAG_COUNT) for r in rows)
        expected = _int(counts.pop(), None) if len(counts) == 1 else None
        xlv = set(_tag_value(_tags(r), TAG_XLV) for r in rows)
        level = None
        for m in members:
            level = m["level"] if level is None else lower_level(level, m["level"])
        complete = bool(members) and expected == len(members) and not any(m["invalid"] for m in members)
        return dict(name=set_name, tag=set_tag(set_name), exists=bool(members), complete=complete,
                    expected_members=expected, members=members, level=level,
                    cross_lv_consistent=bool(members) and xlv == {"yes"})


def member_level(state, origin):
    """(level, basis) a snapshot of ``origin`` (an lvs row) gets when LVM takes it now."""
    mounts = state.mounts_of(origin)
    if mounts:
        fstype = mounts[0]["fstype"]
        where = ", ".join(sorted(set(m["mountpoint"] for m in mounts)))
        if fstype in FREEZABLE:
            return "filesystem", ("%s on %s: device-mapper freezes it while lvcreate suspends the origin"
                                  % (fstype, where))
        return "crash", "%s on %s cannot be frozen: only what is on disk is in the snapshot" % (fstype, where)
    if is_open(origin):
        return "crash", "open but not mounted (used as a raw device): only what is on disk is in the snapshot"
    return "filesystem", "not open while the snapshot was taken: nothing was in flight"


def plan_members(state, set_name, volumes):
    """Check the origins and work out each member: name, kind, extents. Raises on bad input."""
    plan, errors = [], []
    for vol in volumes:
        vg, lv = vol["vg"], vol["lv"]
        name = snapshot_name(set_name, lv)
        vgrow = state.vgs.get(vg)
        origin = state.lv(vg, lv)
        if vgrow is None:
            errors.append("volume group %s does not exist (have: %s)" % (vg, ", ".join(sorted(state.vgs)) or "none"))
            continue
        if origin is None:
            errors.append("%s/%s does not exist" % (vg, lv))
            continue
        if is_snapshot(origin):
            errors.append("%s/%s is itself a snapshot; snapshot its origin %s instead" % (vg, lv, origin.get("origin")))
            continue
        attr = origin.get("lv_attr") or ""
        if attr[:1] in ("t", "T", "e", "i", "l", "r", "m", "C", "d", "D"):
            errors.append("%s/%s is an LVM-internal or pool LV (lv_attr %s), not a volume to snapshot" % (vg, lv, attr))
            continue
        if len(name) > 127 or any(r in name for r in _RESERVED) or not _LV_NAME_RE.match(name):
            errors.append("the snapshot name %s is not a valid LV name (too long, or holds an LVM-reserved part); "
                          "choose a shorter or different set_name" % name)
            continue
        extent = _int(vgrow.get("vg_extent_size"))
        entry = dict(vg=vg, lv=lv, snapshot=name, origin_size=_int(origin.get("lv_size")))
        if is_thin(origin):
            if vol["size"] is not None or vol["percent_origin"] is not None:
                errors.append("%s/%s is a thin LV: its snapshot is a thin snapshot in pool %s and takes no size; "
                              "remove size/percent_origin" % (vg, lv, origin.get("pool_lv")))
                continue
            entry.update(kind="thin", pool=origin.get("pool_lv"), extents=0, size=0)
        else:
            if vol["size"] is None and vol["percent_origin"] is None:
                errors.append("%s/%s is not thin: a classic snapshot needs size or percent_origin (the space for "
                              "the blocks that change while it exists)" % (vg, lv))
                continue
            if vol["size"] is not None:
                extents = int(math.ceil(float(vol["size"]) / extent)) if extent else 0
            else:
                origin_extents = int(math.ceil(float(entry["origin_size"]) / extent)) if extent else 0
                extents = int(math.ceil(origin_extents * vol["percent_origin"] / 100.0))
            extents = max(extents, 1)
            entry.update(kind="classic", extents=extents, size=extents * extent)
        plan.append(entry)
    if errors:
        raise StillpointError("Cannot plan snapshot set %s: %s. Nothing was changed." % (set_name, "; ".join(errors)),
                              problems=errors)
    return plan


def check_space(state, plan, thin_max_percent):
    """Refuse when a VG lacks free extents for its classic members, or a thin pool is too full.
    Returns the per-VG / per-pool accounting."""
    need = {}
    for member in plan:
        if member["kind"] == "classic":
            need[member["vg"]] = need.get(member["vg"], 0) + member["extents"]
    report, problems = [], []
    for vg in sorted(need):
        row = state.vgs[vg]
        extent, free = _int(row.get("vg_extent_size")), _int(row.get("vg_free_count"))
        entry = dict(vg=vg, extent_size=extent, free_extents=free, needed_extents=need[vg],
                     free=free * extent, needed=need[vg] * extent)
        report.append(entry)
        if need[vg] > free:
            missing = need[vg] - free
            problems.append(
                "volume group %s has %d free extents (%s) but the classic snapshots need %d (%s): %d extents (%s) "
                "are missing" % (vg, free, human(free * extent), need[vg], human(need[vg] * extent), missing,
                                 human(missing * extent)))
    pools = []
    for member in plan:
        if member["kind"] == "thin" and (member["vg"], member["pool"]) not in pools:
            pools.append((member["vg"], member["pool"]))
    for vg, pool in pools:
        row = state.lv(vg, pool)
        if row is None:
            problems.append("thin pool %s/%s not found" % (vg, pool))
            continue
        size, msize = _int(row.get("lv_size")), _int(row.get("lv_metadata_size"))
        data, meta = _float(row.get("data_percent")) or 0.0, _float(row.get("metadata_percent")) or 0.0
        entry = dict(vg=vg, pool=pool, data_percent=data, metadata_percent=meta, max_percent=thin_max_percent,
                     size=size, metadata_size=msize)
        report.append(entry)
        for what, pct, total, how in (("data", data, size, "lvextend -L +SIZE %s/%s" % (vg, pool)),
                                      ("metadata", meta, msize, "lvextend --poolmetadatasize +SIZE %s/%s" % (vg, pool))):
            if pct >= thin_max_percent:
                # extending the pool by X brings used/(total+X) to the threshold: X = used*100/max - total
                used = total * pct / 100.0
                missing = max(int(math.ceil(used * 100.0 / thin_max_percent - total)), 1)
                problems.append(
                    "thin pool %s/%s %s is %.2f%% full (%s of %s), at or above the limit of %g%%: it lacks %s "
                    "(%s, or free space in it)" % (vg, pool, what, pct, human(used), human(total), thin_max_percent,
                                                   human(missing), how))
    if problems:
        raise StillpointError("Not enough space for the snapshot set: %s. Nothing was changed; add a PV (vgextend), "
                              "extend the pool, or lower size/percent_origin." % "; ".join(problems),
                              space=report, problems=problems)
    return report


# -- the kernel and the freeze across the set ------------------------------------------------


def running_kernel():
    """The running kernel's release (``uname -r``)."""
    return os.uname().release


def kernel_version(release):
    """``(major, minor)`` of a kernel release such as ``6.12.95+deb12-cloud-amd64``; None if unreadable."""
    m = _KERNEL_RE.match(release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def kernel_nests_freeze(release):
    """True when device-mapper can snapshot a filesystem frozen by FIFREEZE (Linux >= 6.6)."""
    version = kernel_version(release)
    return version is not None and version >= NESTED_FREEZE_KERNEL


def _context(cross, freeze):
    """The ``cross_lv`` and ``freeze`` details of an error, when there are any."""
    out = {}
    if cross is not None:
        out["cross_lv"] = cross
    if freeze is not None:
        out["freeze"] = freeze
    return out


class GuardianFreezer:
    """The freeze of a set: :func:`~._freeze.check_mountpoints`'s refusals when built (nothing is
    frozen yet), then FIFREEZE through a guardian (dead-man thaw at ``deadline``) in :meth:`freeze`,
    and the thaw record from :meth:`thaw`."""

    def __init__(self, mountpoints, deadline, protect_paths=(), mountinfo=None):
        self.plan = check_mountpoints(mountpoints, protect_paths=protect_paths, mountinfo=mountinfo)
        self.deadline = deadline
        self._guardian = None

    def freeze(self):
        self._guardian = Guardian.start(self.plan, deadline=self.deadline)
        try:
            return self._guardian.freeze()
        except BaseException:
            guardian, self._guardian = self._guardian, None
            guardian.close()  # the guardian thawed what it froze in this call
            raise

    def thaw(self):
        guardian, self._guardian = self._guardian, None
        if guardian is None:
            return {}
        try:
            return guardian.thaw()
        finally:
            guardian.close()


# -- the engine ------------------------------------------------------------------------------


class SnapshotSets:
    """Create, list, mount, unmount, merge and remove named snapshot sets through ``runner``.

    ``check_mode``: LVM's ``--test`` stands in for every change LVM can dry-run; mounts and
    unmounts are only planned. ``mountinfo`` returns the parsed mount table (tests inject it).
    ``kernel_release`` returns the running kernel's release (default: ``os.uname()``);
    ``freezer(mountpoints, deadline, protect_paths, mountinfo)`` builds the freeze of a set
    (default :class:`GuardianFreezer`); ``protect_paths`` are never frozen (the module's own dirs).
    """

    def __init__(self, runner, check_mode=False, mountinfo=None, makedirs=None, kernel_release=None, freezer=None,
                 protect_paths=()):
        self.run = runner
        self.check_mode = check_mode
        self._mountinfo = mountinfo or read_mountinfo
        self._makedirs = makedirs or os.makedirs
        self._kernel_release = kernel_release or running_kernel
        self._freezer = freezer or GuardianFreezer
        self._protect_paths = list(protect_paths or ())
        self.rec = Recorder(runner, check_mode=check_mode)
        self.warnings = []

    @property
    def actions(self):
        """The recorder's ``actions`` (what, cmd, rc, ms, planned; ``dry_run``/``dry_run_rc`` in check mode)."""
        return self.rec.actions

    @property
    def changed(self):
        """Whether this run changed LVM or the mount table (never in check mode)."""
        return self.rec.changed and not self.check_mode

    # reading ---------------------------------------------------------------------------

    def read(self):
        lvs_out = self.run([self.run.bin("lvs"), "--reportformat", "json", "--all", "--units", "b",
                            "--nosuffix", "-o", LVS_FIELDS], what="lvs")[1]
        vgs_out = self.run([self.run.bin("vgs"), "--reportformat", "json", "--units", "b", "--nosuffix",
                            "-o", VGS_FIELDS], what="vgs")[1]
        return LvmState.from_text(lvs_out, vgs_out, self._mountinfo())

    def _act(self, what, argv, test=None):
        """A changing command: run (the caller judges its rc) or, in check mode, planned, with its
        ``--test`` twin (``test``) run as the dry run; a dry run LVM refuses raises."""
        return self.rec.act(what, argv, fail=None if self.check_mode else False, dry_run=test)

    def info(self, set_name=None):
        state = self.read()
        names = [set_name] if set_name else state.set_names()
        return dict(changed=False, sets=[state.describe_set(n) for n in names])

    @staticmethod
    def _partial_error(desc, what):
        have = ", ".join("%s/%s" % (m["vg"], m["lv"]) for m in desc["members"])
        return StillpointError(
            "Snapshot set %s is partial: it has %d member(s) (%s) of the %s it was made with. A previous run was "
            "interrupted or a member was removed by hand. Refusing to %s part of a set; remove it with state=absent "
            "and create it again." % (desc["name"], len(desc["members"]), have,
                                      desc["expected_members"] if desc["expected_members"] is not None else "unknown",
                                      what), snapshot_set=desc)

    # present ---------------------------------------------------------------------------

    def present(self, set_name, volumes, thin_max_percent=80.0, cross_lv="auto", freeze_deadline=DEFAULT_DEADLINE):
        """Create the set. ``cross_lv``: ``auto``, ``freeze`` or ``sequential`` (see the module docstring)."""
        validate_set_name(set_name)
        volumes = normalize_volumes(volumes)
        if cross_lv not in CROSS_LV:
            raise StillpointError("cross_lv must be one of %s, not %r" % (", ".join(CROSS_LV), cross_lv))
        freeze_deadline = _float(freeze_deadline)
        if freeze_deadline is None or not 0 < freeze_deadline <= MAX_DEADLINE:
            raise StillpointError("freeze_deadline must be a number of seconds in (0, %g], not %r: writers on a "
                                  "frozen filesystem block until the thaw" % (MAX_DEADLINE, freeze_deadline))
        release = self._kernel_release()
        nests = kernel_nests_freeze(release)
        if cross_lv == "freeze" and not nests:
            raise StillpointError(
                "cross_lv=freeze refused on kernel %s, nothing was done: before Linux 6.6 device-mapper cannot "
                "snapshot a filesystem held frozen by fsfreeze (FIFREEZE): lvcreate --snapshot fails with EBUSY "
                "(\"Device or resource busy\") and a classic snapshot leaves a half-made LV and a <vg>-<lv>-real node "
                "behind (measured on Debian 12's 6.1 kernel, classic and thin). Use cross_lv=auto or sequential "
                "(each member filesystem-consistent, not consistent with each other while several are in use), "
                "quiesce the application across the LVs yourself, or boot a kernel >= 6.6 (e.g. bookworm-backports' "
                "linux-image-cloud-amd64)." % (release or "unknown"), kernel=release)
        state = self.read()
        desc = state.describe_set(set_name)
        wanted = [(v["vg"], v["lv"]) for v in volumes]
        if desc["exists"]:
            have = [(m["vg"], m["lv"]) for m in desc["members"]]
            if sorted(have) == sorted(wanted) and desc["complete"]:
                return dict(changed=False, snapshot_set=desc,
                            msg="snapshot set %s exists with all %d members" % (set_name, len(have)))
            invalid = [m for m in desc["members"] if m["invalid"]]
            if invalid:
                raise StillpointError(
                    "Snapshot set %s exists but %s overflowed (invalid: the snapshot ran out of space and lost its "
                    "data). Remove the set with state=absent and create it again with a larger size." %
                    (set_name, ", ".join(m["path"] for m in invalid)), snapshot_set=desc)
            extra = sorted(set(have) - set(wanted))
            if extra or desc["expected_members"] == len(have):
                raise StillpointError(
                    "Snapshot set %s already exists with other volumes (%s) than requested (%s). Remove it with "
                    "state=absent first, or use another set_name." % (set_name, ", ".join("%s/%s" % k for k in have),
                                                                      ", ".join("%s/%s" % k for k in wanted)),
                    snapshot_set=desc)
            raise self._partial_error(desc, "complete")
        stray = state.tagged_non_snapshots(set_name)
        if stray:
            self.warnings.append("LVs %s carry the tag %s but are not snapshots; they are not part of the set and are "
                                 "left alone" % (", ".join("%s/%s" % (r["vg_name"], r["lv_name"]) for r in stray),
                                                 set_tag(set_name)))
        plan = plan_members(state, set_name, volumes)
        clash = [m for m in plan if state.lv(m["vg"], m["snapshot"]) is not None]
        if clash:
            raise StillpointError(
                "LV %s already exists but is not a member of snapshot set %s (no tag %s). Refusing to touch it; use "
                "another set_name." % (", ".join("%s/%s" % (m["vg"], m["snapshot"]) for m in clash), set_name,
                                       set_tag(set_name)))
        space = check_space(state, plan, thin_max_percent)
        # consistency: what each member gets, whether anything could write between the members, and how
        # the members are made one instant (a freeze across all of them, or nothing to hold still)
        use = self._usage(state, plan)
        mechanism, reason, freezer = self._choose(cross_lv, release, nests, use, state, freeze_deadline)
        xlv = mechanism == "freeze" or len(plan) == 1 or len(use["open"]) <= 1
        if mechanism == "freeze":
            for member, mounts in use["mounted"]:
                if member["level"] == "filesystem":
                    member["basis"] = ("%s on %s: frozen (FIFREEZE under the guardian) from before the first snapshot "
                                       "of the set to after the last" % (mounts[0]["fstype"], mounts[0]["mountpoint"]))
        tags = [set_tag(set_name), TAG_COUNT + str(len(plan)), TAG_XLV + ("yes" if xlv else "no")]
        cross = dict(requested=cross_lv, mechanism=mechanism, reason=reason, kernel=release, kernel_nests_freeze=nests)
        if freezer is not None:
            cross.update(freeze_mountpoints=[m["mountpoint"] for m in freezer.plan], freeze_deadline=freeze_deadline)
        result = dict(space=space, plan=plan, rolled_back=[], cross_lv=cross)
        if self.check_mode:
            for member in plan:
                argv = self._create_argv(member, tags + [TAG_LEVEL + member["level"]])
                self._act(self._create_what(member), argv, test=argv[:1] + ["--test"] + argv[1:])
            how = ("freezing %s across all the lvcreate calls" % ", ".join(cross["freeze_mountpoints"])
                   if freezer is not None else "one after another")
            result.update(changed=True, msg=("check mode: would create %d snapshot(s) of set %s %s (mechanism %s: "
                                             "%s; LVM --test accepted every one)"
                                             % (len(plan), set_name, how, mechanism, reason)))
            result["snapshot_set"] = dict(name=set_name, tag=set_tag(set_name), exists=False, complete=False,
                                          expected_members=len(plan), members=[], level=None,
                                          cross_lv_consistent=xlv)
            return result
        made, failure = self._create_members(plan, tags, freezer, result)
        if failure is not None:
            member, rc, out, err, argv = failure
            if "Manual intervention required" in (err or "") + (out or ""):
                self.warnings.append(
                    "lvcreate failed half way and asked for manual intervention; its half-made LV %s/%s is rolled "
                    "back with the other members. A device-mapper node %s-%s-real may stay until the next snapshot "
                    "of %s/%s, which reuses it (seen with lvm2 2.03.16)." % (
                        member["vg"], member["snapshot"], member["vg"].replace("-", "--"),
                        member["lv"].replace("-", "--"), member["vg"], member["lv"]))
            rolled, left = self._rollback(set_name, made + [member])
            thawed = " The filesystems were thawed before the rollback." if freezer is not None else ""
            raise StillpointError(
                "Creating snapshot %s/%s of %s/%s failed (rc=%s): %s. All or nothing: rolled back %s%s.%s" % (
                    member["vg"], member["snapshot"], member["vg"], member["lv"], rc, (err or out).strip(),
                    ", ".join(rolled) or "nothing (no member was made)",
                    ("; COULD NOT REMOVE %s: remove them by hand (lvremove)" % ", ".join(left)) if left else "",
                    thawed),
                rc=rc, stdout=out, stderr=err, cmd=argv, rolled_back=rolled, left_behind=left,
                actions=self.actions, **_context(cross, result.get("freeze")))
        freeze = result.get("freeze")
        if freeze is not None and (freeze["deadline_thawed"] or freeze["externally_thawed"] or freeze["thaw_errors"]):
            rolled, left = self._rollback(set_name, made)
            if freeze["thaw_errors"]:
                why = ("thawing %s FAILED: check them now and thaw with `fsfreeze -u` (or stillpoint.snapshots.fsfreeze "
                       "state=thawed force=true) if they are still frozen" % ", ".join(freeze["thaw_errors"]))
            elif freeze["deadline_thawed"]:
                why = ("the freeze outlived freeze_deadline (%gs): the guardian thawed the filesystems before this run "
                       "did, so later members may be of a later instant than earlier ones. Raise freeze_deadline "
                       "(the window took %s ms)" % (freeze_deadline, freeze["window_ms"]))
            else:
                why = ("someone else thawed %s while the set was being taken, so the members may be of different "
                       "instants" % ", ".join(freeze["externally_thawed"]))
            raise StillpointError(
                "Snapshot set %s is not of one instant: %s. All or nothing: rolled back %s%s." % (
                    set_name, why, ", ".join(rolled) or "nothing",
                    ("; COULD NOT REMOVE %s: remove them by hand (lvremove)" % ", ".join(left)) if left else ""),
                rolled_back=rolled, left_behind=left, actions=self.actions, **_context(cross, freeze))
        after = self.read()
        desc = after.describe_set(set_name)
        if not desc["complete"]:
            raise StillpointError("Snapshot set %s is not complete after creating it: %r" % (set_name, desc),
                                  snapshot_set=desc, **_context(cross, freeze))
        result.update(changed=True, snapshot_set=desc)
        if not xlv:
            self.warnings.append(
                "the members of set %s were taken one after another while %s were in use: each is %s-consistent on "
                "its own, but they are not consistent with each other (%s). Quiesce the application across all of "
                "them if it needs that." % (set_name, ", ".join(use["open"]), desc["level"], reason))
        result["msg"] = "created snapshot set %s (%d members, level %s per LV, %s across LVs; mechanism %s%s)" % (
            set_name, len(plan), desc["level"], "consistent" if xlv else "NOT consistent", mechanism,
            ", frozen %s ms" % freeze["window_ms"] if freeze else "")
        return result

    @staticmethod
    def _create_what(member):
        return "create %s snapshot %s/%s of %s/%s" % (member["kind"], member["vg"], member["snapshot"],
                                                      member["vg"], member["lv"])

    @staticmethod
    def _usage(state, plan):
        """Which origins are in use: ``open`` (names), ``mounted`` [(member, mounts)], ``raw`` (open, not mounted)."""
        use = dict(open=[], mounted=[], raw=[])
        for member in plan:
            origin = state.lv(member["vg"], member["lv"])
            member["level"], member["basis"] = member_level(state, origin)
            name = "%s/%s" % (member["vg"], member["lv"])
            mounts = state.mounts_of(origin)
            if mounts:
                use["open"].append(name)
                use["mounted"].append((member, mounts))
            elif is_open(origin):
                use["open"].append(name)
                use["raw"].append(name)
        return use

    def _choose(self, cross_lv, release, nests, use, state, deadline):
        """(mechanism, reason, freezer or None) for ``cross_lv``; raises what ``freeze`` cannot do."""
        if cross_lv == "sequential":
            return "sequential", "cross_lv=sequential: members taken one after another", None
        if cross_lv == "auto":
            if not nests:
                return "sequential", ("kernel %s is older than 6.6, where device-mapper cannot snapshot a filesystem "
                                      "held frozen by fsfreeze (EBUSY)" % release), None
            if len(use["open"]) <= 1:
                return "sequential", ("at most one member is in use (%s): nothing else can change between the "
                                      "members, no freeze is needed" % (", ".join(use["open"]) or "none")), None
            if use["raw"]:
                return "sequential", ("%s %s open but not mounted (a raw device): a freeze holds only filesystems"
                                      % (", ".join(use["raw"]), "is" if len(use["raw"]) == 1 else "are")), None
        elif use["raw"]:
            raise StillpointError(
                "cross_lv=freeze refused, nothing was done: %s %s open but not mounted (used as a raw device), and a "
                "freeze holds only mounted filesystems, so whatever writes there could write between the snapshots. "
                "Stop that writer, or use cross_lv=sequential (and quiesce the application yourself)."
                % (", ".join(use["raw"]), "is" if len(use["raw"]) == 1 else "are"))
        elif not use["mounted"]:
            return "sequential", "no member is mounted or open: nothing to freeze, nothing can write between them", None
        mountpoints, seen = [], set()
        for dummy, mounts in use["mounted"]:
            if mounts[0]["majmin"] not in seen:
                seen.add(mounts[0]["majmin"])
                mountpoints.append(mounts[0]["mountpoint"])
        try:
            freezer = self._freezer(mountpoints, deadline, self._protect_paths, state.mounts)
        except StillpointError as exc:
            if cross_lv == "freeze":
                raise StillpointError("cross_lv=freeze: %s" % exc.msg, **exc.details)
            self.warnings.append("cross_lv=auto falls back to taking the members one after another: %s" % exc.msg)
            return "sequential", "the freeze was refused: %s" % exc.msg, None
        why = "kernel %s (>= 6.6) snapshots filesystems held frozen by fsfreeze" % release
        if cross_lv == "auto":
            why += "; %d members in use" % len(use["open"])
        return "freeze", why, freezer

    def _create_members(self, plan, tags, freezer, result):
        """lvcreate every member, inside the freeze when there is one (thawed in ``finally``, before any
        rollback). Returns (made, failure) with failure = (member, rc, out, err, argv) or None."""
        made, failure, frozen, thaw_error = [], None, None, None
        if freezer is not None:
            frozen = freezer.freeze()  # refused (EBUSY, EPERM, ...): nothing was frozen or created
        try:
            for member in plan:
                argv = self._create_argv(member, tags + [TAG_LEVEL + member["level"]])
                rc, out, err = self._act(self._create_what(member), argv)
                member["create_ms"] = self.actions[-1]["ms"]
                if rc != 0:
                    failure = (member, rc, out, err, argv)
                    break
                made.append(member)
        finally:
            if frozen is not None:
                try:
                    record = freezer.thaw()
                except StillpointError as exc:
                    thaw_error = exc
                    record = exc.details.get("record") or {}
                result["freeze"] = self._freeze_report(frozen, record, freezer)
        if thaw_error is not None:
            rolled, left = self._rollback(self._set_of(tags), made + ([failure[0]] if failure else []))
            raise StillpointError(
                "Thawing after the snapshots failed: %s. The set cannot be trusted; rolled back %s%s." % (
                    thaw_error.msg, ", ".join(rolled) or "nothing",
                    ("; COULD NOT REMOVE %s: remove them by hand (lvremove)" % ", ".join(left)) if left else ""),
                rolled_back=rolled, left_behind=left, actions=self.actions, **_context(None, result.get("freeze")))
        return made, failure

    @staticmethod
    def _set_of(tags):
        return tags[0][len(TAG_SET):]

    @staticmethod
    def _freeze_report(frozen, record, freezer):
        thawed = dict((m["mountpoint"], m) for m in record.get("mounts", []))
        mounts = []
        for m in frozen.get("mounts", []):
            item = dict(mountpoint=m["mountpoint"], freeze_ms=m.get("freeze_ms"))
            if m["mountpoint"] in thawed:
                item["thaw_ms"] = thawed[m["mountpoint"]].get("thaw_ms")
                if thawed[m["mountpoint"]].get("error"):
                    item["error"] = thawed[m["mountpoint"]]["error"]
            mounts.append(item)
        return dict(mounts=mounts, window_ms=record.get("window_ms"), presync_ms=frozen.get("presync_ms"),
                    deadline_s=getattr(freezer, "deadline", None), deadline_thawed=bool(record.get("deadline_thawed")),
                    externally_thawed=list(record.get("externally_thawed") or []),
                    thaw_errors=list(record.get("thaw_errors") or []))

    def _create_argv(self, member, tags):
        argv = [self.run.bin("lvcreate"), "--snapshot", "--name", member["snapshot"]]
        if member["kind"] == "classic":
            argv += ["--extents", str(member["extents"])]
        for tag in tags:
            argv += ["--addtag", tag]
        return argv + ["%s/%s" % (member["vg"], member["lv"])]

    def _rollback(self, set_name, members):
        """Remove what exists of ``members`` (made by this run; a failed lvcreate may leave its LV)."""
        state = self.read()
        rolled, left = [], []
        for member in reversed(members):
            row = state.lv(member["vg"], member["snapshot"])
            if row is None or set_tag(set_name) not in _tags(row):
                continue
            name = "%s/%s" % (member["vg"], member["snapshot"])
            rc, out, err = self._act("roll back %s" % name, [self.run.bin("lvremove"), "--yes", name])
            if rc == 0:
                rolled.append(name)
            else:
                left.append(name)
                self.warnings.append("rollback: lvremove %s failed (rc=%s): %s" % (name, rc, (err or out).strip()))
        return rolled, left

    # absent ----------------------------------------------------------------------------

    def absent(self, set_name):
        validate_set_name(set_name)
        state = self.read()
        desc = state.describe_set(set_name)
        if not desc["exists"]:
            return dict(changed=False, snapshot_set=desc, removed=[], msg="no snapshot set %s" % set_name)
        mounted = [m for m in desc["members"] if m["mounted_at"]]
        if mounted:
            raise StillpointError(
                "Snapshot set %s is mounted (%s); refusing to remove it. Unmount it first (state=unmounted)." % (
                    set_name, ", ".join("%s at %s" % (m["path"], ", ".join(m["mounted_at"])) for m in mounted)),
                snapshot_set=desc)
        merging = [m for m in desc["members"] if m["merging"]]
        if merging:
            raise StillpointError(
                "Snapshot set %s is being merged into its origins (%s); refusing to remove it. The merge ends on the "
                "origins' next activation; run state=reverted again to see its progress." % (
                    set_name, ", ".join(m["path"] for m in merging)), snapshot_set=desc)
        removed = []
        for member in desc["members"]:
            name = "%s/%s" % (member["vg"], member["snapshot"])
            argv = [self.run.bin("lvremove"), "--yes", name]
            res = self._act("remove %s" % name, argv, test=argv[:1] + ["--test"] + argv[1:])
            if self.check_mode:
                continue
            rc, out, err = res
            if rc != 0:
                raise StillpointError("lvremove %s failed (rc=%s): %s. Removed so far: %s. Run state=absent again "
                                      "once the cause is fixed." % (name, rc, (err or out).strip(),
                                                                    ", ".join(removed) or "nothing"),
                                      rc=rc, stdout=out, stderr=err, cmd=argv, removed=removed, actions=self.actions)
            removed.append(name)
        if self.check_mode:
            return dict(changed=True, snapshot_set=desc, removed=[],
                        msg="check mode: would remove %d snapshot(s) of set %s" % (len(desc["members"]), set_name))
        return dict(changed=True, snapshot_set=self.read().describe_set(set_name), removed=removed,
                    msg="removed snapshot set %s (%d members)" % (set_name, len(removed)))

    # reverted --------------------------------------------------------------------------

    def reverted(self, set_name, defer=False, interval=1):
        validate_set_name(set_name)
        state = self.read()
        desc = state.describe_set(set_name)
        if not desc["exists"]:
            return dict(changed=False, snapshot_set=desc, merged=[],
                        msg="no snapshot set %s: nothing to merge (already merged, or never made)" % set_name)
        if all(m["merging"] for m in desc["members"]):
            return dict(changed=False, snapshot_set=desc, merged=[],
                        msg="snapshot set %s is already merging; it completes on the origins' next activation"
                            % set_name)
        if not desc["complete"]:
            if any(m["invalid"] for m in desc["members"]):
                raise StillpointError(
                    "Snapshot set %s has invalid (overflowed) members %s: their data is lost and merging them would "
                    "corrupt the origins. Refusing to revert any member." % (
                        set_name, ", ".join(m["path"] for m in desc["members"] if m["invalid"])), snapshot_set=desc)
            raise self._partial_error(desc, "merge")
        busy = []
        for member in desc["members"]:
            origin = state.lv(member["vg"], member["lv"])
            if origin is not None and (is_open(origin) or state.mounts_of(origin)):
                busy.append("%s/%s" % (member["vg"], member["lv"]))
        if busy and not defer:
            raise StillpointError(
                "The origins %s of snapshot set %s are open (mounted or in use). LVM would merge them only on their "
                "next activation, and the set would come back at different times. Unmount them (and stop what uses "
                "them) first, or set defer_merge=true to merge on the next activation (e.g. for the root LV)."
                % (", ".join(busy), set_name), snapshot_set=desc, open=busy)
        names = ["%s/%s" % (m["vg"], m["snapshot"]) for m in desc["members"] if not m["merging"]]
        # all or nothing as far as LVM allows: every merge is dry-run before the first one starts
        tests = []
        for name in names:
            argv = [self.run.bin("lvconvert"), "--test", "--merge", "--background", name]
            t0 = time.monotonic()
            rc, out, err = self.rec.probe(argv)
            tests.append(dict(what="dry-run merge of %s" % name, cmd=argv, rc=rc, ms=ms_since(t0)))
            if rc != 0:
                raise StillpointError("LVM's dry run refuses to merge %s (rc=%s): %s. No member was merged." % (
                    name, rc, (err or out).strip()), rc=rc, stdout=out, stderr=err, cmd=argv, snapshot_set=desc)
        for test in tests:  # they ran (read-only), in check mode too
            self.rec.note(test.pop("what"), planned=False, **test)
        if self.check_mode:
            return dict(changed=True, snapshot_set=desc, merged=[],
                        msg="check mode: would merge %d snapshot(s) of set %s into their origins"
                            % (len(names), set_name))
        merged = []
        for name in names:
            argv = [self.run.bin("lvconvert"), "--merge", "--interval", str(interval), name]
            rc, out, err = self._act("merge %s into its origin" % name, argv)
            if rc != 0:
                raise StillpointError(
                    "Merging %s failed (rc=%s): %s. Already merged: %s. The set is now partly reverted: fix the cause "
                    "and run state=reverted again to merge the rest."
                    % (name, rc, (err or out).strip(), ", ".join(merged) or "nothing"),
                    rc=rc, stdout=out, stderr=err, cmd=argv, merged=merged, actions=self.actions)
            merged.append(name)
        after = self.read().describe_set(set_name)
        deferred = ["%s/%s" % (m["vg"], m["snapshot"]) for m in after["members"]]
        msg = "merged snapshot set %s into its origins (%d members)" % (set_name, len(merged))
        if deferred:
            msg += "; the merge of %s starts on the next activation of their origins" % ", ".join(deferred)
        return dict(changed=True, snapshot_set=after, merged=merged, deferred=deferred, msg=msg)

    # mounted / unmounted ---------------------------------------------------------------

    def mount_point(self, base, member):
        return os.path.join(base, member["vg"], member["lv"])

    def mounted(self, set_name, base, options=None):
        validate_set_name(set_name)
        if not base or not os.path.isabs(base):
            raise StillpointError("mount_base must be an absolute path, not %r" % (base,))
        state = self.read()
        desc = state.describe_set(set_name)
        if not desc["exists"]:
            raise StillpointError("No snapshot set %s to mount (lvs finds no LV tagged %s)."
                                  % (set_name, set_tag(set_name)))
        if not desc["complete"]:
            if any(m["invalid"] for m in desc["members"]):
                raise StillpointError("Snapshot set %s has invalid (overflowed) members; refusing to mount it."
                                      % set_name, snapshot_set=desc)
            raise self._partial_error(desc, "mount")
        # activate what is not active (thin snapshots are created with the activation-skip flag)
        for member in desc["members"]:
            if not member["active"]:
                name = "%s/%s" % (member["vg"], member["snapshot"])
                argv = [self.run.bin("lvchange"), "--activate", "y"]
                if member["kind"] == "thin":
                    argv.append("--ignoreactivationskip")
                argv.append(name)
                res = self._act("activate %s" % name, argv, test=argv[:1] + ["--test"] + argv[1:])
                if not self.check_mode and res[0] != 0:
                    raise StillpointError("Cannot activate %s (rc=%s): %s" % (name, res[0], (res[2] or res[1]).strip()),
                                          rc=res[0], stdout=res[1], stderr=res[2], cmd=argv)
        if self.changed:
            state = self.read()
            desc = state.describe_set(set_name)
        mounts = []
        for member in desc["members"]:
            target = self.mount_point(base, member)
            row = state.lv(member["vg"], member["snapshot"])
            mm = majmin(row) if row else None
            here = [m for m in state.mounts if m["mountpoint"] == target]
            if here and mm and here[-1]["majmin"] == mm:
                mounts.append(dict(path=member["path"], mountpoint=target, changed=False))
                continue
            if here:
                raise StillpointError("%s is already a mountpoint of %s (%s), not of %s; refusing to mount over it."
                                      % (target, here[-1]["source"], here[-1]["majmin"], member["path"]))
            fstype = self._fstype(member["path"]) if member["active"] or not self.check_mode else None
            opts = list(RO_OPTIONS.get(fstype, ["ro"]))
            for opt in options or []:
                if opt not in opts:
                    opts.append(opt)
            argv = [self.run.bin("mount")]
            if fstype:
                argv += ["-t", fstype]
            argv += ["-o", ",".join(opts), member["path"], target]
            if not self.check_mode:
                self._makedirs(target, exist_ok=True)
            rc, out, err = self._act("mount %s read-only at %s" % (member["path"], target), argv) or (0, "", "")
            if rc != 0:
                raise StillpointError("Cannot mount %s at %s (rc=%s): %s" % (member["path"], target, rc,
                                                                             (err or out).strip()),
                                      rc=rc, stdout=out, stderr=err, cmd=argv, actions=self.actions)
            mounts.append(dict(path=member["path"], mountpoint=target, fstype=fstype, options=opts, changed=True))
        changed = self.changed or any(m["changed"] for m in mounts)
        result = dict(changed=changed, mounts=mounts)
        result["snapshot_set"] = self.read().describe_set(set_name) if changed and not self.check_mode else desc
        prefix = "check mode: would have " if self.check_mode and changed else ""
        result["msg"] = "%smounted snapshot set %s under %s" % (prefix, set_name, base)
        return result

    def _fstype(self, path):
        rc, out, dummy = self.run([self.run.bin("blkid"), "-o", "value", "-s", "TYPE", path], check=False)
        fstype = out.strip() if rc == 0 else ""
        if not fstype:
            raise StillpointError("%s holds no filesystem blkid recognises (rc=%s); nothing to mount." % (path, rc))
        return fstype

    def unmounted(self, set_name):
        validate_set_name(set_name)
        state = self.read()
        desc = state.describe_set(set_name)
        unmounted = []
        for member in desc["members"]:
            for mountpoint in reversed(member["mounted_at"]):
                argv = [self.run.bin("umount"), mountpoint]
                res = self._act("unmount %s from %s" % (member["path"], mountpoint), argv)
                if res is not None and res[0] != 0:
                    raise StillpointError("Cannot unmount %s (rc=%s): %s. Stop what uses it (fuser -vm %s) and try "
                                          "again." % (mountpoint, res[0], (res[2] or res[1]).strip(), mountpoint),
                                          rc=res[0], stdout=res[1], stderr=res[2], cmd=argv, unmounted=unmounted)
                unmounted.append(mountpoint)
        changed = bool(unmounted)
        return dict(changed=changed, unmounted=unmounted,
                    snapshot_set=desc if self.check_mode or not changed else self.read().describe_set(set_name),
                    msg="%s%d mount(s) of snapshot set %s" % ("check mode: would unmount " if self.check_mode
                                                              else "unmounted ", len(unmounted), set_name))


def _check_volumes(params, snapshot_set):
    """With volumes given for a state other than present: the set must have exactly those LVs."""
    if not params["volumes"] or not snapshot_set.get("exists"):
        return
    want = sorted((v["vg"], v["lv"]) for v in params["volumes"])
    have = sorted((m["vg"], m["lv"]) for m in snapshot_set["members"])
    if want != have:
        raise StillpointError("Snapshot set %s holds %s, not the volumes given (%s); refusing to act on it."
                              % (params["set_name"], ", ".join("%s/%s" % k for k in have),
                                 ", ".join("%s/%s" % k for k in want)), snapshot_set=snapshot_set)


def snapshot_set(runner, params, check_mode=False, protect_paths=(), warn=None):
    """The lvm_snapshot_set module: ``params["state"]`` (present, absent, reverted, mounted, unmounted)
    on the set ``params["set_name"]``. Returns the result with ``actions`` (a failure's StillpointError
    carries them too); ``warn(text)`` gets each warning."""
    sets = SnapshotSets(runner, check_mode=check_mode, protect_paths=protect_paths)
    state, name = params["state"], params["set_name"]
    result = dict(changed=False)
    try:
        if state == "present":
            result.update(sets.present(name, params["volumes"], params["thin_pool_max_percent"],
                                       cross_lv=params["cross_lv"], freeze_deadline=params["freeze_deadline"]))
        else:
            if params["volumes"]:
                _check_volumes(params, sets.info(name)["sets"][0])
            if state == "absent":
                result.update(sets.absent(name))
            elif state == "reverted":
                result.update(sets.reverted(name, defer=params["defer_merge"]))
            elif state == "mounted":
                result.update(sets.mounted(name, params["mount_base"], params["mount_options"]))
            else:
                result.update(sets.unmounted(name))
    except StillpointError as exc:
        exc.details.setdefault("changed", False)
        exc.details["actions"] = sets.actions
        raise
    finally:
        for warning in sets.warnings:
            (warn or (lambda text: None))(warning)
    result["actions"] = sets.actions
    return result
