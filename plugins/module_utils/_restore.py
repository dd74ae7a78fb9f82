# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a complete backup set into volumes: one volume per member, all or nothing, idempotent.

Every restored volume carries the restore tags from its ``CreateVolume`` call on
(``TagSpecifications``), so a run that was interrupted after any number of creates leaves volumes
that the next run with the same restore id finds and adopts instead of creating more. The restore
id is deterministic (:func:`restore_id`): the same set, AZ and instance give the same id.

Flow (:func:`restore`): :func:`load_set` (refuses anything but a complete set) -> :func:`find_restored` ->
:func:`plan_restore` (pure) -> optionally :func:`enable_fast_snapshot_restore` ->
:func:`create_missing` (creates, waits, rolls back its own creations on failure).
"""

from __future__ import annotations

import binascii
import hashlib
import os
import time

try:
    import botocore
    import botocore.parsers
except ImportError:
    pass  # the modules check HAS_BOTO3 through AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CREATOR
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._ebs import describe_volumes

# Restore-side tag keys (shared with the swap and the host side). The others are the catalog's own:
# stillpoint:set-id, stillpoint:member, stillpoint:device, stillpoint:source-volume, stillpoint:creator.
K_RESTORE_ID = catalog.PREFIX + "restore-id"

VOLUME_TYPES = ("standard", "gp2", "gp3", "io1", "io2", "st1", "sc1")
IOPS_REQUIRED = ("io1", "io2")
IOPS_ALLOWED = ("gp3", "io1", "io2")
THROUGHPUT_ALLOWED = ("gp3",)

# Volume states that count as "there": deleting/deleted volumes are on their way out (a rollback).
LIVE_STATES = ("creating", "available", "in-use", "error")
READY_STATES = ("available", "in-use")
FAILED_STATES = ("error", "deleting", "deleted", "missing")

RESTORE_TAG_COUNT = 6
EC2_TAG_LIMIT = 50

# Fast snapshot restore states that need no EnableFastSnapshotRestores call.
FSR_ON = ("enabling", "optimizing", "enabled")
# Error codes by which an endpoint says it does not implement an action.
UNSUPPORTED_CODES = ("UnsupportedOperation", "InvalidAction", "NotImplemented", "OperationNotSupported",
                     "UnknownOperation", "InvalidRequest")


# --------------------------------------------------------------------------- ids and tags

def restore_id(set_id, availability_zone, instance_id=None):
    """The default restore id: the same set, AZ and instance always give the same id.

    ``"rs-" + sha1("set_id|az|instance_id").hexdigest()[:12]`` (instance id empty when none).
    """
    if not set_id:
        raise StillpointError("a restore id needs the set id")
    if not availability_zone:
        raise StillpointError("a restore id needs the availability zone")
    text = "%s|%s|%s" % (set_id, availability_zone, instance_id or "")
    return "rs-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


_default_restore_id = restore_id  # plan_restore's ``restore_id`` argument shadows the function


def restore_tags(rid, set_id, member):
    """The tags every restored volume carries from its CreateVolume call on."""
    tags = {
        K_RESTORE_ID: rid,
        catalog.K_SET_ID: set_id,
        catalog.K_MEMBER: str(int(member["index"])),
        catalog.K_DEVICE: member.get("device") or "",
        catalog.K_SOURCE_VOLUME: member.get("source_volume") or "",
        catalog.K_CREATOR: CREATOR,
    }
    for key, value in tags.items():
        catalog.check_tag_value(key, value)
    return tags


def _client_token(rid, index, nonce):
    """CreateVolume's idempotency token: a retry of the same request (AWSRetry, botocore) never makes a
    second volume. Per run (``nonce``), so a rolled-back run's token is never reused. At most 64 chars."""
    digest = hashlib.sha1(rid.encode("utf-8")).hexdigest()[:16]
    return "sp-%s-%d-%s" % (digest, index, nonce)


# --------------------------------------------------------------------------- reading

def resolve_availability_zone(client, availability_zone=None, instance_id=None):
    """The AZ to restore into: the instance's (``instance_id``) or the given one, checked to exist."""
    if instance_id:
        inst = ebs.describe_instance(client, instance_id)
        az = (inst.get("Placement") or {}).get("AvailabilityZone")
        if not az:
            raise StillpointError("EC2 reports no availability zone for instance %s" % instance_id)
        if availability_zone and availability_zone != az:
            raise StillpointError(
                "instance %s is in %s, but availability_zone is %s: volumes can only be attached in the "
                "instance's own zone. Omit availability_zone or give %s" % (instance_id, az, availability_zone, az))
        return az
    if not availability_zone:
        raise StillpointError("give availability_zone or instance_id (the zone is read from the instance)")
    try:
        zones = client.describe_availability_zones(ZoneNames=[availability_zone], aws_retry=True)
    except ebs.aws_errors() as e:
        raise ebs.aws_error("DescribeAvailabilityZones %s (check availability_zone and region)" % availability_zone, e)
    names = [z.get("ZoneName") for z in zones.get("AvailabilityZones", [])]
    if availability_zone not in names:
        raise StillpointError("availability zone %s is not known in this region (zones: %s); check "
                              "availability_zone and region" % (availability_zone, ", ".join(names) or "none"))
    return availability_zone


def load_set(client, set_id):
    """The catalog record of ``set_id``; refuses anything but a complete set whose members all completed."""
    records = ebs.catalog_sets(client, set_id=set_id)
    if not records:
        raise StillpointError(
            "backup set %s is not in the catalog (no snapshot of this account in this region carries "
            "stillpoint:set-id=%s and the stillpoint:creator marker); check set_id and region, "
            "stillpoint.snapshots.backup_set_info lists the sets" % (set_id, set_id), set_id=set_id)
    rec = records[0]
    why = "; ".join(rec["problems"]) or "no reason recorded"
    if rec["state"] == "partial":
        raise StillpointError(
            "backup set %s is partial and is never restored, not even in part: %s. Restore another set "
            "(backup_set_info with state=[complete])" % (set_id, why), set=rec)
    if rec["state"] != "complete":
        raise StillpointError(
            "backup set %s is still pending, not complete: %s. Only a complete set is restored: wait until "
            "ebs_snapshot_set marks it complete (re-run it with set_id=%s to wait and mark it), then restore"
            % (set_id, why, set_id), set=rec)
    not_done = ["%s (member %s) is %s" % (m["snapshot_id"], m["index"], m["state"])
                for m in rec["members"] if m["state"] != "completed"]
    if not_done:  # the derived state already says so; checked again because restoring it would be wrong
        raise StillpointError("backup set %s has snapshots that are not completed: %s; it cannot be restored"
                              % (set_id, ", ".join(not_done)), set=rec)
    indexes = [m["index"] for m in rec["members"]]
    if indexes != list(range(rec["member_count"] or 0)):
        raise StillpointError("backup set %s does not hold members 0..%s exactly once (found %s); it cannot be "
                              "restored" % (set_id, (rec["member_count"] or 0) - 1, indexes), set=rec)
    return rec


def find_restored(client, rid):
    """Volumes of restore ``rid`` that exist (creating, available, in-use or error), by member index.

    Refuses when a volume has no readable member index or when two volumes claim one member: which one
    holds the data to keep is for a human to decide.
    """
    vols = describe_volumes(client, [{"Name": "tag:%s" % K_RESTORE_ID, "Values": [rid]},
                                     {"Name": "status", "Values": list(LIVE_STATES)}])
    by_member, unreadable = {}, []
    for vol in sorted(vols, key=lambda v: v["VolumeId"]):
        index = catalog.as_int(catalog.tags_of(vol).get(catalog.K_MEMBER))
        if index is None:
            unreadable.append(vol["VolumeId"])
            continue
        by_member.setdefault(index, []).append(vol)
    if unreadable:
        raise StillpointError(
            "volume(s) %s carry restore id %s but no readable %s tag; a human must check them (fix the tag or "
            "delete the volume), then re-run" % (", ".join(unreadable), rid, catalog.K_MEMBER),
            restore_id=rid, volume_ids=unreadable)
    dups = dict((i, [v["VolumeId"] for v in vs]) for i, vs in by_member.items() if len(vs) > 1)
    if dups:
        raise StillpointError(
            "restore %s has more than one volume for %s; a human must delete the extra volume(s) (keep the one "
            "that is attached or holds the data you want), then re-run" % (
                rid, "; ".join("member %d: %s" % (i, ", ".join(ids)) for i, ids in sorted(dups.items()))),
            restore_id=rid, duplicates=dict((str(i), ids) for i, ids in dups.items()))
    return dict((i, vs[0]) for i, vs in by_member.items())


# --------------------------------------------------------------------------- planning

def volume_record(volume, member, created):
    """The public record of a restored volume."""
    return {
        "index": member["index"],
        "volume_id": volume["VolumeId"],
        "device": member.get("device"),
        "snapshot_id": member["snapshot_id"],
        "source_volume": member.get("source_volume"),
        "availability_zone": volume.get("AvailabilityZone"),
        "state": volume.get("State"),
        "created": bool(created),
    }


def _check_volume_options(volume_type, iops, throughput, kms_key_id, encrypted, tags):
    if volume_type not in VOLUME_TYPES:
        raise StillpointError("volume_type %r is not one of %s" % (volume_type, ", ".join(VOLUME_TYPES)))
    if volume_type in IOPS_REQUIRED and not iops:
        raise StillpointError("volume_type %s needs iops" % volume_type)
    if iops and volume_type not in IOPS_ALLOWED:
        raise StillpointError("iops applies to %s volumes only, not %s" % ("/".join(IOPS_ALLOWED), volume_type))
    if throughput and volume_type not in THROUGHPUT_ALLOWED:
        raise StillpointError("throughput applies to %s volumes only, not %s"
                              % ("/".join(THROUGHPUT_ALLOWED), volume_type))
    if kms_key_id and encrypted is False:
        raise StillpointError("kms_key_id needs encrypted volumes; drop encrypted=false or kms_key_id")
    tags = dict(tags or {})
    ours = sorted(k for k in tags if str(k).startswith(catalog.PREFIX))
    if ours:
        raise StillpointError("tag keys starting with %s are reserved for the catalog: %s"
                              % (catalog.PREFIX, ", ".join(ours)))
    if len(tags) + RESTORE_TAG_COUNT > EC2_TAG_LIMIT:
        raise StillpointError("%d tags given; EC2 allows %d per volume and the restore uses %d"
                              % (len(tags), EC2_TAG_LIMIT, RESTORE_TAG_COUNT))
    out = {}
    for key, value in tags.items():
        out[str(key)] = catalog.check_tag_value(str(key), "" if value is None else str(value))
    return out


def plan_restore(record, existing, availability_zone, volume_type="gp3", iops=None, throughput=None,
                 kms_key_id=None, encrypted=None, tags=None, restore_id=None, instance_id=None):
    """Decide which members need a volume and how to create it. Pure: no API calls.

    ``record``: a complete set (:func:`load_set`); ``existing``: :func:`find_restored`'s answer;
    ``restore_id``: defaults to :func:`restore_id` of the set, AZ and ``instance_id``. An existing volume
    is adopted only when it is in ``availability_zone``, comes from the member's snapshot and carries the
    set id and the creator marker; anything else is refused (a human must look at it).
    Returns ``{"restore_id", "set_id", "availability_zone", "instance_id", "member_count", "existing":
    [volume records], "to_create": [{"index", "snapshot_id", "device", "source_volume",
    "availability_zone", "volume_type", "size", "request": CreateVolume kwargs}], "warnings"}``.
    """
    set_id = record["set_id"]
    rid = restore_id or _default_restore_id(set_id, availability_zone, instance_id)
    catalog.check_tag_value(K_RESTORE_ID, rid)
    user_tags = _check_volume_options(volume_type, iops, throughput, kms_key_id, encrypted, tags)
    members = dict((m["index"], m) for m in record["members"])
    stray = sorted(i for i in existing if i not in members)
    if stray:
        raise StillpointError(
            "restore %s has volumes for members %s, but set %s has members 0..%d: %s. A human must check them"
            % (rid, ", ".join(str(i) for i in stray), set_id, len(members) - 1,
               ", ".join(existing[i]["VolumeId"] for i in stray)), restore_id=rid)
    plan = {"restore_id": rid, "set_id": set_id, "availability_zone": availability_zone, "instance_id": instance_id,
            "member_count": len(members), "existing": [], "to_create": [], "warnings": []}
    for index in sorted(members):
        member = members[index]
        vol = existing.get(index)
        if vol is not None:
            plan["existing"].append(_adopt(vol, member, rid, set_id, availability_zone, volume_type, plan["warnings"]))
            continue
        request = {
            "AvailabilityZone": availability_zone,
            "SnapshotId": member["snapshot_id"],
            "VolumeType": volume_type,
        }
        if iops:
            request["Iops"] = int(iops)
        if throughput:
            request["Throughput"] = int(throughput)
        if kms_key_id:
            request["Encrypted"] = True
            request["KmsKeyId"] = kms_key_id
        elif encrypted is not None:
            request["Encrypted"] = bool(encrypted)
        all_tags = dict(user_tags)
        all_tags.update(restore_tags(rid, set_id, member))
        request["TagSpecifications"] = [{"ResourceType": "volume", "Tags": catalog.to_tag_list(all_tags)}]
        plan["to_create"].append({
            "index": index, "snapshot_id": member["snapshot_id"], "device": member.get("device"),
            "source_volume": member.get("source_volume"), "availability_zone": availability_zone,
            "volume_type": volume_type, "size": member.get("volume_size"), "request": request,
        })
    return plan


def _adopt(vol, member, rid, set_id, availability_zone, volume_type, warnings):
    vid = vol["VolumeId"]
    tags = catalog.tags_of(vol)
    what = "volume %s (member %d of restore %s)" % (vid, member["index"], rid)
    if vol.get("AvailabilityZone") != availability_zone:
        raise StillpointError(
            "%s is in %s, not in %s as asked: a restore id names one zone. Restore into %s, or delete %s, or "
            "give another restore_id" % (what, vol.get("AvailabilityZone"), availability_zone,
                                         vol.get("AvailabilityZone"), vid),
            restore_id=rid, volume_id=vid)
    if vol.get("SnapshotId") != member["snapshot_id"]:
        raise StillpointError("%s was created from %s, but member %d of set %s is %s; a human must check it"
                              % (what, vol.get("SnapshotId") or "no snapshot", member["index"], set_id,
                                 member["snapshot_id"]), restore_id=rid, volume_id=vid)
    if tags.get(catalog.K_SET_ID) != set_id or tags.get(catalog.K_CREATOR) != CREATOR:
        raise StillpointError("%s does not carry %s=%s and the creator marker; it was not made by this restore, "
                              "a human must check it" % (what, catalog.K_SET_ID, set_id),
                              restore_id=rid, volume_id=vid)
    if vol.get("State") == "error":
        raise StillpointError("%s is in state error; delete it (it holds nothing usable) and re-run" % what,
                              restore_id=rid, volume_id=vid)
    if vol.get("VolumeType") and vol.get("VolumeType") != volume_type:
        warnings.append("%s is %s, not %s: kept as it is (change it with ModifyVolume if needed)"
                        % (what, vol.get("VolumeType"), volume_type))
    return volume_record(vol, member, created=False)


def public_plan(plan):
    """The plan without the raw requests: what check mode shows."""
    return [dict((k, v) for k, v in entry.items() if k != "request") for entry in plan["to_create"]]


# --------------------------------------------------------------------------- fast snapshot restore

def _fsr_error(action, exc, what):
    if isinstance(exc, botocore.exceptions.ClientError):
        code = ebs.error_code(exc)
        if code in UNSUPPORTED_CODES:
            return StillpointError(
                "this EC2 endpoint does not support fast snapshot restore (%s answered %s: %s); %s. Run without "
                "fast_snapshot_restore or against an endpoint that supports it" % (action, code, exc, what),
                error_code=code)
        return StillpointError("%s failed: %s; %s" % (action, exc, what), error_code=code)
    if isinstance(exc, botocore.exceptions.BotoCoreError):  # no answer at all: nothing says it is unsupported
        return ebs.aws_error("%s got no answer; %s" % (action, what), exc)
    return StillpointError(
        "the EC2 endpoint gave no valid answer to %s (%s: %s): it does not appear to support fast snapshot "
        "restore; %s. Run without fast_snapshot_restore or against an endpoint that supports it"
        % (action, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", what))


def fast_snapshot_restore_states(client, snapshot_ids, availability_zone):
    """``{snapshot_id: state}`` of fast snapshot restore in ``availability_zone`` (``disabled`` when not listed)."""
    kwargs = {"Filters": [{"Name": "snapshot-id", "Values": list(snapshot_ids)},
                          {"Name": "availability-zone", "Values": [availability_zone]}]}
    try:
        items = ebs.paginate(client, "describe_fast_snapshot_restores", "FastSnapshotRestores", **kwargs)
    except ebs.aws_errors() as e:
        raise _fsr_error("DescribeFastSnapshotRestores", e, "nothing was created")
    states = dict((sid, "disabled") for sid in snapshot_ids)
    for item in items:
        if item.get("AvailabilityZone") == availability_zone and item.get("SnapshotId") in states:
            states[item["SnapshotId"]] = item.get("State") or "disabled"
    return states


def fsr_to_enable(states):
    """Snapshots whose fast snapshot restore is neither on nor on its way."""
    return sorted(sid for sid, state in states.items() if state not in FSR_ON)


def enable_fast_snapshot_restore(client, snapshot_ids, availability_zone, check_mode=False):
    """Enable fast snapshot restore for ``snapshot_ids`` in one AZ, before any volume is created.

    Does not wait for ``enabled`` (EC2 takes about an hour per TiB; volumes created while ``enabling`` or
    ``optimizing`` get part of the benefit). All or nothing: when EC2 refuses any snapshot, the ones this
    call enabled are disabled again. Returns ``{"states": {snapshot_id: state}, "enabled": [ids enabled now]}``.
    """
    states = fast_snapshot_restore_states(client, snapshot_ids, availability_zone)
    todo = fsr_to_enable(states)
    if not todo or check_mode:
        return {"states": states, "enabled": [] if not check_mode else todo}
    try:
        res = client.enable_fast_snapshot_restores(AvailabilityZones=[availability_zone], SourceSnapshotIds=todo,
                                                   aws_retry=True)
    except ebs.aws_errors() as e:
        raise _fsr_error("EnableFastSnapshotRestores", e, "nothing was created")
    enabled = []
    for item in res.get("Successful", []):
        if item.get("AvailabilityZone", availability_zone) == availability_zone:
            states[item["SnapshotId"]] = item.get("State") or "enabling"
            enabled.append(item["SnapshotId"])
    errors = []
    for item in res.get("Unsuccessful", []):
        for err in item.get("FastSnapshotRestoreStateErrors", []):
            detail = err.get("Error") or {}
            errors.append("%s in %s: %s %s" % (
                item.get("SnapshotId"), err.get("AvailabilityZone"), detail.get("Code"), detail.get("Message")))
    if errors:
        undone = []
        if enabled:
            try:
                client.disable_fast_snapshot_restores(AvailabilityZones=[availability_zone],
                                                      SourceSnapshotIds=enabled, aws_retry=True)
                undone = enabled
            except ebs.aws_errors():
                pass
        raise StillpointError(
            "EC2 refused fast snapshot restore for %s; nothing was created%s" % (
                "; ".join(errors),
                ", and it was disabled again on %s" % ", ".join(undone) if undone else
                (" (it stays enabled on %s: disable it by hand, it is billed per hour)" % ", ".join(enabled)
                 if enabled else "")),
            fast_snapshot_restore=states)
    return {"states": states, "enabled": sorted(enabled)}


# --------------------------------------------------------------------------- creating

def settle(states):
    """``error`` when any volume failed or vanished, ``available`` when all are usable, else ``creating``."""
    if any(s in FAILED_STATES for s in states.values()):
        return "error"
    if all(s in READY_STATES for s in states.values()):
        return "available"
    return "creating"


def poll_volumes(client, volume_ids):
    """``{volume_id: volume}`` for those that still exist (a ``volume-id`` filter: no NotFound for gone ones)."""
    return dict((v["VolumeId"], v) for v in describe_volumes(client, volume_ids=volume_ids))


def _settled(view):
    """:func:`settle` of a :func:`_ebs.wait_volumes` view; None while any volume is still creating."""
    status = settle(dict((vid, vol.get("State") if vol is not None else "missing") for vid, vol in view.items()))
    return None if status == "creating" else status


def rollback(client, rid, volume_ids, timeout=120.0, interval=2.0, sleep=time.sleep, clock=time.monotonic):
    """Delete the given volumes of restore ``rid`` (the ones this run created), and nothing else.

    Each volume is checked right before its deletion to carry ``stillpoint:restore-id=rid`` and the
    creator marker. A volume still ``creating`` cannot be deleted yet: it is retried until ``timeout``.
    Returns ``{"deleted": [...], "failed": [{"volume_id", "error"}]}``.
    """
    deleted, failed = [], []
    todo = list(volume_ids)
    start = clock()
    while todo:
        vols = poll_volumes(client, todo)
        retry = []
        for vid in todo:
            vol = vols.get(vid)
            if vol is None or vol.get("State") in ("deleting", "deleted"):
                deleted.append(vid)  # gone already
                continue
            tags = catalog.tags_of(vol)
            if tags.get(K_RESTORE_ID) != rid or tags.get(catalog.K_CREATOR) != CREATOR:
                failed.append({"volume_id": vid, "error": "does not carry %s=%s and the creator marker: not "
                               "deleted" % (K_RESTORE_ID, rid)})
                continue
            try:
                client.delete_volume(VolumeId=vid, aws_retry=True)
                deleted.append(vid)
            except ebs.aws_errors() as e:
                code = ebs.error_code(e)
                if code == "InvalidVolume.NotFound":
                    deleted.append(vid)
                elif code in ("IncorrectState", "VolumeInUse") and clock() - start < timeout:
                    retry.append(vid)
                else:
                    failed.append({"volume_id": vid, "error": str(e) if code else ebs.aws_error("DeleteVolume", e).msg})
        todo = retry
        if todo:
            sleep(interval)
    return {"deleted": sorted(deleted), "failed": failed}


def _leftovers(client, rid, known):
    """Volumes of restore ``rid`` that neither an earlier run left nor this run knows of (a create whose
    answer was lost). Never deleted here: their origin is not certain; a re-run adopts them."""
    try:
        vols = describe_volumes(client, [{"Name": "tag:%s" % K_RESTORE_ID, "Values": [rid]},
                                         {"Name": "status", "Values": list(LIVE_STATES)}])
    except StillpointError:
        return []
    return sorted(v["VolumeId"] for v in vols if v["VolumeId"] not in known)


def _rolled_back_text(rb, kept, unknown=()):
    parts = []
    if rb["deleted"]:
        parts.append("rolled back: deleted %s, created by this run" % ", ".join(rb["deleted"]))
    else:
        parts.append("this run had created no volume, nothing to roll back")
    if rb["failed"]:
        parts.append("could NOT delete %s (delete by hand)" % "; ".join(
            "%s: %s" % (f["volume_id"], f["error"]) for f in rb["failed"]))
    if kept:
        parts.append("kept %s from an earlier run (a re-run adopts them)" % ", ".join(kept))
    if unknown:
        parts.append("left %s, which also carry this restore id but whose creation this run cannot prove "
                     "(a re-run adopts them)" % ", ".join(unknown))
    return "; ".join(parts)


def create_missing(client, plan, wait=True, wait_timeout=900, sleep=time.sleep, interval=2.0, clock=time.monotonic):
    """Create a volume for every member in ``plan["to_create"]``, then wait for all of them.

    All requests go out first, then one wait covers every volume. All or nothing: when a CreateVolume
    fails or a volume ends in ``error``, every volume this call created is deleted (never a volume it
    did not create) and StillpointError says what was rolled back. A wait that times out deletes
    nothing: the volumes are tagged, and a re-run with the same restore id adopts them.
    Returns ``{"restore_id", "set_id", "availability_zone", "volumes": [records by index], "created": [ids]}``.
    """
    rid = plan["restore_id"]
    records = dict((r["index"], dict(r)) for r in plan["existing"])
    kept = [r["volume_id"] for r in plan["existing"]]
    created = []
    nonce = binascii.hexlify(os.urandom(6)).decode()
    for entry in plan["to_create"]:
        try:
            vol = client.create_volume(ClientToken=_client_token(rid, entry["index"], nonce), aws_retry=True,
                                       **entry["request"])
        except ebs.aws_errors() as e:
            rb = rollback(client, rid, created, interval=interval, sleep=sleep, clock=clock)
            unknown = _leftovers(client, rid, set(kept) | set(created))
            err = ebs.aws_error("CreateVolume failed for member %d (%s) of set %s in %s" % (
                entry["index"], entry["snapshot_id"], plan["set_id"], plan["availability_zone"]), e)
            raise StillpointError("%s; %s" % (err.msg, _rolled_back_text(rb, kept, unknown)),
                                  error_code=ebs.error_code(e), restore_id=rid, rollback=rb)
        created.append(vol["VolumeId"])
        member = {"index": entry["index"], "snapshot_id": entry["snapshot_id"], "device": entry["device"],
                  "source_volume": entry["source_volume"]}
        records[entry["index"]] = volume_record(vol, member, created=True)
    pending = [r["volume_id"] for r in records.values() if r["state"] not in READY_STATES]
    if wait and (created or pending):
        ids = [records[i]["volume_id"] for i in sorted(records)]
        status, vols = ebs.wait_volumes(client, ids, _settled, wait_timeout, interval, sleep, clock)
        status = status or "timeout"
        for rec in records.values():
            vol = vols.get(rec["volume_id"])
            rec["state"] = vol.get("State") if vol is not None else "missing"
        if status == "error":
            bad = ", ".join("%s (member %d) is %s" % (r["volume_id"], r["index"], r["state"])
                            for _i, r in sorted(records.items()) if r["state"] in FAILED_STATES)
            rb = rollback(client, rid, created, interval=interval, sleep=sleep, clock=clock)
            kept = [r["volume_id"] for r in records.values() if not r["created"] and r["state"] not in FAILED_STATES]
            raise StillpointError(
                "restore %s of set %s failed: %s; %s" % (rid, plan["set_id"], bad, _rolled_back_text(rb, sorted(kept))),
                restore_id=rid, rollback=rb)
        if status == "timeout":
            slow = ", ".join("%s (member %d) is %s" % (r["volume_id"], r["index"], r["state"])
                             for _i, r in sorted(records.items()) if r["state"] not in READY_STATES)
            raise StillpointError(
                "restore %s: volumes not available after %ss: %s. Nothing was deleted; re-run with the same "
                "arguments to keep waiting (it adopts these volumes and creates no more)" % (rid, wait_timeout, slow),
                restore_id=rid, created=created, volumes=[records[i] for i in sorted(records)])
    return {"restore_id": rid, "set_id": plan["set_id"], "availability_zone": plan["availability_zone"],
            "volumes": [records[i] for i in sorted(records)], "created": created}


def restore(client, set_id, availability_zone=None, instance_id=None, restore_id=None, volume_type="gp3", iops=None,
            throughput=None, kms_key_id=None, encrypted=None, tags=None, fast_snapshot_restore=False, wait=True,
            wait_timeout=900, check_mode=False, warn=None):
    """ebs_volume_restore: the whole restore of ``set_id`` (or, in ``check_mode``, its plan).

    Returns the module's result; ``warn(text)`` is told about volumes adopted as they are. A failure raises with
    ``set_id``, the zone and restore id once known, and ``changed`` (true when volumes this run created
    remain: a timed-out wait leaves its tagged volumes for a re-run to adopt).
    """
    result = dict(changed=False, set_id=set_id)
    try:
        az = resolve_availability_zone(client, availability_zone, instance_id)
        rid = restore_id or _default_restore_id(set_id, az, instance_id)
        result.update(availability_zone=az, restore_id=rid)
        plan = plan_restore(load_set(client, set_id), find_restored(client, rid), az, volume_type=volume_type, iops=iops,
                            throughput=throughput, kms_key_id=kms_key_id, encrypted=encrypted, tags=tags,
                            restore_id=rid, instance_id=instance_id)
        for warning in plan["warnings"] if warn else ():
            warn(warning)
        result["volumes_to_create"] = public_plan(plan)
        if fast_snapshot_restore and plan["to_create"]:
            result["fast_snapshot_restore"] = enable_fast_snapshot_restore(
                client, [e["snapshot_id"] for e in plan["to_create"]], az, check_mode=check_mode)
        fsr_changed = bool(result.get("fast_snapshot_restore", {}).get("enabled"))
        if check_mode:
            result.update(changed=bool(plan["to_create"]) or fsr_changed, volumes=plan["existing"], created=[],
                          msg="check mode: %d of %d members would be created in %s, %d exist"
                          % (len(plan["to_create"]), plan["member_count"], az, len(plan["existing"])))
            return result
        result.update(create_missing(client, plan, wait=wait, wait_timeout=wait_timeout))
        result["changed"] = bool(result["created"]) or fsr_changed
        return result
    except StillpointError as e:
        for key, value in result.items():
            e.details.setdefault(key, value)
        e.details["changed"] = bool(e.details.get("created"))
        raise


def same_snapshot_proof(client, set_id, volume_ids):
    """Prove that ``volume_ids`` (two or more: the two sides of a mirror) were all created from one
    snapshot of the complete backup set ``set_id``: what skipping a mirror's initial resync needs.

    Returns ``{"same_snapshot": True, "set_id", "snapshot_id", "member_index", "volumes"}``; raises
    :class:`StillpointError` saying which volume breaks the proof.
    """
    volume_ids = list(dict.fromkeys(volume_ids or ()))
    if len(volume_ids) < 2:
        raise StillpointError("the proof needs the backing volumes of both sides of the mirror (got %s)"
                              % (volume_ids or "none"))
    rec = load_set(client, set_id)
    found = {v["VolumeId"]: v for v in describe_volumes(client, volume_ids=volume_ids)}
    missing = [v for v in volume_ids if v not in found]
    if missing:
        raise StillpointError("volumes %s do not exist (DescribeVolumes): nothing proves where their data came from"
                              % ", ".join(missing), volume_ids=volume_ids)
    sources = {v: found[v].get("SnapshotId") or None for v in volume_ids}
    members = {m["snapshot_id"]: m["index"] for m in rec["members"]}
    foreign = ["%s (from %s)" % (v, s or "no snapshot") for v, s in sources.items() if s not in members]
    if foreign:
        raise StillpointError(
            "volumes %s were not created from a snapshot of backup set %s (its snapshots: %s): the two sides are "
            "not proved identical" % (", ".join(foreign), set_id, ", ".join(sorted(members))),
            sources=sources, set_id=set_id)
    if len(set(sources.values())) != 1:
        raise StillpointError(
            "the volumes come from different snapshots of set %s (%s): the sides are not bit-identical"
            % (set_id, ", ".join("%s <- %s" % kv for kv in sorted(sources.items()))), sources=sources, set_id=set_id)
    snapshot_id = next(iter(sources.values()))
    return {"same_snapshot": True, "set_id": set_id, "snapshot_id": snapshot_id,
            "member_index": members[snapshot_id], "volumes": sources, "level": rec["level"]}
