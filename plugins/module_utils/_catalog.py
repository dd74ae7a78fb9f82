# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup catalog: tag schema v1 (docs/catalog.md), grouping snapshots into sets.

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

SCHEMA = "1"
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


def member_tags(index, device, source_volume, mountpoints=()):
    """Tags that differ per member (applied with CreateTags right after the call)."""
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
    tags = tag_dict(snapshot.get("Tags"))
    mounts = tags.get(K_MOUNTPOINTS, "")
    return {
        "index": as_int(tags.get(K_MEMBER)),
        "snapshot_id": snapshot.get("SnapshotId"),
        "state": snapshot.get("State"),
        "progress": snapshot.get("Progress"),
        "device": tags.get(K_DEVICE) or None,
        "source_volume": tags.get(K_SOURCE_VOLUME) or snapshot.get("VolumeId"),
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
    if record["schema"] != SCHEMA:
        waiting.append("catalog schema %s is not read by this version (it reads schema %s); upgrade "
                       "stillpoint.snapshots. The set is never reported complete nor pruned by this version"
                       % (record["schema"] or "(missing)", SCHEMA))

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


def check_prune_rules(keep_last=None, older_than_days=None, set_ids=None, delete_partial=False):
    """Refuse a prune with nothing to do or with a rule that would let the newest complete set go."""
    if keep_last is None and older_than_days is None and not set_ids and not delete_partial:
        raise StillpointError("nothing to do: give keep_last, older_than_days, set_ids or delete_partial=true")
    if keep_last is not None and keep_last < 1:
        raise StillpointError("keep_last must be at least 1: retention never deletes the newest complete set")
    if older_than_days is not None and older_than_days < 0:
        raise StillpointError("older_than_days must not be negative")


def summary(rec, reason):
    """A set as backup_set_prune reports it, with why it is kept or deleted."""
    return dict(set_id=rec["set_id"], name=rec["name"], instance_id=rec["instance_id"], state=rec["state"],
                created=rec["created"], reason=reason)


def newest_complete(records):
    """The ids of the newest complete set of each (name, instance) group; ``records`` newest first."""
    newest = {}
    for rec in records:
        if rec["state"] == "complete" and rec.get("schema") == SCHEMA:
            newest.setdefault((rec["name"], rec["instance_id"]), rec["set_id"])
    return set(newest.values())


def explicit_sets(records, set_ids, force, why_absent):
    """The records named by ``set_ids``; raises with every refusal at once, in the order given.

    Without ``force`` the newest complete set of a group, a set of a schema this version does not read
    and a pending set are refused. ``why_absent(set_id)`` says why a set id is not among ``records``.
    """
    by_id = dict((r["set_id"], r) for r in records)
    newest = newest_complete(records)
    chosen, refusals = [], []
    for sid in dict.fromkeys(set_ids):
        rec = by_id.get(sid)
        if rec is None:
            refusals.append(why_absent(sid))
        elif force:
            chosen.append(rec)
        elif sid in newest:
            refusals.append("set %s is the newest complete set of %s on %s; set force=true to delete it"
                            % (sid, rec["name"], rec["instance_id"]))
        elif rec.get("schema") != SCHEMA:
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


def prune_decision(records, keep_last=None, older_than_days=None, delete_partial=False, set_ids=None, force=False,
                   why_absent=None, now=None):
    """backup_set_prune's whole policy over the catalog's ``records`` (newest first): the sets named in
    ``set_ids`` (:func:`explicit_sets`), then retention (:func:`prune_plan`) over the rest.

    Returns ``{"delete": [(record, reason)], "kept": [summary], "diff": {"before": {"set_ids"}, "after":
    {"set_ids"}}}``.
    """
    explicit = explicit_sets(records, set_ids, force, why_absent) if set_ids else []
    explicit_ids = set(r["set_id"] for r in explicit)
    keep, delete = prune_plan([r for r in records if r["set_id"] not in explicit_ids], keep_last=keep_last,
                              older_than_days=older_than_days, delete_partial=delete_partial, now=now)
    delete = [(r, "named in set_ids") for r in explicit] + delete
    before = [r["set_id"] for r in records]
    doomed = set(r["set_id"] for r, _why in delete)
    return {"delete": delete, "kept": [summary(r, why) for r, why in keep],
            "diff": dict(before=dict(set_ids=before), after=dict(set_ids=[sid for sid in before if sid not in doomed]))}


def prune_plan(records, keep_last=None, older_than_days=None, delete_partial=False, now=None):
    """Decide which sets retention deletes.

    Retention is per (set name, instance). A complete set is kept while it is among the newest
    ``keep_last`` complete sets of its group OR younger than ``older_than_days``; it is deleted
    only when every given criterion lets it go. The newest complete set of a group is always
    kept. Partial sets are deleted only with ``delete_partial``. Pending sets are never deleted
    (a run may still be waiting on them). Returns ``(keep, delete)`` lists of ``(record, reason)``.
    """
    if keep_last is not None and keep_last < 1:
        raise StillpointError("keep_last must be at least 1: retention never deletes the newest complete set")
    if older_than_days is not None and older_than_days < 0:
        raise StillpointError("older_than_days must not be negative")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    keep, delete = [], []
    groups = {}
    for rec in sorted(records, key=_sort_key, reverse=True):  # newest first, whatever the input order
        groups.setdefault((rec["name"], rec["instance_id"]), []).append(rec)
    for recs in groups.values():
        complete_seen = 0
        for rec in recs:
            if rec.get("schema") != SCHEMA:
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
            if keep_last is None and older_than_days is None:
                keep.append((rec, "no retention rule given"))
                continue
            reasons = []
            if keep_last is not None:
                if complete_seen <= keep_last:
                    keep.append((rec, "among the newest %d" % keep_last))
                    continue
                reasons.append("beyond keep_last=%d" % keep_last)
            if older_than_days is not None:
                created = parse_time(rec["created"])
                if created is None or (now - created).total_seconds() <= older_than_days * 86400:
                    keep.append((rec, "younger than %s days" % older_than_days))
                    continue
                reasons.append("older than %s days" % older_than_days)
            delete.append((rec, " and ".join(reasons)))
    return keep, delete
