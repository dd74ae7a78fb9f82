# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named sets of LVM snapshots: create (all or nothing), list, mount, merge back, remove.

Private to the collection. Pure Python: commands go through a :class:`~._common.CommandRunner`
(argv lists, ``LC_ALL=C``); LVM is read through ``lvs``/``vgs --reportformat json`` (parsed by
:func:`~._hostops.parse_lvm_report`), mounts through ``/proc/self/mountinfo``.

A set is found by its LVM tags, never by names alone. Every member carries:

* ``stillpoint-set.<set name>``: membership (``list``/``absent``/``reverted`` find members by it);
* ``stillpoint-count.<n>``: how many members the set has, so a partial set is recognised on any run;
* ``stillpoint-level.<crash|filesystem>``: the consistency the member reached;
* ``stillpoint-xlv.<yes|no>``: whether the members were consistent with each other.

Consistency. Measured in the lab (Debian bookworm, kernel 6.1.0-56-cloud-amd64, lvm2 2.03.16;
tests/lab/test_lvm_snapshot_set.py, fixtures/lvm/*.cmd.json):

* ``lvcreate --snapshot`` suspends the origin, and device-mapper freezes the filesystem on it for
  that moment: the ext4 inside a classic or thin snapshot of a mounted, written ext4 has no
  ``needs_recovery`` flag while its origin has. So a member of a mounted freezable filesystem is
  filesystem-consistent (fsfreeze(8) and the RHEL/Oracle XFS guides document the same).
* A filesystem frozen beforehand with ``fsfreeze -f`` cannot be snapshot on this kernel, classic
  or thin: the suspend fails with EBUSY (the kernel's FIFREEZE and device-mapper's freeze do not
  nest), and the classic case leaves a half-made LV and a ``<vg>-<lv>-real`` node behind. So the
  filesystems of several LVs cannot be held frozen across the whole set with LVM snapshots here.
* The members are therefore taken one after another (about 1-2 s apart in the lab) and are NOT
  consistent with each other unless nothing could write between them: a single member, or no
  member open. The result says so (``cross_lv_consistent``); a writer appending the same records
  to two LVs showed its snapshots dozens of records apart.
"""

from __future__ import annotations

import math
import os
import re
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError, lower_level, ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import read_mountinfo
from ansible_collections.stillpoint.snapshots.plugins.module_utils._freeze import FREEZABLE_FSTYPES
from ansible_collections.stillpoint.snapshots.plugins.module_utils._hostops import parse_lvm_report

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


# -- the engine ------------------------------------------------------------------------------


class SnapshotSets:
    """Create, list, mount, unmount, merge and remove named snapshot sets through ``runner``.

    ``check_mode``: LVM's ``--test`` stands in for every change LVM can dry-run; mounts and
    unmounts are only planned. ``mountinfo`` returns the parsed mount table (tests inject it).
    """

    def __init__(self, runner, check_mode=False, mountinfo=None, makedirs=None):
        self.run = runner
        self.check_mode = check_mode
        self._mountinfo = mountinfo or read_mountinfo
        self._makedirs = makedirs or os.makedirs
        self.changed = False
        self.actions = []
        self.warnings = []

    # reading ---------------------------------------------------------------------------

    def read(self):
        lvs_out = self.run([self.run.bin("lvs"), "--reportformat", "json", "--all", "--units", "b",
                            "--nosuffix", "-o", LVS_FIELDS], what="lvs")[1]
        vgs_out = self.run([self.run.bin("vgs"), "--reportformat", "json", "--units", "b", "--nosuffix",
                            "-o", VGS_FIELDS], what="vgs")[1]
        return LvmState.from_text(lvs_out, vgs_out, self._mountinfo())

    def _act(self, what, argv, test=None):
        """Run a changing command, or its ``--test`` twin (``test``) in check mode, or just plan it."""
        step = dict(what=what, cmd=argv)
        self.actions.append(step)
        if self.check_mode:
            step["planned"] = True
            if test is None:
                return None
            t0 = time.monotonic()
            rc, out, err = self.run(test, check=False)
            step.update(test_cmd=test, test_rc=rc, test_ms=ms_since(t0))
            if rc != 0:
                raise StillpointError("LVM's dry run (--test) refuses to %s (rc=%s): %s. Nothing was changed."
                                      % (what, rc, (err or out).strip()), rc=rc, stdout=out, stderr=err, cmd=test,
                                      actions=self.actions)
            return rc, out, err
        t0 = time.monotonic()
        rc, out, err = self.run(argv, check=False)
        step.update(rc=rc, ms=ms_since(t0))
        if rc == 0:
            self.changed = True
        return rc, out, err

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

    def present(self, set_name, volumes, thin_max_percent=80.0):
        validate_set_name(set_name)
        volumes = normalize_volumes(volumes)
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
        # consistency: what each member gets, and whether anything could write between the members
        open_members = []
        for member in plan:
            origin = state.lv(member["vg"], member["lv"])
            member["level"], member["basis"] = member_level(state, origin)
            if is_open(origin) or state.mounts_of(origin):
                open_members.append("%s/%s" % (member["vg"], member["lv"]))
        xlv = len(plan) == 1 or not open_members
        tags = [set_tag(set_name), TAG_COUNT + str(len(plan)), TAG_XLV + ("yes" if xlv else "no")]
        result = dict(space=space, plan=plan, rolled_back=[])
        made = []
        for member in plan:
            argv = self._create_argv(member, tags + [TAG_LEVEL + member["level"]])
            test = argv[:1] + ["--test"] + argv[1:]
            what = "create %s snapshot %s/%s of %s/%s" % (member["kind"], member["vg"], member["snapshot"],
                                                          member["vg"], member["lv"])
            res = self._act(what, argv, test=test)
            if self.check_mode:
                continue
            rc, out, err = res
            member["create_ms"] = self.actions[-1]["ms"]
            if rc != 0:
                if "Manual intervention required" in (err or "") + (out or ""):
                    self.warnings.append(
                        "lvcreate failed half way and asked for manual intervention; its half-made LV %s/%s is rolled "
                        "back with the other members. A device-mapper node %s-%s-real may stay until the next snapshot "
                        "of %s/%s, which reuses it (seen with lvm2 2.03.16)." % (
                            member["vg"], member["snapshot"], member["vg"].replace("-", "--"),
                            member["lv"].replace("-", "--"), member["vg"], member["lv"]))
                rolled, left = self._rollback(set_name, made + [member])
                raise StillpointError(
                    "Creating snapshot %s/%s of %s/%s failed (rc=%s): %s. All or nothing: rolled back %s%s." % (
                        member["vg"], member["snapshot"], member["vg"], member["lv"], rc, (err or out).strip(),
                        ", ".join(rolled) or "nothing (no member was made)",
                        ("; COULD NOT REMOVE %s: remove them by hand (lvremove)" % ", ".join(left)) if left else ""),
                    rc=rc, stdout=out, stderr=err, cmd=argv, rolled_back=rolled, left_behind=left,
                    actions=self.actions)
            made.append(member)
        if self.check_mode:
            result.update(changed=True, msg=("check mode: would create %d snapshot(s) of set %s (LVM --test accepted "
                                             "every one)" % (len(plan), set_name)))
            result["snapshot_set"] = dict(name=set_name, tag=set_tag(set_name), exists=False, complete=False,
                                          expected_members=len(plan), members=[], level=None,
                                          cross_lv_consistent=xlv)
            return result
        after = self.read()
        desc = after.describe_set(set_name)
        if not desc["complete"]:
            raise StillpointError("Snapshot set %s is not complete after creating it: %r" % (set_name, desc),
                                  snapshot_set=desc)
        result.update(changed=True, snapshot_set=desc)
        if not xlv:
            self.warnings.append(
                "the members of set %s were taken one after another while %s were in use: each is %s-consistent on "
                "its own, but they are not consistent with each other (this kernel's device-mapper cannot snapshot a "
                "filesystem held frozen by fsfreeze). Quiesce the application across all of them if it needs that."
                % (set_name, ", ".join(open_members), desc["level"]))
        result["msg"] = "created snapshot set %s (%d members, level %s per LV, %s across LVs)" % (
            set_name, len(plan), desc["level"], "consistent" if xlv else "NOT consistent")
        return result

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
            rc, out, err = self.run(argv, check=False)
            tests.append(dict(what="dry-run merge of %s" % name, cmd=argv, rc=rc))
            if rc != 0:
                raise StillpointError("LVM's dry run refuses to merge %s (rc=%s): %s. No member was merged." % (
                    name, rc, (err or out).strip()), rc=rc, stdout=out, stderr=err, cmd=argv, snapshot_set=desc)
        self.actions.extend(tests)
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
