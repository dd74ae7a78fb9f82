# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog: tag schema v2, reading v1 too (docs/catalog.md), grouping snapshots into sets.

Pure functions over DescribeSnapshots items, and the retention and deletion policy of
backup_set_prune; no API calls here (they are in _ebs.py).
"""

from __future__ import annotations

import binascii
import datetime
import json
import os
import re

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CREATOR
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import LEVELS
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

SCHEMA = "2"  # what this version writes
READ_SCHEMAS = ("1", "2")  # what it reads: v2 only moved the per-member tags into one set-level member map
PREFIX = "stillpoint:"
TAG_VALUE_MAX = 256

K_CREATOR = PREFIX + "creator"
K_SCHEMA = PREFIX + "schema"
K_SET_ID = PREFIX + "set-id"
K_SET_NAME = PREFIX + "set-name"
K_MEMBERS = PREFIX + "members"
K_MEMBER = PREFIX + "member"
K_DEVICE = PREFIX + "device"
K_SOURCE_VOLUME = PREFIX + "source-volume"
K_MOUNTPOINTS = PREFIX + "mountpoints"
# schema 2: every member's volume, device and mountpoints in one set-level JSON list in member order (chunked like
# K_ARRAY), written once for all members; a member's own tags (K_MEMBER...) still win where present (v1 sets,
# copies, a map too large for the catalog)
K_MEMBER_MAP = PREFIX + "member-map"
K_INSTANCE = PREFIX + "instance"
K_AZ = PREFIX + "az"
K_HOST = PREFIX + "host"
K_LEVEL = PREFIX + "level"
K_STATE = PREFIX + "state"
K_CREATED = PREFIX + "created"
K_FREEZE_MS = PREFIX + "freeze-ms"
K_PROCEDURE = PREFIX + "procedure"
K_ARRAY = PREFIX + "array"
K_APP = PREFIX + "app"  # what a held application quiescer held and recorded (JSON, chunked like K_ARRAY)
K_GROUP_ID = PREFIX + "group-id"  # the consistency group a set belongs to (_group.py)
K_GROUP_HOST = PREFIX + "group-host"  # this host's part, written by the host: its frozen interval on its clock (JSON)
K_GROUP = PREFIX + "group"  # the group's seal on this set: verdict, common instant, margin, this host's corrected interval
GROUP_SEALED = ("consistent", "inconsistent")

STATES = ("pending", "complete", "partial")
SET_ID_RE = re.compile(r"^bs-\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_set_id(now=None, rand=None):
    """``bs-YYYYMMDDTHHMMSSZ-xxxxxx``: sortable by creation time, unique enough per account."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rand = rand if rand is not None else binascii.hexlify(os.urandom(3)).decode()
    return "bs-%s-%s" % (now.strftime("%Y%m%dT%H%M%SZ"), rand)


def utc_iso(now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value):
    """Parse an ISO time as found in tags or boto3 results (datetime passes through)."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def check_tag_value(key, value):
    """The value as a string, refused (never truncated) when longer than EC2 allows."""
    value = "" if value is None else str(value)
    if len(value) > TAG_VALUE_MAX:
        raise StillpointError(
            "tag %s would be %d characters; EC2 allows %d. Shorten it (a name, a mountpoint list, the "
            "array descriptor or one of your tags); nothing was created." % (key, len(value), TAG_VALUE_MAX)
        )
    return value


def encode_json(key, obj, what="array descriptor"):
    """Store a JSON value under ``key``, ``key.1``, ``key.2``... in chunks that fit a tag value."""
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    chunks = [text[i:i + TAG_VALUE_MAX] for i in range(0, len(text), TAG_VALUE_MAX)] or [""]
    if len(chunks) > 8:
        raise StillpointError("%s too large for the catalog (%d characters, at most %d)"
                              % (what, len(text), 8 * TAG_VALUE_MAX))
    return dict((key if i == 0 else "%s.%d" % (key, i), chunk) for i, chunk in enumerate(chunks))


def decode_json(tags, key):
    if key not in tags:
        return None
    parts = [tags[key]]
    i = 1
    while "%s.%d" % (key, i) in tags:
        parts.append(tags["%s.%d" % (key, i)])
        i += 1
    try:
        return json.loads("".join(parts))
    except ValueError:
        return None


def set_tags(set_id, name, members, instance_id, az, host, level, state="pending", created=None,
             freeze_ms=None, procedure="ebs_snapshot_set", array=None):
    """Tags shared by every member of a set (applied by CreateSnapshots' TagSpecifications)."""
    if level not in LEVELS:
        raise StillpointError("unknown consistency level %r (one of %s)" % (level, ", ".join(LEVELS)))
    if state not in STATES:
        raise StillpointError("unknown set state %r (one of %s)" % (state, ", ".join(STATES)))
    tags = {
        K_CREATOR: CREATOR,
        K_SCHEMA: SCHEMA,
        K_SET_ID: set_id,
        K_SET_NAME: name or "",
        K_MEMBERS: str(int(members)),
        K_INSTANCE: instance_id or "",
        K_AZ: az or "",
        K_HOST: host or "",
        K_LEVEL: level,
        K_STATE: state,
        K_CREATED: created or utc_iso(),
        K_PROCEDURE: procedure or "",
    }
    if freeze_ms is not None:
        tags[K_FREEZE_MS] = "%.3f" % float(freeze_ms)
    if array:
        tags.update(encode_json(K_ARRAY, array))
    return dict((k, check_tag_value(k, v)) for k, v in tags.items())


def readable(record):
    """True when ``record`` (a set record) was written with a catalog schema this version reads."""
    return record.get("schema") in READ_SCHEMAS


def member_map_tags(members):
    """The member map of a set (schema 2) from ``[(index, device, source_volume, mountpoints)]``: one
    set-level JSON list in member order, ``[[source_volume, device, "mount1,mount2"], ...]``, chunked like
    the array descriptor, so one CreateTags writes every member's record for all members at once.
    None when it would not fit the catalog (more than 8 chunks): the caller then tags each member."""
    ordered = sorted(members, key=lambda m: m[0])
    if [m[0] for m in ordered] != list(range(len(ordered))):
        raise StillpointError("member indexes must be 0..%d, not %s" % (len(ordered) - 1, [m[0] for m in ordered]))
    entries = [[volume, device or "", ",".join(mounts or ())] for _i, device, volume, mounts in ordered]
    try:
        return encode_json(K_MEMBER_MAP, entries, what="member map")
    except StillpointError:
        return None


def member_catalog_tags(members):
    """``(map_tags, per_member)`` for ``[(index, device, volume_id, mountpoints)]``: the set's member map and no
    per-member tags (schema 2), or, when the map would not fit the catalog, ``{}`` and the members' own tags by
    index (each value checked, so an oversized one is refused before anything changes)."""
    map_tags = member_map_tags(members)
    if map_tags is not None:
        return map_tags, {}
    return {}, dict((m[0], member_tags(*m)) for m in members)


def _mapped_member(tags, volume_id):
    """``(index, device, source_volume, mountpoints)`` of the member taken of ``volume_id`` in the member map
    the snapshot carries; None without a map, or when the map names that volume not exactly once."""
    entries = decode_json(tags, K_MEMBER_MAP)
    if not isinstance(entries, list) or not volume_id:
        return None
    found = [(i, e) for i, e in enumerate(entries)
             if isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e) and e[0] == volume_id]
    if len(found) != 1:
        return None
    index, (volume, device, mounts) = found[0]
    return index, device, volume, mounts


def member_tags(index, device, source_volume, mountpoints=()):
    """Tags that differ per member: a v1 set's, a copy's (in CopySnapshot's TagSpecifications), or a v2 set's
    whose member map would not fit (applied with one CreateTags per member after the call)."""
    tags = {
        K_MEMBER: str(int(index)),
        K_DEVICE: device or "",
        K_SOURCE_VOLUME: source_volume,
        K_MOUNTPOINTS: ",".join(mountpoints or ()),
    }
    return dict((k, check_tag_value(k, v)) for k, v in tags.items())


def to_tag_list(tags):
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def tag_dict(tag_list):
    return dict((t["Key"], t.get("Value", "")) for t in (tag_list or []))


def is_ours(snapshot):
    """True only for snapshots carrying this collection's creator marker."""
    return tag_dict(snapshot.get("Tags")).get(K_CREATOR) == CREATOR


def as_int(value, default=None):
    """``int(value)``, or ``default`` when the value is missing or not a number (tags are strings)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def tags_of(resource):
    """The tags of a DescribeSnapshots/DescribeVolumes item as a dict."""
    return tag_dict(resource.get("Tags"))


def member_record(snapshot):
    """A member as the catalog knows it: from its own tags (``stillpoint:member``...) where it has them, else from
    the member map it carries (schema 2), found by the volume it was taken of."""
    tags = tag_dict(snapshot.get("Tags"))
    index, device = as_int(tags.get(K_MEMBER)), tags.get(K_DEVICE)
    source, mounts = tags.get(K_SOURCE_VOLUME) or snapshot.get("VolumeId"), tags.get(K_MOUNTPOINTS, "")
    if K_MEMBER not in tags:
        mapped = _mapped_member(tags, source)
        if mapped:
            index, device, source, mounts = mapped
    return {
        "index": index,
        "snapshot_id": snapshot.get("SnapshotId"),
        "state": snapshot.get("State"),
        "progress": snapshot.get("Progress"),
        "device": device or None,
        "source_volume": source,
        "volume_size": snapshot.get("VolumeSize"),
        "mountpoints": [m for m in mounts.split(",") if m],
        "start_time": utc_iso(parse_time(snapshot.get("StartTime"))) if snapshot.get("StartTime") else None,
        "state_message": snapshot.get("StateMessage"),
    }


def _evaluate(record, tag_states):
    """Decide the set's state from its tags and its members; never better than the facts.

    ``partial``: the set can never become a valid backup (a member snapshot is gone or in error,
    the member count is unreadable, a member says ``partial``, or the set was marked complete while
    a member was never tagged). ``complete``: every member ``0..n-1`` is present exactly once, all
    are ``completed`` in EC2, every member is marked ``complete`` and the schema is one this code
    reads. ``pending``: anything else (still being tagged, still copying, never marked complete).
    """
    broken, waiting = [], []
    count = record["member_count"]
    members = record["members"]
    indexes = [m["index"] for m in members]
    untagged = indexes.count(None)
    tagged = [i for i in indexes if i is not None]
    if count is None or count < 1:
        broken.append("member count tag missing or invalid")
    else:
        missing = sorted(set(range(count)) - set(tagged))
        if len(members) < count:
            broken.append("%d snapshots for %d members (members missing: %s)"
                          % (len(members), count, ", ".join(str(i) for i in missing) or "none"))
        elif len(missing) > untagged:
            broken.append("members missing: %s" % ", ".join(str(i) for i in missing))
        if len(members) > count:
            broken.append("%d snapshots for %d members" % (len(members), count))
        stray = sorted(set(i for i in tagged if i < 0 or i >= count))
        if stray:
            broken.append("member indexes outside 0..%d: %s" % (count - 1, ", ".join(str(i) for i in stray)))
        dup = sorted(set(i for i in tagged if tagged.count(i) > 1))
        if dup:
            broken.append("member indexes used twice: %s" % ", ".join(str(i) for i in dup))
    if untagged:
        if "pending" in tag_states:
            waiting.append("%d snapshot(s) without a member index (not yet tagged)" % untagged)
        else:
            broken.append("%d snapshot(s) without a member index in a set marked %s"
                          % (untagged, "/".join(sorted(set(tag_states)))))
    failed = [m["snapshot_id"] for m in members if m["state"] == "error"]
    if failed:
        broken.append("snapshots in error: %s" % ", ".join(failed))
    if "partial" in tag_states:
        broken.append("marked partial (a rollback could not delete it)")
    unknown = sorted(set(s for s in tag_states if s not in STATES))
    if unknown:
        waiting.append("unknown state tag value: %s" % ", ".join(unknown))
    if len(set(tag_states)) > 1:
        waiting.append("members disagree on the set state: %s" % ", ".join(sorted(set(tag_states))))
    not_done = [m["snapshot_id"] for m in members if m["state"] != "completed" and m["state"] != "error"]
    if not_done:
        waiting.append("snapshots not yet completed in EC2: %s" % ", ".join(not_done))
    if record.get("group_id") and (record.get("group") or {}).get("verdict") not in GROUP_SEALED:
        waiting.append("member of consistency group %s, which is not sealed (ebs_snapshot_group state=sealed): "
                       "no set of a group counts before the group does" % record["group_id"])
    if not readable(record):
        waiting.append("catalog schema %s is not read by this version (it reads schema %s); upgrade "
                       "stillpoint.snapshots. The set is never reported complete nor pruned by this version"
                       % (record["schema"] or "(missing)", " and ".join(READ_SCHEMAS)))

    if broken:
        state = "partial"
    elif not waiting and all(s == "complete" for s in tag_states):
        state = "complete"
    else:
        state = "pending"
        if not waiting:
            waiting.append("all snapshots completed but the set was never marked complete")
    record["state"] = state
    record["problems"] = broken + waiting
    return record


def _sort_key(record):
    created = parse_time(record.get("created"))
    epoch = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
    return (created or epoch, record["set_id"])


def group_sets(snapshots):
    """Group DescribeSnapshots items carrying a set id into set records, newest first.

    Members are ordered by their member index. Only snapshots with the creator marker count.
    """
    groups = {}
    for snap in snapshots:
        if not is_ours(snap):
            continue
        tags = tag_dict(snap.get("Tags"))
        set_id = tags.get(K_SET_ID)
        if set_id:
            groups.setdefault(set_id, []).append((tags, snap))
    records = []
    for set_id, items in groups.items():
        first = items[0][0]
        members = sorted((member_record(s) for _t, s in items),
                         key=lambda m: (m["index"] is None, m["index"] if m["index"] is not None else 0))
        # a member without a readable level counts as crash: a set never claims more than it got
        levels = [t.get(K_LEVEL) if t.get(K_LEVEL) in LEVELS else LEVELS[0] for t, _s in items]
        freeze = [t.get(K_FREEZE_MS) for t, _s in items if t.get(K_FREEZE_MS)]
        record = {
            "set_id": set_id,
            "name": first.get(K_SET_NAME) or None,
            "schema": first.get(K_SCHEMA),
            "member_count": as_int(first.get(K_MEMBERS)),
            "members": members,
            "snapshot_ids": [m["snapshot_id"] for m in members],
            "instance_id": first.get(K_INSTANCE) or None,
            "availability_zone": first.get(K_AZ) or None,
            "host": first.get(K_HOST) or None,
            # the weakest level any member claims: never overstated
            "level": min(levels, key=LEVELS.index),
            "created": first.get(K_CREATED) or _earliest_start(members),
            "freeze_ms": float(freeze[0]) if freeze else None,
            "procedure": first.get(K_PROCEDURE) or None,
            "array": decode_json(first, K_ARRAY),
            "application": decode_json(first, K_APP),
            "group_id": first.get(K_GROUP_ID) or None,
            "group": decode_json(first, K_GROUP),
        }
        tag_states = [t.get(K_STATE, "pending") for t, _s in items]
        record["marked"] = sorted(set(tag_states))  # what the members' state tags say, as written
        records.append(_evaluate(record, tag_states))
    records.sort(key=_sort_key, reverse=True)
    return records


def _earliest_start(members):
    times = [parse_time(m["start_time"]) for m in members if m["start_time"]]
    return utc_iso(min(times)) if times else None


def select_sets(records, set_id=None, name=None, instance_id=None, host=None, states=None):
    out = []
    for rec in records:
        if set_id and rec["set_id"] != set_id:
            continue
        if name and rec["name"] != name:
            continue
        if instance_id and rec["instance_id"] != instance_id:
            continue
        if host and rec["host"] != host:
            continue
        if states and rec["state"] not in states:
            continue
        out.append(rec)
    return out


GFS_RULES = (("keep_daily", "day"), ("keep_weekly", "week"), ("keep_monthly", "month"), ("keep_yearly", "year"))
LOCK_MODES = ("governance", "compliance")
LOCK_DAYS_MAX = 36500  # LockSnapshot's LockDuration: 1..36500 days
COOL_OFF_MAX = 72  # LockSnapshot's CoolOffPeriod: 1..72 hours, compliance only


def check_prune_rules(keep_last=None, older_than_days=None, set_ids=None, delete_partial=False, gfs=None, lock=None,
                      now=None):
    """Refuse a prune with nothing to do or with a rule that would let the newest complete set go.

    ``gfs``: ``{keep_daily, keep_weekly, keep_monthly, keep_yearly}`` (None: not given); ``lock``: the lock
    option (:func:`check_lock`), which needs a retention rule to say which sets it keeps.
    """
    gfs = dict((k, v) for k, v in (gfs or {}).items() if v is not None)
    if keep_last is None and older_than_days is None and not set_ids and not delete_partial and not gfs:
        raise StillpointError("nothing to do: give keep_last, older_than_days, keep_daily, keep_weekly, keep_monthly, "
                              "keep_yearly, set_ids or delete_partial=true")
    if keep_last is not None and keep_last < 1:
        raise StillpointError("keep_last must be at least 1: retention never deletes the newest complete set")
    if older_than_days is not None and older_than_days < 0:
        raise StillpointError("older_than_days must not be negative")
    for rule, _unit in GFS_RULES:
        if gfs.get(rule) is not None and gfs[rule] < 1:
            raise StillpointError("%s must be at least 1 (leave it out to not keep sets by %s)" % (rule, rule))
    if lock:
        if keep_last is None and older_than_days is None and not gfs:
            raise StillpointError("lock locks the sets that retention keeps: give keep_last, older_than_days or a "
                                  "keep_daily/weekly/monthly/yearly rule with it")
        check_lock(lock, now)


def check_lock(lock, now=None):
    """The lock option: ``mode`` governance|compliance, ``duration`` days or ``expiration_date``, and for
    compliance an optional ``cool_off_period`` in hours. Returns it with ``expiration_date`` parsed."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    mode = lock.get("mode")
    if mode not in LOCK_MODES:
        raise StillpointError("lock.mode must be one of %s, not %r" % (", ".join(LOCK_MODES), mode))
    duration, expiration = lock.get("duration"), lock.get("expiration_date")
    if (duration is None) == (expiration is None):
        raise StillpointError("lock needs exactly one of duration (days) and expiration_date")
    if duration is not None and not 1 <= duration <= LOCK_DAYS_MAX:
        raise StillpointError("lock.duration must be 1..%d days, not %s" % (LOCK_DAYS_MAX, duration))
    out = dict(lock)
    if expiration is not None:
        out["expiration_date"] = parse_time(expiration)
        if out["expiration_date"] is None:
            raise StillpointError("lock.expiration_date %r is not an ISO 8601 time (2030-01-31T00:00:00Z)" % expiration)
        if out["expiration_date"] <= now:
            raise StillpointError("lock.expiration_date %s is not in the future" % utc_iso(out["expiration_date"]))
    cool_off = lock.get("cool_off_period")
    if cool_off is not None:
        if mode != "compliance":
            raise StillpointError("lock.cool_off_period is only for mode=compliance (a governance lock can always be "
                                  "changed by a user allowed to)")
        if not 1 <= cool_off <= COOL_OFF_MAX:
            raise StillpointError("lock.cool_off_period must be 1..%d hours, not %s" % (COOL_OFF_MAX, cool_off))
    return out


def summary(rec, reason):
    """A set as backup_set_prune reports it, with why it is kept or deleted."""
    return dict(set_id=rec["set_id"], name=rec["name"], instance_id=rec["instance_id"], state=rec["state"],
                created=rec["created"], reason=reason)


def newest_complete(records):
    """The ids of the newest complete set of each (name, instance) group; ``records`` newest first."""
    newest = {}
    for rec in records:
        if rec["state"] == "complete" and readable(rec):
            newest.setdefault((rec["name"], rec["instance_id"]), rec["set_id"])
    return set(newest.values())


def explicit_sets(records, set_ids, force, why_absent, locked=None):
    """The records named by ``set_ids``; raises with every refusal at once, in the order given.

    Without ``force`` the newest complete set of a group, a set of a schema this version does not read
    and a pending set are refused. ``why_absent(set_id)`` says why a set id is not among ``records``.
    A locked set (``locked``: set id -> active locks, :func:`locks_by_set`) is refused even with ``force``.
    """
    by_id = dict((r["set_id"], r) for r in records)
    newest = newest_complete(records)
    locked = locked or {}
    chosen, refusals = [], []
    for sid in dict.fromkeys(set_ids):
        rec = by_id.get(sid)
        if rec is None:
            refusals.append(why_absent(sid))
        elif sid in locked:
            refusals.append("set %s is locked (%s): EC2 refuses to delete a locked snapshot and force does not "
                            "override a lock; wait for the lock to expire, or unlock a governance lock (or a compliance "
                            "lock still in its cooling-off period) with UnlockSnapshot first"
                            % (sid, describe_locks(locked[sid])))
        elif force:
            chosen.append(rec)
        elif sid in newest:
            refusals.append("set %s is the newest complete set of %s on %s; set force=true to delete it"
                            % (sid, rec["name"], rec["instance_id"]))
        elif not readable(rec):
            refusals.append("set %s was written with catalog schema %s, which this version does not read; set "
                            "force=true to delete it" % (sid, rec.get("schema") or "(missing)"))
        elif rec["state"] == "pending":
            refusals.append("set %s is pending (a run may still be waiting on it: %s); set force=true to "
                            "delete it" % (sid, "; ".join(rec["problems"])))
        else:
            chosen.append(rec)
    if refusals:
        raise StillpointError("refused, nothing was deleted: " + " | ".join(refusals), refused=refusals)
    return chosen


def absent_refusal(sid, elsewhere, tagged_snapshot_ids):
    """Why ``sid`` cannot be deleted although named: ``elsewhere``, its records under another name or
    instance; ``tagged_snapshot_ids``, snapshots carrying the set id without our creator marker."""
    if elsewhere:
        return ("set %s belongs to name=%s instance_id=%s, not to the name/instance_id given; nothing deleted"
                % (sid, elsewhere[0]["name"], elsewhere[0]["instance_id"]))
    if tagged_snapshot_ids:
        return ("set %s is not ours: its snapshots %s carry the set id but not the creator marker %s=%s, so this "
                "collection did not create them and will not delete them"
                % (sid, ", ".join(sorted(tagged_snapshot_ids)), K_CREATOR, CREATOR))
    hint = "" if SET_ID_RE.match(sid) else " (set ids look like bs-YYYYMMDDTHHMMSSZ-xxxxxx)"
    return "set %s does not exist in this account and region%s" % (sid, hint)


def locks_by_set(records, lock_items, now=None):
    """The active locks of each set: ``{set_id: [{snapshot_id, state, expires_on}]}`` from DescribeLockedSnapshots
    items (``lock_items``). A lock whose state is ``expired`` or whose expiry has passed does not count."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    by_snapshot = dict((i.get("SnapshotId"), i) for i in lock_items or ())
    out = {}
    for rec in records:
        for sid in rec["snapshot_ids"]:
            item = by_snapshot.get(sid)
            if item is None or not lock_active(item, now):
                continue
            out.setdefault(rec["set_id"], []).append(dict(snapshot_id=sid, state=item.get("LockState"),
                                                          expires_on=utc_iso(parse_time(item.get("LockExpiresOn")))))
    return out


def lock_active(item, now):
    expires = parse_time(item.get("LockExpiresOn"))
    return item.get("LockState") not in (None, "expired") and (expires is None or expires > now)


def describe_locks(locks):
    return ", ".join("%s %s until %s" % (lk["snapshot_id"], lk["state"], lk["expires_on"]) for lk in locks)


def lock_sets(keep):
    """The kept sets the lock option locks: complete sets of a readable schema that a retention rule keeps."""
    skip = ("no retention rule given", "locked")
    return [rec for rec, why in keep if rec["state"] == "complete" and readable(rec) and why not in skip]


def lock_covers(current, spec, now):
    """True when a snapshot's current lock (a DescribeLockedSnapshots item, or None) already is at least
    what ``spec`` (:func:`check_lock`) asks: as strong a mode and an equal or longer duration/expiry."""
    if not current or not lock_active(current, now):
        return False
    if spec["mode"] == "compliance" and current.get("LockState") == "governance":
        return False
    expires = parse_time(current.get("LockExpiresOn"))
    if spec.get("expiration_date") is not None:
        return expires is not None and expires >= spec["expiration_date"]
    if current.get("LockDuration") is not None:
        return int(current["LockDuration"]) >= spec["duration"]
    if expires is None:
        return False
    days = datetime.timedelta(days=spec["duration"])  # a lock until a date: as long as asked when made, or from now
    start = parse_time(current.get("LockDurationStartTime") or current.get("LockCreatedOn"))
    return (start is not None and expires >= start + days) or expires >= now + days


def lock_request(snapshot_id, current, spec, now=None):
    """The LockSnapshot parameters that give ``snapshot_id`` the lock ``spec`` asks without ever weakening
    the lock it has (``current``: its DescribeLockedSnapshots item or None); None when it already has it."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if lock_covers(current, spec, now):
        return None
    active = bool(current) and lock_active(current, now)
    was_compliance = active and str(current.get("LockState", "")).startswith("compliance")
    mode = "compliance" if spec["mode"] == "compliance" or was_compliance else "governance"
    kwargs = {"SnapshotId": snapshot_id, "LockMode": mode}
    current_expiry = parse_time(current.get("LockExpiresOn")) if active else None
    if spec.get("expiration_date") is not None:
        kwargs["ExpirationDate"] = max(spec["expiration_date"], current_expiry or spec["expiration_date"])
    elif active and current.get("LockDuration") is not None:
        kwargs["LockDuration"] = max(spec["duration"], int(current["LockDuration"]))  # never a shorter lock
    elif current_expiry is not None and current_expiry > now + datetime.timedelta(days=spec["duration"]):
        kwargs["ExpirationDate"] = current_expiry  # a stronger mode, never a shorter lock
    else:
        kwargs["LockDuration"] = spec["duration"]
    if mode == "compliance" and spec.get("cool_off_period") and not was_compliance:
        kwargs["CoolOffPeriod"] = spec["cool_off_period"]
    return kwargs


def prune_decision(records, keep_last=None, older_than_days=None, delete_partial=False, set_ids=None, force=False,
                   why_absent=None, now=None, gfs=None, locked=None):
    """backup_set_prune's whole policy over the catalog's ``records`` (newest first): the sets named in
    ``set_ids`` (:func:`explicit_sets`), then retention (:func:`prune_plan`) over the rest. A locked set
    (``locked``, :func:`locks_by_set`) is never deleted: retention keeps it with the reason ``locked``,
    ``set_ids`` refuses it.

    Returns ``{"delete": [(record, reason)], "kept": [summary], "keep": [(record, reason)], "diff": {"before":
    {"set_ids"}, "after": {"set_ids"}}}``.
    """
    locked = locked or {}
    explicit = explicit_sets(records, set_ids, force, why_absent, locked) if set_ids else []
    explicit_ids = set(r["set_id"] for r in explicit)
    keep, delete = prune_plan([r for r in records if r["set_id"] not in explicit_ids], keep_last=keep_last,
                              older_than_days=older_than_days, delete_partial=delete_partial, now=now, gfs=gfs)
    keep = keep + [(r, "locked") for r, _why in delete if r["set_id"] in locked]
    delete = [(r, "named in set_ids") for r in explicit] + [(r, why) for r, why in delete if r["set_id"] not in locked]
    before = [r["set_id"] for r in records]
    doomed = set(r["set_id"] for r, _why in delete)
    keep.sort(key=lambda item: _sort_key(item[0]), reverse=True)
    kept = []
    for rec, why in keep:
        entry = summary(rec, why)
        if rec["set_id"] in locked:
            entry["locks"] = locked[rec["set_id"]]
        kept.append(entry)
    return {"delete": delete, "keep": keep, "kept": kept,
            "diff": dict(before=dict(set_ids=before), after=dict(set_ids=[sid for sid in before if sid not in doomed]))}


def period_of(created, unit):
    """The calendar period (UTC) of a time: ``2024-03-31``, ISO week ``2024-W13``, ``2024-03``, ``2024``."""
    if unit == "day":
        return created.strftime("%Y-%m-%d")
    if unit == "week":
        year, week, _weekday = created.isocalendar()
        return "%04d-W%02d" % (year, week)
    if unit == "month":
        return created.strftime("%Y-%m")
    return created.strftime("%Y")


def gfs_keep(recs, gfs):
    """Grandfather-father-son over one group's complete sets ``recs`` (newest first): for each rule
    ``keep_daily``/``keep_weekly``/``keep_monthly``/``keep_yearly`` = N, the newest set of each of the N most
    recent days/ISO weeks/months/years (UTC) that have a complete set. Returns ``{set_id: [reason, ...]}``."""
    out = {}
    for rule, unit in GFS_RULES:
        n = (gfs or {}).get(rule)
        if not n:
            continue
        periods = set()
        for rec in recs:
            created = parse_time(rec["created"])
            if created is None:
                continue
            period = period_of(created, unit)
            if period in periods:
                continue
            if len(periods) >= n:
                break
            periods.add(period)
            out.setdefault(rec["set_id"], []).append("%s=%d: newest of %s %s" % (rule, n, unit, period))
    return out


def prune_plan(records, keep_last=None, older_than_days=None, delete_partial=False, now=None, gfs=None):
    """Decide which sets retention deletes.

    Retention is per (set name, instance). A complete set is kept while it is among the newest
    ``keep_last`` complete sets of its group OR younger than ``older_than_days`` OR the newest complete set
    of one of the periods a ``gfs`` rule keeps (:func:`gfs_keep`); it is deleted only when every given
    criterion lets it go, and its reason names every rule that keeps it. The newest complete set of a group
    is always kept. Partial sets are deleted only with ``delete_partial`` and never count for a rule. Pending
    sets are never deleted (a run may still be waiting on them). Returns ``(keep, delete)`` lists of
    ``(record, reason)``.
    """
    if keep_last is not None and keep_last < 1:
        raise StillpointError("keep_last must be at least 1: retention never deletes the newest complete set")
    if older_than_days is not None and older_than_days < 0:
        raise StillpointError("older_than_days must not be negative")
    gfs = dict((k, v) for k, v in (gfs or {}).items() if v is not None)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    keep, delete = [], []
    groups = {}
    for rec in sorted(records, key=_sort_key, reverse=True):  # newest first, whatever the input order
        groups.setdefault((rec["name"], rec["instance_id"]), []).append(rec)
    for recs in groups.values():
        counted = [r for r in recs if readable(r) and r["state"] == "complete"]
        by_gfs = gfs_keep(counted, gfs)
        complete_seen = 0
        for rec in recs:
            if not readable(rec):
                schema = rec.get("schema") or "(missing)"
                keep.append((rec, "schema %s is not read by this version: never pruned" % schema))
                continue
            if rec["state"] == "pending":
                keep.append((rec, "pending: never pruned"))
                continue
            if rec["state"] == "partial":
                if delete_partial:
                    delete.append((rec, "partial set"))
                else:
                    keep.append((rec, "partial set kept (delete_partial is false)"))
                continue
            complete_seen += 1
            if complete_seen == 1:
                keep.append((rec, "newest complete set"))
                continue
            if keep_last is None and older_than_days is None and not gfs:
                keep.append((rec, "no retention rule given"))
                continue
            kept_by, reasons = [], []
            if keep_last is not None:
                if complete_seen <= keep_last:
                    kept_by.append("among the newest %d" % keep_last)
                else:
                    reasons.append("beyond keep_last=%d" % keep_last)
            if older_than_days is not None:
                created = parse_time(rec["created"])
                if created is None or (now - created).total_seconds() <= older_than_days * 86400:
                    kept_by.append("younger than %s days" % older_than_days)
                else:
                    reasons.append("older than %s days" % older_than_days)
            if gfs:
                if rec["set_id"] in by_gfs:
                    kept_by.extend(by_gfs[rec["set_id"]])
                else:
                    reasons.append("not the newest of a period kept by %s"
                                   % ", ".join("%s=%d" % (r, gfs[r]) for r, _u in GFS_RULES if r in gfs))
            if kept_by:
                keep.append((rec, "; ".join(kept_by)))
            else:
                delete.append((rec, " and ".join(reasons)))
    return keep, delete


# --------------------------------------------------------------------------- drills and copies (issue 17)

K_DRILL = PREFIX + "drill"  # the last restore drill's verdict (JSON, chunked like K_ARRAY), on every member
K_COPY_OF_KEY = PREFIX + "copy-of"  # _copy.K_COPY_OF: "<source account>:<source region>:<source set id>"


def drill_of(snapshots, set_id):
    """The drill verdict of ``set_id`` from its member snapshots (DescribeSnapshots items), or None.

    A verdict counts only when it names this set (a copy carries its source's tags, and with them the
    source's verdict: that one proves the source, not the copy) and every member carries the same one.
    Returns the verdict dict with ``members_agree`` (false when members carry different or no verdicts:
    the newest one is shown)."""
    found = []
    for snap in snapshots:
        tags = tag_dict(snap.get("Tags"))
        if tags.get(K_SET_ID) != set_id:
            continue
        value = decode_json(tags, K_DRILL)
        found.append(value if isinstance(value, dict) and value.get("set") == set_id else None)
    valid = [v for v in found if v]
    if not valid:
        return None
    newest = max(valid, key=lambda v: str(v.get("verified_at") or ""))
    out = dict(newest)
    out["members_agree"] = len(valid) == len(found) and all(v == newest for v in valid)
    return out


def copies_of(snapshots, set_id, region, source_region=None):
    """Copy sets (ids, newest first) among ``snapshots`` (of ``region``) whose ``stillpoint:copy-of`` names
    ``set_id`` of ``source_region`` (any account). Returns ``[{set_id, region, state_tags}]``."""
    suffix = ":%s" % set_id
    out = {}
    for snap in snapshots:
        if not is_ours(snap):
            continue
        tags = tag_dict(snap.get("Tags"))
        of = tags.get(K_COPY_OF_KEY) or ""
        if not of.endswith(suffix):
            continue
        parts = of.split(":")
        if source_region and (len(parts) < 3 or parts[-2] != source_region):
            continue
        cid = tags.get(K_SET_ID)
        if cid:
            out.setdefault(cid, set()).add(tags.get(K_STATE, "pending"))
    return [{"set_id": cid, "region": region, "marked": sorted(states)}
            for cid, states in sorted(out.items(), reverse=True)]


def verified(record):
    """True when the set's last drill (``record["drill"]``) passed and every member carries it."""
    d = record.get("drill") or {}
    return d.get("result") == "pass" and bool(d.get("members_agree"))


def newest_verified(records, region=None):
    """The newest complete, verified set per host (instance) and set name: ``[{instance_id, host, name, set_id,
    created, verified_at, rto_s, region}]``; ``records`` newest first, each with its ``drill``."""
    out = {}
    for rec in records:
        if rec.get("state") != "complete" or not verified(rec):
            continue
        key = (rec.get("instance_id"), rec.get("name"))
        if key in out:
            continue
        out[key] = {"instance_id": rec.get("instance_id"), "host": rec.get("host"), "name": rec.get("name"),
                    "set_id": rec["set_id"], "created": rec.get("created"), "region": region,
                    "verified_at": rec["drill"].get("verified_at"), "rto_s": rec["drill"].get("rto_s")}
    return sorted(out.values(), key=lambda r: (str(r["instance_id"]), str(r["name"])))
