# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Put the restored volumes of a backup set at the set's recorded device names on one instance.

:func:`plan_swap` is pure: from a DescribeInstances item, a catalog set record, the restored
volumes (member index -> volume id) and DescribeVolumes items it decides, per member, what to do
(``none``, ``attach``, ``replace``) or refuses. :func:`execute` makes the calls: all DetachVolume
first, then all AttachVolume, each batch issued at once and then waited for, and verifies the final
mapping with DescribeInstances. :func:`swap` is the whole procedure (read, plan, execute) used by
the module. Volumes are always selected by id, never by Name tag or device enumeration.

A re-run after an interruption at any point converges: a device that is free gets its volume, a
device that already holds its restored volume is left alone, a volume still detaching or attaching
from the earlier run is waited for, never detached or attached a second time.
"""

from __future__ import annotations

import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CREATOR
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import ms_since
from ansible_collections.stillpoint.snapshots.plugins.module_utils._ebs import describe_volumes

# Restore-side tag keys (shared with the restore; see the restore tag list of issue 3).
K_RESTORE_ID = catalog.PREFIX + "restore-id"
K_REPLACED_BY = catalog.PREFIX + "replaced-by"

# AttachVolume/DetachVolume are accepted for running and stopped instances only.
USABLE_INSTANCE_STATES = ("running", "stopped")
ACTIVE = ("attaching", "attached")  # attachment states that occupy a device
# a detach was requested: ``busy`` while the host still uses the device (EC2 waits for it to let go)
LEAVING = ("detaching", "busy")


def alias(device):
    """The other name of the same attachment point: ``/dev/sdf`` <-> ``/dev/xvdf`` (None if none)."""
    if not device:
        return None
    if device.startswith("/dev/sd"):
        return "/dev/xvd" + device[len("/dev/sd"):]
    if device.startswith("/dev/xvd"):
        return "/dev/sd" + device[len("/dev/xvd"):]
    return None


def new_volume_map(new_volumes):
    """``[{index, volume_id, ...}]`` (extra keys ignored) or ``{index: volume_id}`` -> ``{index: volume_id}``."""
    if isinstance(new_volumes, dict):
        items = [{"index": k, "volume_id": v} for k, v in new_volumes.items()]
    else:
        items = list(new_volumes or ())
    out, problems = {}, []
    for item in items:
        if not isinstance(item, dict):
            problems.append("volumes entry %r is not a mapping with index and volume_id" % (item,))
            continue
        index, vid = catalog.as_int(item.get("index")), item.get("volume_id")
        if index is None or not vid:
            problems.append("volumes entry %r needs an integer index and a volume_id" % (item,))
        elif index in out and out[index] != vid:
            problems.append("member %d is given twice (%s and %s)" % (index, out[index], vid))
        else:
            out[index] = vid
    seen = {}
    for index, vid in sorted(out.items()):
        if vid in seen:
            problems.append("volume %s is given for members %d and %d" % (vid, seen[vid], index))
        seen[vid] = index
    if problems:
        raise StillpointError("invalid restored volumes: %s" % "; ".join(problems), problems=problems)
    return out


def volumes_from_restore(volumes, set_id, restore_id):
    """Pick the volumes of one restore (DescribeVolumes items tagged ``stillpoint:restore-id``) by member index.

    Volumes being deleted are ignored. Two live volumes claiming one member, a volume without a
    member index, or a volume of another set are refused: a guess here would attach the wrong disk.
    """
    out, problems = {}, []
    for vol in volumes:
        tags = catalog.tags_of(vol)
        if tags.get(K_RESTORE_ID) != restore_id or vol.get("State") in ("deleting", "deleted"):
            continue
        vid = vol["VolumeId"]
        if tags.get(catalog.K_SET_ID) != set_id:
            problems.append("volume %s of restore %s comes from set %s, not %s"
                            % (vid, restore_id, tags.get(catalog.K_SET_ID) or "(no set-id tag)", set_id))
            continue
        index = catalog.as_int(tags.get(catalog.K_MEMBER))
        if index is None:
            problems.append("volume %s of restore %s has no %s tag" % (vid, restore_id, catalog.K_MEMBER))
        elif index in out:
            problems.append("member %d of restore %s has two volumes (%s and %s); delete the extra one"
                            % (index, restore_id, out[index], vid))
        else:
            out[index] = vid
    if problems:
        raise StillpointError("cannot tell which volumes restore %s made: %s" % (restore_id, "; ".join(problems)),
                              problems=problems)
    return out


def _occupancy(instance, volumes):
    """device -> {volume_id: state} for this instance, from its block device mappings and the volumes' attachments.

    The volumes' view wins (DescribeVolumes reports ``attaching``/``detaching`` precisely); a
    mapping entry is kept when its volume was not described.
    """
    iid = instance["InstanceId"]
    occ = {}
    described = set()
    for vol in volumes.values():
        for att in vol.get("Attachments") or []:
            if att.get("InstanceId") == iid and att.get("Device"):
                occ.setdefault(att["Device"], {})[vol["VolumeId"]] = att.get("State") or "attached"
                described.add(vol["VolumeId"])
    for bdm in instance.get("BlockDeviceMappings") or []:
        ebs_ = bdm.get("Ebs") or {}
        vid = ebs_.get("VolumeId")
        if vid and vid not in described and bdm.get("DeviceName"):
            occ.setdefault(bdm["DeviceName"], {})[vid] = ebs_.get("Status") or "attached"
    return occ


def _active_attachments(vol, instance_id=None):
    return [a for a in vol.get("Attachments") or [] if a.get("State") in ACTIVE
            and (instance_id is None or a.get("InstanceId") == instance_id)]


def _is_restored_copy(tags, set_id, index):
    """A volume restored from member ``index`` of set ``set_id`` (by any restore)."""
    return bool(tags.get(K_RESTORE_ID)) and tags.get(catalog.K_SET_ID) == set_id \
        and catalog.as_int(tags.get(catalog.K_MEMBER)) == index


def plan_swap(instance, record, new_volumes, describe_volumes_result, replace_unknown=False,
              allow_beside_source=False):
    """Decide the swap for one instance, or refuse.

    ``instance``: a DescribeInstances ``Instances[]`` item. ``record``: a set record of
    :func:`_catalog.group_sets` (members with ``index``, ``device``, ``source_volume``).
    ``new_volumes``: ``[{index, volume_id}]`` or ``{index: volume_id}``. ``describe_volumes_result``:
    DescribeVolumes ``Volumes`` items (or the whole response) for at least the new volumes, the
    volumes attached to the instance and the set's source volumes.

    Returns ``{instance_id, set_id, availability_zone, members: [{index, device, current,
    current_device, new, source, action, replaces}], detach: [...], attach: [...], wait_available,
    wait_attached, busy, replaced_before, changed}``; ``busy``: volumes whose earlier detach the host
    has not let go of (re-sent with Force only under ``force_detach``); raises :class:`StillpointError` listing every
    refusal (``problems``) when the swap must not happen.
    """
    if isinstance(describe_volumes_result, dict):
        describe_volumes_result = describe_volumes_result.get("Volumes", [])
    volumes = dict((v["VolumeId"], v) for v in describe_volumes_result or [])
    new = new_volume_map(new_volumes)
    iid = instance["InstanceId"]
    az = (instance.get("Placement") or {}).get("AvailabilityZone")
    set_id = record["set_id"]
    problems = []

    state = (instance.get("State") or {}).get("Name")
    if state not in USABLE_INSTANCE_STATES:
        problems.append("instance %s is %s; volumes can be attached only to a running or stopped instance"
                        % (iid, state or "in an unknown state"))
    if record.get("state") != "complete":
        problems.append("set %s is %s (%s); only a complete set is swapped in"
                        % (set_id, record.get("state"), "; ".join(record.get("problems") or []) or "no details"))

    members = sorted(record.get("members") or [], key=lambda m: (m.get("index") is None, m.get("index") or 0))
    indexes = [m.get("index") for m in members]
    count = record.get("member_count") or len(members)
    devices = [m.get("device") for m in members]
    if None in indexes or sorted(indexes) != list(range(count)):
        problems.append("set %s does not record members 0..%d exactly once" % (set_id, count - 1))
    for m in members:
        if not m.get("device"):
            problems.append("member %s of set %s has no recorded device name" % (m.get("index"), set_id))
    dup_dev = sorted(set(d for d in devices if d and (devices.count(d) > 1 or alias(d) in devices)))
    if dup_dev:
        problems.append("set %s records one device for several members: %s" % (set_id, ", ".join(dup_dev)))
    missing = [i for i in indexes if i is not None and i not in new]
    if missing:
        problems.append("no restored volume for member(s) %s of set %s; a swap never attaches part of a set "
                        "(restore every member first)" % (", ".join(str(i) for i in missing), set_id))
    extra = sorted(i for i in new if i not in indexes)
    if extra:
        problems.append("restored volumes given for member(s) %s, which set %s does not have"
                        % (", ".join(str(i) for i in extra), set_id))
    if problems and (missing or None in indexes):
        raise _refusal(iid, set_id, problems)

    occ = _occupancy(instance, volumes)
    root = instance.get("RootDeviceName")
    items, detach, attach, wait_available, wait_attached, busy = [], [], [], [], [], []
    for m in members:
        index, dev, src = m["index"], m["device"], m.get("source_volume")
        nid = new[index]
        nvol = volumes.get(nid)
        item = {"index": index, "device": dev, "current": None, "current_device": None, "new": nid,
                "source": src, "action": None, "replaces": None}
        items.append(item)
        prefix = "member %d (%s)" % (index, dev)

        # the restored volume itself
        if nvol is None:
            problems.append("%s: restored volume %s does not exist in this region" % (prefix, nid))
            continue
        ntags = catalog.tags_of(nvol)
        if ntags.get(catalog.K_SET_ID) and ntags[catalog.K_SET_ID] != set_id:
            problems.append("%s: volume %s was restored from set %s, not %s"
                            % (prefix, nid, ntags[catalog.K_SET_ID], set_id))
        if ntags.get(catalog.K_MEMBER) and catalog.as_int(ntags[catalog.K_MEMBER]) != index:
            problems.append("%s: volume %s is tagged as member %s, not %d"
                            % (prefix, nid, ntags[catalog.K_MEMBER], index))
        if nvol.get("AvailabilityZone") != az:
            problems.append("%s: restored volume %s is in %s but instance %s is in %s (AZ mismatch); restore the "
                            "set into %s" % (prefix, nid, nvol.get("AvailabilityZone"), iid, az, az))
        nstate = nvol.get("State")
        if nstate in ("error", "deleting", "deleted"):
            problems.append("%s: restored volume %s is in state %s" % (prefix, nid, nstate))
        n_here, n_bad = False, len(problems)
        for att in _active_attachments(nvol):
            if att.get("InstanceId") != iid:
                problems.append("%s: restored volume %s is attached to another instance, %s at %s; detach it there "
                                "first" % (prefix, nid, att.get("InstanceId"), att.get("Device")))
            elif att.get("Device") != dev:
                problems.append("%s: restored volume %s is attached to %s at %s, not at %s; detach it first"
                                % (prefix, nid, iid, att.get("Device"), dev))
            else:
                n_here = True
                if att.get("State") == "attaching":
                    wait_attached.append({"index": index, "volume_id": nid, "device": dev})
        if len(problems) > n_bad:
            continue
        if not n_here and (nstate == "creating" or any(a.get("State") in LEAVING for a in nvol.get("Attachments") or [])):
            wait_available.append(nid)  # becomes attachable by itself

        # what sits at the device now
        slot = dict(occ.get(dev) or {})
        slot_device = dev
        if not slot and alias(dev) in occ:
            slot, slot_device = dict(occ[alias(dev)]), alias(dev)
        leaving = [vid for vid, st in slot.items() if st in LEAVING]
        present = [vid for vid, st in slot.items() if st not in LEAVING]
        for vid in leaving:
            if vid != nid and vid not in wait_available:
                wait_available.append(vid)  # a detach already under way (an earlier, interrupted run)
                if slot[vid] == "busy":
                    busy.append({"index": index, "volume_id": vid, "device": slot_device})
        if n_here:
            item.update(current=nid, current_device=dev, action="none")
            continue
        if len(present) > 1:
            problems.append("%s: several volumes are attached at %s: %s" % (prefix, slot_device, ", ".join(sorted(present))))
            continue
        if not present:
            item["action"] = "attach"
            attach.append({"index": index, "volume_id": nid, "device": dev})
            continue
        cur = present[0]
        item.update(current=cur, current_device=slot_device)
        if cur == nid:
            problems.append("%s: restored volume %s is attached at %s, not at %s; detach it first"
                            % (prefix, nid, slot_device, dev))
            continue
        ctags = catalog.tags_of(volumes.get(cur) or {})
        if cur == src:
            kind = "source"
        elif _is_restored_copy(ctags, set_id, index):
            kind = "earlier-restore"
        elif replace_unknown:
            kind = "unknown"
        else:
            problems.append(
                "%s: %s holds %s, which is neither the set's source volume %s nor a restored copy of member %d of "
                "set %s; expected %s or %s there. Refusing to detach it (replace_unknown: true replaces it anyway)"
                % (prefix, slot_device, cur, src, index, set_id, src, nid))
            continue
        if slot_device == root and state == "running":
            problems.append("%s: %s is the root device of running instance %s; stop the instance to swap it"
                            % (prefix, slot_device, iid))
            continue
        item.update(action="replace", replaces=kind)
        detach.append({"index": index, "volume_id": cur, "device": slot_device, "replaced_by": nid, "kind": kind,
                       "ours": ctags.get(catalog.K_CREATOR) == CREATOR})
        attach.append({"index": index, "volume_id": nid, "device": dev})

    # a restored copy beside its own source (or another copy of the same member) on one host
    leaving_ids = set(d["volume_id"] for d in detach)
    remaining = {}
    for dev, slot in occ.items():
        for vid, st in slot.items():
            if st not in LEAVING and vid not in leaving_ids:
                remaining[vid] = dev
    if not allow_beside_source:
        for item in items:
            if item["action"] not in ("attach", "replace"):
                continue
            for vid, dev in sorted(remaining.items()):
                if dev == item["device"] or vid == item["new"]:
                    continue
                if vid == item["source"]:
                    what = "the set's source volume %s" % vid
                elif _is_restored_copy(catalog.tags_of(volumes.get(vid) or {}), set_id, item["index"]):
                    what = "%s, another restored copy of the same member," % vid
                else:
                    continue
                problems.append(
                    "member %d (%s): %s would stay attached to %s at %s while its restored copy %s is attached at %s: "
                    "both carry the same filesystem, LVM PV and md UUIDs. Detach %s first, or set "
                    "allow_beside_source: true" % (item["index"], item["device"], what, iid, dev, item["new"],
                                                   item["device"], vid))
    if problems:
        raise _refusal(iid, set_id, problems, items)

    new_ids = set(new.values())
    replaced_before = sorted(
        v["VolumeId"] for v in volumes.values()
        if catalog.tags_of(v).get(K_REPLACED_BY) in new_ids and v["VolumeId"] not in new_ids and v["VolumeId"] not in leaving_ids)
    return {
        "instance_id": iid,
        "set_id": set_id,
        "availability_zone": az,
        "members": items,
        "detach": detach,
        "attach": attach,
        "wait_available": wait_available,
        "wait_attached": wait_attached,
        "busy": busy,
        "replaced_before": replaced_before,
        "changed": bool(detach or attach),
    }


def _refusal(iid, set_id, problems, items=None):
    details = {"problems": problems}
    if items is not None:
        details["plan"] = items
    return StillpointError("refusing to swap set %s onto %s (nothing was detached or attached): %s"
                           % (set_id, iid, "; ".join(problems)), **details)


def mapping_before(plan):
    return dict((m["device"], m["current"]) for m in plan["members"])


def mapping_after(plan):
    return dict((m["device"], m["new"]) for m in plan["members"])


# --------------------------------------------------------------------------- EC2 calls

def find_set(client, set_id):
    records = ebs.catalog_sets(client, set_id=set_id)
    if not records:
        raise StillpointError("set %s is not in the catalog (no snapshot of this account carries it with the "
                              "%s marker); check set_id and region" % (set_id, catalog.K_CREATOR))
    return records[0]


def gather(client, instance_id, set_id, volumes=None, restore_id=None):
    """Read what :func:`plan_swap` needs. Returns ``(instance, record, new_volumes, described)``."""
    record = find_set(client, set_id)
    instance = ebs.describe_instance(client, instance_id)
    if restore_id:
        found = describe_volumes(client, filters=[{"Name": "tag:%s" % K_RESTORE_ID, "Values": [restore_id]}])
        new = volumes_from_restore(found, set_id, restore_id)
        if not new:
            raise StillpointError("no volume carries %s=%s; run the restore (ebs_volume_restore) first or check "
                                  "restore_id and region" % (K_RESTORE_ID, restore_id))
    else:
        new = new_volume_map(volumes)
    ids = set(new.values())
    ids.update(m.get("source_volume") for m in record["members"])
    for bdm in instance.get("BlockDeviceMappings") or []:
        ids.add((bdm.get("Ebs") or {}).get("VolumeId"))
    described = dict((v["VolumeId"], v) for v in describe_volumes(client, volume_ids=ids))
    if new:
        # volumes an earlier run marked and (maybe) detached: still detaching, or to delete
        for vol in describe_volumes(client, filters=[{"Name": "tag:%s" % K_REPLACED_BY, "Values": sorted(set(new.values()))}]):
            described.setdefault(vol["VolumeId"], vol)
    return instance, record, new, list(described.values())


def _volume_now(client, volume_id):
    vols = describe_volumes(client, volume_ids=[volume_id])
    return vols[0] if vols else None


def _detach(client, instance_id, d, force):
    kwargs = {"VolumeId": d["volume_id"], "InstanceId": instance_id, "Device": d["device"]}
    if force:
        kwargs["Force"] = True
    try:
        client.detach_volume(aws_retry=True, **kwargs)
    except ebs.aws_errors() as e:
        if ebs.error_code(e) in ("IncorrectState", "InvalidAttachment.NotFound"):
            vol = _volume_now(client, d["volume_id"])
            if vol is None or not [a for a in _active_attachments(vol, instance_id) if a.get("Device") == d["device"]]:
                return  # already leaving or gone (a retried request that had gone through)
        raise ebs.aws_error("DetachVolume %s from %s at %s failed" % (d["volume_id"], instance_id, d["device"]), e)


def _attach(client, instance_id, a):
    try:
        client.attach_volume(VolumeId=a["volume_id"], InstanceId=instance_id, Device=a["device"], aws_retry=True)
    except ebs.aws_errors() as e:
        if ebs.error_code(e) in ("VolumeInUse", "IncorrectState", "InvalidParameterValue"):
            vol = _volume_now(client, a["volume_id"])
            if vol is not None and [x for x in _active_attachments(vol, instance_id) if x.get("Device") == a["device"]]:
                return  # a retried request that had gone through
        raise ebs.aws_error("AttachVolume %s to %s at %s failed" % (a["volume_id"], instance_id, a["device"]), e)


def _describe_state(vol):
    if vol is None:
        return "gone"
    atts = ",".join("%s %s at %s" % (a.get("State"), a.get("InstanceId"), a.get("Device")) for a in vol.get("Attachments") or [])
    return "%s%s" % (vol.get("State"), " (%s)" % atts if atts else "")


def wait_volumes(client, volume_ids, done, what, timeout, interval, sleep=time.sleep, clock=time.monotonic):
    """:func:`_ebs.wait_volumes` until ``done(volume_id, volume_or_None)`` holds for every id (``done`` may
    raise to stop early); a timeout raises, saying where each volume is."""
    def all_done(view):
        verdicts = [done(vid, vol) for vid, vol in view.items()]  # every volume judged: any may raise
        return True if all(verdicts) else None

    finished, last = ebs.wait_volumes(client, volume_ids, all_done, timeout, interval, sleep, clock)
    if not finished:
        pending = [vid for vid, vol in last.items() if not done(vid, vol)]
        raise StillpointError(
            "timed out after %s s waiting for %s to %s (now: %s). Nothing was undone; re-run the swap to "
            "continue from here%s" % (timeout, ", ".join(pending), what,
                                      "; ".join("%s %s" % (v, _describe_state(last[v])) for v in pending),
                                      " (force_detach: true forces a detach the host does not release)"
                                      if what == "detach" else ""),
            waiting_for=pending)


def verify(client, plan):
    """Every recorded device holds its restored volume (DescribeInstances). Returns the mapping."""
    instance = ebs.describe_instance(client, plan["instance_id"])
    actual = dict((b.get("DeviceName"), (b.get("Ebs") or {}).get("VolumeId"))
                  for b in instance.get("BlockDeviceMappings") or [])
    mapping = dict((m["device"], actual.get(m["device"])) for m in plan["members"])
    wrong = ["%s holds %s, expected %s" % (m["device"], mapping[m["device"]] or "nothing", m["new"])
             for m in plan["members"] if mapping[m["device"]] != m["new"]]
    if wrong:
        raise StillpointError("after the swap, %s does not show the expected mapping: %s. Re-run the swap"
                              % (plan["instance_id"], "; ".join(wrong)), mapping=mapping)
    return mapping


def delete_replaced_volumes(client, plan, detached):
    """Delete replaced volumes that carry our creator marker and are available; never any other."""
    candidates = list(dict.fromkeys(list(detached) + list(plan.get("replaced_before") or [])))
    deleted, kept = [], []
    if not candidates:
        return deleted, kept
    for vol in describe_volumes(client, volume_ids=candidates):
        vid = vol["VolumeId"]
        tags = catalog.tags_of(vol)
        if tags.get(catalog.K_CREATOR) != CREATOR:
            kept.append({"volume_id": vid, "reason": "not created by stillpoint.snapshots: never deleted"})
        elif vol.get("State") != "available":
            kept.append({"volume_id": vid, "reason": "not available (%s)" % _describe_state(vol)})
        else:
            try:
                client.delete_volume(VolumeId=vid, aws_retry=True)
                deleted.append(vid)
            except ebs.aws_errors() as e:
                if ebs.error_code(e) != "InvalidVolume.NotFound":
                    kept.append({"volume_id": vid, "reason": ebs.aws_error("DeleteVolume failed", e).msg})
    return deleted, kept


def execute(client, plan, force_detach=False, delete_replaced=False, poll_interval=1.0, detach_timeout=300.0,
            attach_timeout=300.0, sleep=time.sleep, clock=time.monotonic):
    """Carry out a plan of :func:`plan_swap`. Returns ``{changed, detached, attached, mapping, downtime_ms,
    detach_ms, attach_ms, deleted, kept_replaced}``.

    Each volume to detach is first tagged ``stillpoint:replaced-by`` (outside the downtime, so that
    a re-run after a crash still knows it). Then every DetachVolume is issued, then every detached
    volume is waited for (``available``), then every AttachVolume is issued, then every attachment
    is waited for (``attached`` at the right device), then DescribeInstances must show each
    recorded device holding its restored volume. ``downtime_ms`` runs from the first DetachVolume
    request (or the first AttachVolume when nothing had to be detached) to the last attachment
    confirmed, on the monotonic clock.
    """
    iid = plan["instance_id"]
    out = {"changed": False, "detached": [], "attached": [], "mapping": None, "downtime_ms": 0.0,
           "detach_ms": 0.0, "attach_ms": 0.0, "deleted": [], "kept_replaced": []}

    def progress(msg):
        def add(err):
            err.details.setdefault("detached", list(out["detached"]))
            err.details.setdefault("attached", list(out["attached"]))
            err.msg = "%s: %s" % (msg, err.msg)
            return err
        return add

    for d in plan["detach"]:
        ebs.tag(client, [d["volume_id"]], {K_REPLACED_BY: d["replaced_by"]})

    t_first = t_detach = None
    try:
        if plan["detach"]:
            t_first = t_detach = clock()
            for d in plan["detach"]:
                _detach(client, iid, d, force_detach)
                out["detached"].append(d["volume_id"])
                out["changed"] = True
        if force_detach:
            for d in plan.get("busy") or []:  # an earlier detach the host never released
                if t_first is None:
                    t_first = t_detach = clock()
                _detach(client, iid, d, True)
                out["detached"].append(d["volume_id"])
                out["changed"] = True
        leaving = [d["volume_id"] for d in plan["detach"]] + list(plan["wait_available"])
        if leaving:
            wait_volumes(client, leaving, lambda vid, vol: vol is None or vol.get("State") == "available",
                         "detach", detach_timeout, poll_interval, sleep, clock)
        if t_detach is not None:
            out["detach_ms"] = ms_since(t_detach, clock())
    except StillpointError as e:
        raise progress("swap on %s stopped while detaching" % iid)(e)

    def attached(vid, vol):
        want = targets[vid]
        if vol is None:
            raise StillpointError("volume %s disappeared while being attached at %s" % (vid, want))
        for att in vol.get("Attachments") or []:
            if att.get("State") in ACTIVE and (att.get("InstanceId") != iid or att.get("Device") != want):
                raise StillpointError("volume %s got attached to %s at %s instead of %s at %s"
                                      % (vid, att.get("InstanceId"), att.get("Device"), iid, want))
            if att.get("State") == "attached":
                return True
        return False

    targets = dict((a["volume_id"], a["device"]) for a in plan["attach"] + plan["wait_attached"])
    t_attach = None
    try:
        if plan["attach"]:
            t_attach = clock()
            if t_first is None:
                t_first = t_attach
            for a in plan["attach"]:
                _attach(client, iid, a)
                out["attached"].append(a["volume_id"])
                out["changed"] = True
        if targets:
            wait_volumes(client, list(targets), attached, "attach", attach_timeout, poll_interval, sleep, clock)
        t_end = clock()
        if t_attach is not None:
            out["attach_ms"] = ms_since(t_attach, t_end)
        if t_first is not None:
            out["downtime_ms"] = ms_since(t_first, t_end)
        if out["changed"] or targets or leaving:
            out["mapping"] = verify(client, plan)
        else:
            out["mapping"] = mapping_after(plan)  # planning saw every device holding its volume
    except StillpointError as e:
        raise progress("swap on %s stopped while attaching" % iid)(e)

    if delete_replaced:
        out["deleted"], out["kept_replaced"] = delete_replaced_volumes(client, plan, out["detached"])
        if out["deleted"]:
            out["changed"] = True
    return out


def swap(client, instance_id, set_id, volumes=None, restore_id=None, replace_unknown=False, allow_beside_source=False,
         check_mode=False, diff=True, **execute_args):
    """ebs_volume_swap: read, plan, and (unless ``check_mode``) execute. Returns the module's result (its
    ``diff`` only with ``diff``); a failure raises with ``instance_id``, ``set_id`` and ``changed``."""
    try:
        result = _swap(client, instance_id, set_id, volumes, restore_id, replace_unknown, allow_beside_source,
                       check_mode, **execute_args)
    except StillpointError as e:
        for key, value in (("changed", False), ("instance_id", instance_id), ("set_id", set_id)):
            e.details.setdefault(key, value)
        raise
    if not diff:
        result.pop("diff")
    return result


def _swap(client, instance_id, set_id, volumes, restore_id, replace_unknown, allow_beside_source, check_mode,
          **execute_args):
    if bool(volumes) == bool(restore_id):
        raise StillpointError("give the restored volumes either as volumes or as restore_id (exactly one)")
    if execute_args.get("poll_interval", 1.0) <= 0:
        raise StillpointError("poll_interval must be greater than 0")
    instance, record, new, described = gather(client, instance_id, set_id, volumes, restore_id)
    plan = plan_swap(instance, record, new, described, replace_unknown=replace_unknown,
                     allow_beside_source=allow_beside_source)
    result = {
        "instance_id": instance_id,
        "set_id": set_id,
        "plan": plan["members"],
        "diff": {"before": {"mapping": mapping_before(plan)}, "after": {"mapping": mapping_after(plan)}},
    }
    if check_mode:
        would_delete = []
        if execute_args.get("delete_replaced"):
            by_id = dict((v["VolumeId"], v) for v in described)
            would_delete = [d["volume_id"] for d in plan["detach"] if d["ours"]] + [
                vid for vid in plan["replaced_before"]
                if catalog.tags_of(by_id[vid]).get(catalog.K_CREATOR) == CREATOR and by_id[vid].get("State") == "available"]
        result.update(changed=plan["changed"] or bool(would_delete), detached=[d["volume_id"] for d in plan["detach"]],
                      attached=[a["volume_id"] for a in plan["attach"]], mapping=mapping_after(plan),
                      downtime_ms=0.0, detach_ms=0.0, attach_ms=0.0, deleted=would_delete, kept_replaced=[])
        return result
    result.update(execute(client, plan, **execute_args))
    return result
