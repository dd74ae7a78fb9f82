# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore drills: scratch volumes from a complete set on a scratch instance, their removal, the verdict.

A drill proves that a backup set restores (seed 003's column: a backup that cannot be read when it is
needed is worse than none). The role ``restore_drill`` composes it; this library holds the EC2 side:

* :func:`create_scratch`: one volume per member of a complete set in the scratch instance's zone, each
  tagged from its ``CreateVolume`` call on with ``stillpoint:drill-of=<set id>`` and
  ``stillpoint:drill-instance=<scratch instance>``, then attached to the scratch instance at free device
  names (a name in use is never taken: nothing of the scratch instance is ever detached). Refuses the
  set's own source instance (DOMAIN.md refusal 12) and a scratch instance with drill leftovers.
* :func:`find_scratch` / :func:`remove_scratch`: the drill volumes of a scratch instance (any set), and
  their removal (detach from the scratch instance, delete). A volume attached anywhere else is refused.
* :func:`verdict` / :func:`record_verdict`: the verdict JSON (``stillpoint:drill``) on every member
  snapshot of the set.
* :func:`clone_maps`, :func:`free_devices`, :func:`plan_removal`, :func:`stale_chunks`: pure helpers.

Raises :class:`StillpointError`; never exits.
"""

from __future__ import annotations

import hashlib
import posixpath
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CREATOR
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

K_DRILL_OF = catalog.PREFIX + "drill-of"  # on scratch volumes: the set they were restored from
K_DRILL_INSTANCE = catalog.PREFIX + "drill-instance"  # on scratch volumes: the scratch instance
K_DRILL = catalog.K_DRILL  # on member snapshots: the last verdict (JSON)

RESULTS = ("pass", "fail")
DEFAULT_ROOT = "/mnt/stillpoint-drill"
# Device names a drill attaches at, in order; a name the instance uses (or its xvd/sd alias) is skipped.
DEVICE_CANDIDATES = tuple("/dev/sd%s" % c for c in "fghijklmnopqrstuvwxyz")
LIVE_STATES = ("creating", "available", "in-use", "error")


# --------------------------------------------------------------------------- pure parts

def drill_restore_id(set_id, availability_zone, instance_id):
    """The restore id of a drill's volumes (``dr-`` + 12 hex digits), never an array_restore id."""
    text = "drill|%s|%s|%s" % (set_id, availability_zone, instance_id)
    return "dr-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def clone_maps(layout, set_id, root=DEFAULT_ROOT):
    """``{mountpoint_map, vg_map, md_map}`` for array_host's import_clone: every filesystem under
    ``<root>/<set id><recorded mountpoint>``, volume groups ``<vg>_drill``, md arrays ``/dev/md/<name>_drill``."""
    if not isinstance(root, str) or not root.startswith("/") or posixpath.normpath(root) == "/":
        raise StillpointError("the drill root must be an absolute directory other than /, not %r" % (root,))
    if not catalog.SET_ID_RE.match(set_id or ""):
        raise StillpointError("%r is not a backup set id (bs-YYYYMMDDTHHMMSSZ-xxxxxx)" % (set_id,))
    base = posixpath.join(posixpath.normpath(root), set_id)
    layout = layout or {}
    mp_map, vg_map, md_map = {}, {}, {}
    for fs in layout.get("filesystems") or []:
        mp = posixpath.normpath((fs or {}).get("mountpoint") or "")
        if mp.startswith("/"):
            mp_map[mp] = base + ("" if mp == "/" else mp)
    for vg in layout.get("lvm") or []:
        if isinstance(vg, dict) and isinstance(vg.get("vg"), str):
            vg_map[vg["vg"]] = vg["vg"] + "_drill"
    for md in layout.get("md") or []:
        if isinstance(md, dict) and isinstance(md.get("device"), str):
            md_map[md["device"]] = "/dev/md/%s_drill" % posixpath.basename(md["device"])
    return {"mountpoint_map": mp_map, "vg_map": vg_map, "md_map": md_map, "root": base}


def _names(device):
    names = {device}
    if device.startswith("/dev/sd"):
        names.add("/dev/xvd" + device[len("/dev/sd"):])
    elif device.startswith("/dev/xvd"):
        names.add("/dev/sd" + device[len("/dev/xvd"):])
    return names


def used_devices(instance, volumes=()):
    """Device names the instance uses: its block device mappings, its root device, and any attachment of
    ``volumes`` (DescribeVolumes items) to it, with their sd/xvd aliases."""
    used = set()
    iid = instance.get("InstanceId")
    for bdm in instance.get("BlockDeviceMappings") or []:
        if bdm.get("DeviceName"):
            used |= _names(bdm["DeviceName"])
    if instance.get("RootDeviceName"):
        used |= _names(instance["RootDeviceName"])
    for vol in volumes:
        for att in vol.get("Attachments") or []:
            if att.get("InstanceId") == iid and att.get("Device") and att.get("State") != "detached":
                used |= _names(att["Device"])
    return used


def free_devices(used, count, candidates=DEVICE_CANDIDATES):
    """The first ``count`` candidate names not in ``used`` (aliases counted); refuses when too few are free."""
    free = [d for d in candidates if not (_names(d) & set(used))]
    if len(free) < count:
        raise StillpointError(
            "the scratch instance has %d free device names of %s for %d volumes (in use: %s); the drill never "
            "detaches anything of the scratch instance. Free some, or use another scratch instance"
            % (len(free), ", ".join(candidates), count, ", ".join(sorted(used)) or "none"))
    return free[:count]


def plan_removal(volumes, instance_id):
    """What removing drill volumes takes: ``[{volume_id, set_id, action, device, state}]``.

    ``action``: ``detach`` (attached to the scratch instance, then deleted), ``delete`` (not attached),
    ``wait`` (still creating, deleted once available) or ``refuse`` (attached to another instance: a
    drill never touches another instance, a human must look)."""
    out = []
    for vol in sorted(volumes, key=lambda v: v["VolumeId"]):
        tags = catalog.tags_of(vol)
        live = [a for a in vol.get("Attachments") or [] if a.get("State") in ("attaching", "attached", "busy")]
        entry = {"volume_id": vol["VolumeId"], "set_id": tags.get(K_DRILL_OF), "state": vol.get("State"),
                 "device": None, "action": "delete"}
        elsewhere = [a for a in live if a.get("InstanceId") != instance_id]
        mine = [a for a in live if a.get("InstanceId") == instance_id]
        if elsewhere:
            entry.update(action="refuse", attached_to=elsewhere[0].get("InstanceId"), device=elsewhere[0].get("Device"))
        elif mine:
            entry.update(action="detach", device=mine[0].get("Device"))
        elif vol.get("State") == "creating":
            entry["action"] = "wait"
        elif vol.get("State") == "in-use":  # detaching
            entry["action"] = "wait"
        out.append(entry)
    return out


def verdict(set_id, result, rto_s, checks, instance_id, region=None, verified_at=None, phases=None):
    """The verdict of a drill as recorded on the set (``stillpoint:drill``): compact keys, one tag if it fits."""
    if result not in RESULTS:
        raise StillpointError("result must be one of %s, not %r" % (", ".join(RESULTS), result))
    if not catalog.SET_ID_RE.match(set_id or ""):
        raise StillpointError("%r is not a backup set id" % (set_id,))
    out = {"set": set_id, "result": result, "verified_at": verified_at or catalog.utc_iso(),
           "rto_s": None if rto_s is None else round(float(rto_s), 1),
           "checks": dict((str(k), str(v)) for k, v in sorted((checks or {}).items())),
           "instance": instance_id or None}
    if region:
        out["region"] = region
    if phases:
        out["phases"] = dict((str(k), round(float(v), 2)) for k, v in phases.items() if v is not None)
    return out


def verdict_tags(value):
    """``{tag: chunk}`` of a verdict (:func:`_catalog.encode_json`, each chunk checked)."""
    tags = catalog.encode_json(K_DRILL, value, what="drill verdict")
    for key, chunk in tags.items():
        catalog.check_tag_value(key, chunk)
    return tags


def stale_chunks(current_tags, new_tags):
    """Chunk keys (``stillpoint:drill.N``) of an earlier, longer verdict that the new one does not write."""
    prefix = K_DRILL + "."
    return sorted(k for k in current_tags if k.startswith(prefix) and k not in new_tags)


# --------------------------------------------------------------------------- EC2

def find_scratch(client, instance_id, set_id=None):
    """Drill volumes made for ``instance_id`` (any set, or ``set_id`` only) that still exist; ours only."""
    filters = [{"Name": "tag:%s" % K_DRILL_INSTANCE, "Values": [instance_id]},
               {"Name": "status", "Values": list(LIVE_STATES)}]
    if set_id:
        filters.append({"Name": "tag:%s" % K_DRILL_OF, "Values": [set_id]})
    vols = ebs.describe_volumes(client, filters)
    return [v for v in vols if catalog.tags_of(v).get(K_DRILL_OF) and catalog.tags_of(v).get(catalog.K_CREATOR) == CREATOR]


def leftover_sets(client, removal, root=DEFAULT_ROOT):
    """``[{set_id, layout, mountpoint_map, vg_map, md_map}]`` of the sets of leftover volumes: what the host
    side needs to take their copies down (array_host state=down with import_clone)."""
    out = []
    for sid in sorted(set(e["set_id"] for e in removal if e.get("set_id"))):
        recs = ebs.catalog_sets(client, set_id=sid)
        layout = (recs[0].get("array") if recs else None) or {}
        maps = clone_maps(layout, sid, root) if catalog.SET_ID_RE.match(sid) else {
            "mountpoint_map": {}, "vg_map": {}, "md_map": {}}
        out.append(dict(maps, set_id=sid, layout=layout))
    return out


def _wait(client, ids, done, what, timeout, interval, sleep, clock):
    ok, view = ebs.wait_volumes(client, ids, lambda v: True if all(done(x) for x in v.values()) else None,
                                timeout, interval, sleep, clock)
    if not ok:
        raise StillpointError("timed out after %s s waiting for %s to %s (now: %s)" % (
            timeout, ", ".join(ids), what, "; ".join("%s %s" % (k, (v or {}).get("State", "gone"))
                                                     for k, v in view.items())), waiting_for=ids)
    return view


def remove_scratch(client, instance_id, set_id=None, root=DEFAULT_ROOT, check_mode=False, timeout=300.0,
                   interval=1.0, sleep=time.sleep, clock=time.monotonic):
    """Detach the drill volumes of ``instance_id`` from it and delete them (all sets, or ``set_id`` only).

    Refuses, before any change, a drill volume attached to another instance. Returns ``{changed, plan,
    removed, sets, elapsed_s}`` (``sets``: :func:`leftover_sets`)."""
    t0 = clock()
    vols = find_scratch(client, instance_id, set_id)
    plan = plan_removal(vols, instance_id)
    result = {"changed": False, "plan": plan, "removed": [], "sets": leftover_sets(client, plan, root)}
    refused = [e for e in plan if e["action"] == "refuse"]
    if refused:
        raise StillpointError(
            "drill volume(s) attached to another instance than the scratch instance %s: %s. A drill never touches "
            "another instance; nothing was changed. A human must check them" % (instance_id, ", ".join(
                "%s at %s of %s" % (e["volume_id"], e["device"], e["attached_to"]) for e in refused)), plan=plan)
    if check_mode or not plan:
        result["changed"] = bool(plan)
        return result
    detach = [e for e in plan if e["action"] == "detach"]
    for e in detach:
        try:
            client.detach_volume(VolumeId=e["volume_id"], InstanceId=instance_id, Device=e["device"], aws_retry=True)
        except ebs.aws_errors() as exc:
            if ebs.error_code(exc) not in ("IncorrectState", "InvalidAttachment.NotFound"):
                raise ebs.aws_error("DetachVolume %s from %s at %s" % (e["volume_id"], instance_id, e["device"]), exc)
    ids = [e["volume_id"] for e in plan]
    _wait(client, ids, lambda v: v is None or v.get("State") in ("available", "error", "deleting", "deleted"),
          "be detached (available)", timeout, interval, sleep, clock)
    for vid in ids:
        try:
            client.delete_volume(VolumeId=vid, aws_retry=True)
        except ebs.aws_errors() as exc:
            if ebs.error_code(exc) != "InvalidVolume.NotFound":
                raise ebs.aws_error("DeleteVolume %s" % vid, exc)
        result["removed"].append(vid)
    result.update(changed=True, elapsed_s=round(clock() - t0, 3))
    return result


def create_scratch(client, set_id, instance_id, volume_type="gp3", root=DEFAULT_ROOT, candidates=DEVICE_CANDIDATES,
                   check_mode=False, timeout=900.0, interval=1.0, sleep=time.sleep, clock=time.monotonic, wall=time.time):
    """Restore ``set_id`` onto the scratch instance: create, then attach at free device names.

    Returns ``{changed, set, availability_zone, restore_id, volumes: [{index, volume_id, device (where
    attached), recorded_device, snapshot_id}], started_at (epoch of the first CreateVolume call),
    phases: {create_s, attach_s}, clone: clone_maps}``; in check mode the plan only."""
    rec = restore.load_set(client, set_id)
    if rec.get("instance_id") and rec["instance_id"] == instance_id:
        raise StillpointError(
            "refusing to drill set %s onto %s: it is the set's source instance. A drill never touches the source "
            "instance or its volumes; name a scratch instance" % (set_id, instance_id), set_id=set_id)
    inst = ebs.describe_instance(client, instance_id)
    az = (inst.get("Placement") or {}).get("AvailabilityZone")
    leftovers = find_scratch(client, instance_id)
    if leftovers:
        raise StillpointError(
            "the scratch instance %s still has drill volumes (%s): remove them first (drill_scratch state=absent); "
            "nothing was created" % (instance_id, ", ".join(sorted(v["VolumeId"] for v in leftovers))))
    rid = drill_restore_id(set_id, az, instance_id)
    plan = restore.plan_restore(rec, {}, az, volume_type=volume_type, restore_id=rid, instance_id=instance_id)
    attached_now = ebs.describe_volumes(client, [{"Name": "attachment.instance-id", "Values": [instance_id]}])
    devices = free_devices(used_devices(inst, attached_now), len(plan["to_create"]), candidates)
    extra = [{"Key": K_DRILL_OF, "Value": set_id}, {"Key": K_DRILL_INSTANCE, "Value": instance_id}]
    for entry in plan["to_create"]:
        entry["request"]["TagSpecifications"][0]["Tags"].extend(extra)
    maps = clone_maps(rec.get("array") or {}, set_id, root)
    result = {"changed": bool(plan["to_create"]), "set": rec, "availability_zone": az, "restore_id": rid,
              "clone": maps, "volumes": [{"index": e["index"], "snapshot_id": e["snapshot_id"], "volume_id": None,
                                          "device": d, "recorded_device": e["device"]}
                                         for e, d in zip(plan["to_create"], devices)]}
    if check_mode:
        return result
    started_at = wall()
    t0 = clock()
    made = restore.create_missing(client, plan, wait=True, wait_timeout=timeout, interval=interval, sleep=sleep,
                                  clock=clock)
    t1 = clock()
    by_index = dict((v["index"], v["volume_id"]) for v in made["volumes"])
    for entry in result["volumes"]:
        entry["volume_id"] = by_index[entry["index"]]
    for entry in result["volumes"]:
        try:
            client.attach_volume(VolumeId=entry["volume_id"], InstanceId=instance_id, Device=entry["device"],
                                 aws_retry=True)
        except ebs.aws_errors() as exc:
            raise ebs.aws_error("AttachVolume %s to %s at %s (the volumes stay tagged %s=%s; a re-run removes "
                                "them first)" % (entry["volume_id"], instance_id, entry["device"], K_DRILL_OF, set_id),
                                exc)

    def attached(vol):
        return vol is not None and any(a.get("InstanceId") == instance_id and a.get("State") == "attached"
                                       for a in vol.get("Attachments") or [])
    _wait(client, [e["volume_id"] for e in result["volumes"]], attached, "be attached", timeout, interval, sleep, clock)
    result.update(started_at=started_at, phases={"create_s": round(t1 - t0, 3), "attach_s": round(clock() - t1, 3)},
                  created=made["created"])
    return result


def record_verdict(client, set_id, value, check_mode=False):
    """Tag every member snapshot of ``set_id`` with the verdict ``value`` (:func:`verdict`); stale chunks of an
    earlier verdict are removed. Returns ``{changed, snapshot_ids, tags, removed_keys}``."""
    if value.get("set") != set_id:
        raise StillpointError("the verdict names set %s, not %s" % (value.get("set"), set_id))
    snaps = ebs.catalog_snapshots(client, set_id=set_id)
    snaps = [s for s in snaps if catalog.tags_of(s).get(catalog.K_SET_ID) == set_id]
    if not snaps:
        raise StillpointError("backup set %s is not in the catalog of this region: no verdict recorded" % set_id)
    tags = verdict_tags(value)
    ids = sorted(s["SnapshotId"] for s in snaps)
    stale = sorted(set(k for s in snaps for k in stale_chunks(catalog.tags_of(s), tags)))
    same = all(all(catalog.tags_of(s).get(k) == v for k, v in tags.items()) for s in snaps) and not stale
    out = {"changed": not same, "snapshot_ids": ids, "tags": tags, "removed_keys": stale}
    if same or check_mode:
        return out
    ebs.tag(client, ids, tags)
    if stale:
        try:
            client.delete_tags(Resources=ids, Tags=[{"Key": k} for k in stale], aws_retry=True)
        except ebs.aws_errors() as exc:
            raise ebs.aws_error("DeleteTags %s (%s)" % (", ".join(ids), ", ".join(stale)), exc)
    return out
