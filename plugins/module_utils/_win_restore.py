# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Windows host steps of a restore (``win_array_host``): disks found by EBS volume id, taken offline
before the swap, brought back after it.

The PowerShell on the host only gathers and runs fixed command forms (roles/windows_ebs_disk/files:
``Get-EbsArrayDisks.ps1`` reads Get-Disk and diskpart's ``list disk`` / ``list volume`` / ``detail disk`` /
``detail volume``; ``Set-EbsArrayDisks.ps1`` runs one list of steps, each disk re-found by its NVMe serial, or on a
Xen instance by its PV location). Everything that decides is here, tested without Windows:

* :func:`parse_list_volume`, :func:`parse_selected_volumes`, :func:`host_facts`: the parsers;
* :func:`xen_instance`, :func:`host_facts`: a Xen PV disk (no volume id in its serial) is mapped by its location
  (bus 0, target N, LUN 0 -> device name, AWS's table in :mod:`_vss`) through the block device mappings of the
  instance, read fresh from EC2 (DescribeInstances, by the action plugin) at every gather; the instance is the one
  the host's own metadata names, and it must be the one the restore targets. Every step on such a disk carries its
  location; the mappings are read again right before the steps are sent (:func:`_apply`) and the PowerShell finds
  the disk at that location right before each change. Refused, never guessed: no instance id from the metadata, a
  device name in no mapping or in two, two disks at one location, a volume at a device name the table gives no
  EBS location (instance store ``xvdca``..``xvdcl``, ``/dev/sdf``...), a restored volume not at its location in time;
* :func:`plan_down`: the disks of the volumes about to be detached, offline (never the system disk); a copy
  beside its source refused before anything changes unless ``import_clone``;
* :func:`plan_up`: one round of steps from what the host holds now - a new signature for a copy that collides
  with its source (only with ``import_clone``), ``online disk``, ``attributes disk clear readonly``, ``import``
  of a foreign dynamic pack, then each recorded volume's drive letter or mount folder given back;
* :func:`up`, :func:`down`: the procedures (gather, plan, apply, gather again until nothing is left),
  ``chkdsk`` without ``/f`` (read-only) as the verification.

Nothing here exits; failures are StillpointError. Command lines and their sources: docs/windows-vss.md.
"""

from __future__ import annotations

import re
import time
import uuid

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

GATHER = "Get-EbsArrayDisks.ps1"
APPLY = "Set-EbsArrayDisks.ps1"
MAX_ROUNDS = 6
LETTER_RE = re.compile(r"^[A-Za-z]:\\$")
# chkdsk's documented exit codes (Microsoft Learn, chkdsk): 0 no errors found; 1 errors found and fixed;
# 2 disk cleanup performed, or not performed because /f was not given; 3 could not check the disk, or errors
# not fixed because /f was not given
CHKDSK_RC = {0: "no errors found", 1: "errors found and fixed", 2: "cleanup not performed (no /f)",
             3: "errors found, not fixed (read-only check) or the disk could not be checked"}


# --------------------------------------------------------------------------- parsers

def parse_list_volume(text):
    """diskpart's ``list volume`` table (the first volume table of ``text``) -> ``[{"number", "letter", "label",
    "fs", "type", "size", "status", "info"}]`` (:func:`_vss.parse_volume_rows`)."""
    return vss.parse_volume_rows(text, first_table=True)


def parse_selected_volumes(text):
    """One diskpart run of ``select volume N`` + ``detail volume`` per volume -> ``{N: [disk numbers]}``."""
    parts = re.split(r"^\s*Volume (\d+) is the selected volume\.\s*$", text or "", flags=re.M)
    out = {}
    for i in range(1, len(parts) - 1, 2):
        out[int(parts[i])] = [r["number"] for r in vss.parse_disk_rows(parts[i + 1])]
    return out


def parse_partition_details(text):
    """One diskpart run of ``select disk N`` + ``select partition P`` + ``detail partition`` per partition ->
    ``{(N, P): {"offset": bytes or None, "volumes": [volume numbers]}}`` (the volume table of ``detail partition``
    lists the volume on that partition)."""
    out = {}
    disk = None
    key = None
    block = {}
    for line in (text or "").splitlines():
        m = re.match(r"^\s*Disk (\d+) is now the selected disk\.\s*$", line)
        if m:
            disk, key = int(m.group(1)), None
            continue
        m = re.match(r"^\s*Partition (\d+) is now the selected partition\.\s*$", line)
        if m and disk is not None:
            key = (disk, int(m.group(1)))
            block[key] = []
            continue
        if key is not None:
            block[key].append(line)
    for key, lines in block.items():
        text = "\n".join(lines)
        m = re.search(r"^\s*Offset in Bytes\s*:\s*(\d+)\s*$", text, flags=re.M)
        out[key] = {"offset": int(m.group(1)) if m else None,
                    "volumes": [v["number"] for v in vss.parse_volume_rows(text)]}
    return out


def _partitions(raw, text):
    """``{disk number: {partition number: {"offset", "letter", "dp_offset", "volumes"}}}``: Get-Partition's records of
    the disks the gather script was asked about (``PartitionDisk``) beside diskpart's ``detail partition`` of each."""
    details = parse_partition_details(text)
    out = {}
    for p in raw.get("partitions") or []:
        key = (int(p.get("DiskNumber")), int(p.get("PartitionNumber")))
        dp = details.get(key) or {}
        out.setdefault(key[0], {})[key[1]] = {
            "offset": p.get("Offset"), "letter": (p.get("DriveLetter") or None), "dp_offset": dp.get("offset"),
            "volumes": dp.get("volumes") or []}
    return out


def normalize_path(path):
    """``E``, ``e:``, ``E:\\`` -> ``E:\\``; a mount folder ends in one backslash (as the catalog records them)."""
    return vss.normalize_member(path)


def diskpart_target(path):
    """How diskpart names a path: ``E`` for ``E:\\``, ``C:\\mnt\\data`` for a mount folder."""
    p = normalize_path(path)
    return p[0] if LETTER_RE.match(p) else p.rstrip("\\")


def _pv_map(d, rec, instance, located, problems):
    """The volume id of Xen PV disk ``d`` (its record ``rec`` gets ``pv_target`` and ``device``), or None: a disk at no
    EBS location (instance store, another bus or LUN) is never acted on; one whose device name is in no mapping of
    ``instance`` or in two is a problem (``problems``). Two disks at one location raise."""
    try:
        device = vss.pv_device_name(d)
    except StillpointError as exc:
        rec["pv_note"] = exc.msg
        return None
    target = int(d.get("SCSITargetId"))
    if target in located:
        raise StillpointError("disks %d and %d are both at Xen PV bus 0, target %d, LUN 0 (device name %s): refusing to "
                              "guess which one it is; no step of this round was sent" % (located[target], rec["number"], target, device))
    located[target] = rec["number"]
    rec.update(pv_target=target, device=device)
    if instance is None:
        return None
    if instance.get("given") and vss.pv_target_of_device(device) not in [
            vss.pv_target_of_device(b.get("DeviceName")) for b in instance.get("BlockDeviceMappings") or []]:
        return None  # device names given by the caller: a disk at a location none of them names is not acted on
    try:
        return vss.pv_volume_id(d, instance)[0]
    except StillpointError as exc:
        problems.append("disk %d is not mapped to an EBS volume: %s" % (rec["number"], exc.msg))
        return None


def host_facts(raw, instance=None):
    """The gather script's output -> ``{"disks": {volume_id: {...}}, "others": [...], "volumes": [...],
    "paths": {path: volume number or None}, "instance_id", "imds_error", "computer_name", "xen", "pv_disks",
    "pv_problems"}``. ``instance``: DescribeInstances' record of the instance the host's metadata names, read
    for a host with Xen PV disks (:func:`xen_instance`); they are mapped through its block device mappings."""
    gets = dict((d.get("Number"), d) for d in raw.get("disks") or [])
    partitions = _partitions(raw, raw.get("diskpart_partitions"))
    located = {}
    pv_problems = []
    text = raw.get("diskpart") or ""
    rows = dict((r["number"], r) for r in vss.parse_disk_rows(text.split("Volume ###")[0]))
    by_number = {}
    disks = {}
    others = []
    for number, d in sorted(gets.items()):
        row = rows.get(number) or {}
        rec = {"number": number, "offline": bool(d.get("IsOffline")), "read_only": bool(d.get("IsReadOnly")),
               "offline_reason": d.get("OfflineReason") or None, "style": d.get("PartitionStyle"),
               "signature": d.get("Signature"), "guid": (d.get("Guid") or "").strip("{}").lower() or None,
               "boot": bool(d.get("IsBoot")) or bool(d.get("IsSystem")), "status": row.get("status") or "",
               "dynamic": bool(row.get("dynamic")), "partitions": partitions.get(number)}
        vid = vss.disk_volume_id(d)
        if vid is None and vss.is_pv_disk(d):
            vid = _pv_map(d, rec, instance, located, pv_problems)
        rec["volume_id"] = vid
        by_number[number] = rec
        if vid is None:
            others.append(rec)
        elif vid in disks:
            raise StillpointError("disks %d and %d %s EBS volume %s; refusing to guess"
                                  % (disks[vid]["number"], number, "map to" if "pv_target" in rec else
                                     "carry the serial of", vid))
        else:
            disks[vid] = rec
    on_disks = parse_selected_volumes(text)
    volumes = []
    for v in parse_list_volume(text):
        nums = on_disks.get(v["number"], [])
        v = dict(v, disk_numbers=nums, disks=[(by_number.get(n) or {}).get("volume_id") for n in nums], paths=[])
        volumes.append(v)
    paths = {}
    for path, res in (raw.get("diskpart_paths") or {}).items():
        detail = vss.parse_volume_detail((res or {}).get("output"))
        paths[normalize_path(path)] = detail["volume"] if (res or {}).get("rc") == 0 else None
    for path, number in paths.items():
        for v in volumes:
            if v["number"] == number and not LETTER_RE.match(path):
                v["paths"].append(path)
    pv_disks = [number for number, d in sorted(gets.items()) if vss.is_pv_disk(d)]
    return {"disks": disks, "others": others, "volumes": volumes, "paths": paths, "xen": bool(pv_disks),
            "pv_disks": pv_disks, "pv_problems": pv_problems,
            "instance_id": raw.get("instance_id"), "imds_error": raw.get("imds_error"),
            "computer_name": raw.get("computer_name")}


# --------------------------------------------------------------------------- Xen instances

def xen_instance(raw, params, describe):
    """The instance whose block device mappings map a Xen host's PV disks: the one the host's own instance metadata
    names (the gather script asks it whenever it sees a PV disk), which must be the instance the restore targets
    (``instance_id``, ``expect_instance_id``), read fresh with ``describe`` (DescribeInstances on the controller)."""
    pv = [d.get("Number") for d in raw.get("disks") or [] if vss.is_pv_disk(d)]
    host = raw.get("computer_name")
    got = raw.get("instance_id")
    if not got:
        raise StillpointError(
            "host %s has Xen PV disks (disk(s) %s: no EBS volume id in their serial number); they are mapped by their "
            "location through the block device mappings of the instance the host's metadata names, and its instance "
            "metadata did not answer (%s). Refusing, never guessed; no step of this round was sent."
            % (host, ", ".join(map(str, pv)), raw.get("imds_error") or "no answer"), pv_disks=pv)
    for key in ("instance_id", "expect_instance_id"):
        want = params.get(key)
        if want and got != want:
            raise StillpointError("host %s is instance %s, not the instance the restore targets (%s); its Xen PV disks "
                                  "would be mapped through another instance's block device mappings. No step of "
                                  "this round was sent." % (host, got, want), instance_id=got)
    if describe is None:
        raise StillpointError("host %s has Xen PV disks: mapping them needs the EC2 API (DescribeInstances of %s); "
                              "no step was sent" % (host, got))
    instance = describe(got)
    if (instance or {}).get("InstanceId") != got:
        raise StillpointError("DescribeInstances of %s answered for %s; no step was sent"
                              % (got, (instance or {}).get("InstanceId")))
    return instance


def _mappings_of(instance, volume_id):
    return [b for b in (instance or {}).get("BlockDeviceMappings") or []
            if (b.get("Ebs") or {}).get("VolumeId") == volume_id]


def pv_volume_problems(facts, instance, volume_ids, seen=False):
    """On a Xen host: the volumes of ``volume_ids`` attached to ``instance`` at a device name AWS's table gives no EBS
    location (their disk cannot be located: refused, never guessed); with ``seen``, also those attached where the
    host shows no disk (before the swap: the disk to take offline is not where the mappings say)."""
    if not facts.get("xen"):
        return []
    problems = []
    for vid in volume_ids:
        for b in _mappings_of(instance, vid):
            target = vss.pv_target_of_device(b.get("DeviceName"))
            if target is not None and seen and vid not in facts["disks"]:
                problems.append("volume %s is attached to %s at %s, but the host shows no Xen PV disk at target %d"
                                % (vid, instance.get("InstanceId"), b.get("DeviceName"), target))
            if target is None:
                problems.append(
                    "volume %s is attached to %s at %s: on a Xen instance AWS's table puts an EBS volume at /dev/sda1 or "
                    "xvdb..xvdz (PV targets 0..25; xvdca..xvdcl, targets 78..89, are the instance store), so its disk "
                    "cannot be located" % (vid, instance.get("InstanceId"), b.get("DeviceName")))
    return problems


def where_expected(instance, volume_id):
    """Where a volume's disk is looked for on a Xen host: ``xvdf (Xen PV target 5)``."""
    found = _mappings_of(instance, volume_id)
    if not found:
        return "in none of instance %s's block device mappings" % (instance or {}).get("InstanceId")
    return ", ".join("%s (Xen PV target %s)" % (b.get("DeviceName"), vss.pv_target_of_device(b.get("DeviceName")))
                     for b in found)


def locate(steps, facts):
    """Each step on a Xen PV disk gets that disk's location (``pv_target``; ``pv_targets`` beside a volume step's
    ``disks``): the PowerShell finds the disk there, right before the change (never by a disk number)."""
    if not facts.get("xen"):
        return steps
    out = []
    for s in steps:
        s = dict(s)
        disk = facts["disks"].get(s.get("volume_id")) if s.get("volume_id") else None
        if disk is not None and disk.get("pv_target") is not None:
            s["pv_target"] = disk["pv_target"]
        if s.get("disks"):
            s["pv_targets"] = [(facts["disks"].get(v) or {}).get("pv_target") for v in s["disks"]]
        out.append(s)
    return out


def recheck_locations(steps, facts, describe):
    """Right before steps are sent: every (volume, PV location) they name is still what the instance's block device
    mappings say, read again now (a swap or an attach in between would make a location mean another volume)."""
    pairs = set()
    for s in steps:
        if s.get("pv_target") is not None:
            pairs.add((s["volume_id"], s["pv_target"]))
        for vid, target in zip(s.get("disks") or [], s.get("pv_targets") or []):
            if target is not None:
                pairs.add((vid, target))
    if not pairs:
        return
    instance = describe(facts["instance_id"])
    problems = []
    for vid, target in sorted(pairs):
        device = vss.pv_location_device(target)
        held = [(b.get("Ebs") or {}).get("VolumeId") for b in instance.get("BlockDeviceMappings") or []
                if vss.pv_target_of_device(b.get("DeviceName")) == target and (b.get("Ebs") or {}).get("VolumeId")]
        if held != [vid]:
            problems.append("%s (Xen PV target %d) holds %s, not %s" % (device, target, ", ".join(held) or "nothing", vid))
    if problems:
        raise StillpointError("instance %s's block device mappings changed since the host was read: %s; refusing the "
                              "round (none of its steps was sent)" % (facts["instance_id"], "; ".join(problems)),
                              problems=problems)


def chkdsk_verdict(path, rc, output):
    """``{"path", "rc", "ok", "meaning", "tail"}``: ok only for exit code 0."""
    lines = [line for line in (output or "").splitlines() if line.strip()]
    return {"path": path, "rc": rc, "ok": rc == 0, "meaning": CHKDSK_RC.get(rc, "unknown exit code"),
            "tail": lines[-3:]}


# --------------------------------------------------------------------------- planning

def _identity(disk):
    return disk["guid"] if disk["style"] == "GPT" else disk["signature"]


def check_identity(facts, expect_instance_id):
    """Refuse a host whose instance metadata does not name the target instance."""
    if not expect_instance_id:
        return
    got = facts.get("instance_id")
    if not got:
        raise StillpointError("host %s could not prove that it is the target instance %s: its instance metadata did "
                              "not answer (%s). Nothing was changed."
                              % (facts.get("computer_name"), expect_instance_id, facts.get("imds_error") or "no answer"))
    if got != expect_instance_id:
        raise StillpointError("host %s is instance %s, not the target instance %s; nothing was changed"
                              % (facts.get("computer_name"), got, expect_instance_id), instance_id=got)


def plan_down(facts, volume_ids, sources=(), import_clone=False, refuse_missing=False):
    """Steps taking the disks of ``volume_ids`` (about to be detached) offline; raises for the system disk and
    for a copy that would come up beside its source (a source volume attached here and not being detached); with
    ``refuse_missing``, also for a volume the host shows no disk of (the caller knows from EC2 that it is attached
    to this host's instance: a host that does not show it may be another machine)."""
    problems = []
    steps = []
    for vid in volume_ids:
        disk = facts["disks"].get(vid)
        if disk is None and refuse_missing:
            problems.append("host %s shows no disk of %s, which is attached to the instance this host should be "
                            "(%s); is the inventory host the right machine? Its volume is not detached as if its disk "
                            "were already gone" % (facts.get("computer_name"), vid, "by its Xen PV location"
                                                   if facts.get("xen") else "by the NVMe serial"))
            continue
        if disk is None:
            continue  # not attached here (any more): nothing to take down
        if disk["boot"]:
            problems.append("disk %d (%s) holds the running system; it is never taken offline" % (disk["number"], vid))
        elif not disk["offline"] and disk["status"].lower() != "offline":
            steps.append({"op": "offline", "volume_id": vid, "what": "disk %d (%s) offline" % (disk["number"], vid)})
    beside = [s for s in sources if s and s in facts["disks"] and s not in volume_ids]
    if beside and not import_clone:
        problems.append(
            "source volume(s) %s stay attached to this host: their restored copies would carry the same disk signature "
            "(MBR) or disk GUID (GPT), and Windows keeps a disk that collides with an online disk offline. Refused; "
            "set import_clone (a new signature for each copy, new drive letters or mount folders from the path map) "
            "or detach the source first" % ", ".join(beside))
    if problems:
        raise StillpointError("refusing the Windows host step (nothing was changed): " + "; ".join(problems),
                              problems=problems)
    return steps


def expected_partitions(partition_letters, new_ids):
    """``partition_letters`` ({restored volume id: {partition number: drive letter}}, a basic disk's letters as the
    CLUSTERPRO catalog records them) as :func:`expected_volumes` entries, each with its ``partition``."""
    out = []
    problems = []
    for vid, letters in sorted((partition_letters or {}).items()):
        if vid not in new_ids:
            problems.append("partition_letters names %s, which is not one of the restored volumes (%s)"
                            % (vid, ", ".join(new_ids)))
            continue
        for number, letter in sorted((letters or {}).items(), key=lambda kv: str(kv[0])):
            bare = str(letter or "").rstrip(":\\").upper()
            if not re.match(r"^[D-Z]$", bare) or not re.match(r"^[0-9]+$", str(number)):
                problems.append("partition %s of %s: drive letter %r (a partition number and one of D to Z expected)"
                                % (number, vid, letter))
                continue
            out.append({"path": bare + ":\\", "target": bare + ":\\", "disks": [vid], "identity": {},
                        "partition": int(number)})
    return out, problems


def expected_volumes(layout, new_ids, sources, path_map=None, import_clone=False, partition_letters=None):
    """The catalog's volumes with the restored disks they must lie on and the path each must get; with
    ``partition_letters`` also the partitions of a restored basic disk (:func:`expected_partitions`)."""
    path_map = dict((normalize_path(k), normalize_path(v)) for k, v in (path_map or {}).items())
    src_to_new = dict(zip(sources, new_ids))
    out = []
    problems = []
    recorded = [normalize_path(v["path"]) for v in (layout or {}).get("volumes") or []]
    for vol in (layout or {}).get("volumes") or []:
        path = normalize_path(vol["path"])
        disks = [src_to_new.get(s) for s in vol.get("volume_ids") or []]
        if None in disks or not disks:
            problems.append("volume %s lies on %s, not all members of the set" % (path, vol.get("volume_ids")))
            continue
        target = path_map.get(path, path)
        if import_clone and (path not in path_map or target in recorded):
            problems.append("import_clone needs a new drive letter or mount folder for %s (path map, never one of the "
                            "set's own: %s)" % (path, ", ".join(recorded)))
        out.append({"path": path, "target": target, "disks": sorted(disks), "identity": vol.get("identity") or {}})
    parts, wrong = expected_partitions(partition_letters, new_ids)
    out += parts
    problems += wrong
    targets = [w["target"] for w in out]
    problems += ["%s is wanted twice" % t for t in sorted(set(t for t in targets if targets.count(t) > 1))]
    if problems:
        raise StillpointError("refusing the Windows host step (nothing was changed): " + "; ".join(problems),
                              problems=problems)
    return sorted(out, key=lambda v: (not LETTER_RE.match(v["target"]), v["target"].count("\\"), v["target"]))


def new_disk_id(style):
    """A new disk GUID (GPT) or MBR signature (8 hex digits) for diskpart's ``uniqueid disk id=``."""
    return str(uuid.uuid4()) if style == "GPT" else "%08x" % (uuid.uuid4().int & 0xFFFFFFFF)


def plan_disks(facts, new_ids, import_clone=False, new_id=None):
    """The disk steps of one round (new signature, online, clear read-only, import), or raises."""
    new_id = new_id or new_disk_id
    problems = []
    steps = []
    present = [d for v, d in facts["disks"].items() if v not in new_ids and not d["offline"]
               and d["status"].lower() != "offline"] + facts["others"]
    imported = False
    for vid in new_ids:
        disk = facts["disks"][vid]
        ident = _identity(disk)
        twins = [d for d in present if ident and _identity(d) == ident]
        collides = bool(twins) or disk["offline_reason"] == "Collision"
        if collides:
            twin = ", ".join("disk %d (%s)" % (d["number"], d["volume_id"] or "not EBS") for d in twins) or "another disk"
            if disk["dynamic"]:
                problems.append("disk %d (%s) is a dynamic disk whose identity collides with %s: a copy of a dynamic "
                                "pack is never brought up beside its source (a new disk signature does not give the "
                                "pack a new identity); detach the source pack first" % (disk["number"], vid, twin))
                continue
            if not import_clone:
                problems.append("disk %d (%s) has the same disk %s as %s (a copy beside its source: Windows keeps it "
                                "offline, signature collision). Refused; import_clone gives it a new one"
                                % (disk["number"], vid, "GUID" if disk["style"] == "GPT" else "signature", twin))
                continue
            steps.append({"op": "new_signature", "volume_id": vid, "id": new_id(disk["style"]),
                          "what": "disk %d (%s) new %s (collided with %s)" % (
                              disk["number"], vid, "GUID" if disk["style"] == "GPT" else "signature", twin)})
        status = disk["status"].lower()
        if disk["offline"] or status == "offline":
            steps.append({"op": "online", "volume_id": vid, "what": "disk %d (%s) online" % (disk["number"], vid)})
        if disk["read_only"]:
            steps.append({"op": "clear_readonly", "volume_id": vid,
                          "what": "disk %d (%s) read-only attribute cleared" % (disk["number"], vid)})
        if status == "foreign" and not imported:
            imported = True  # diskpart's import takes every disk of the foreign group of the selected one
            steps.append({"op": "import", "volume_id": vid,
                          "what": "foreign dynamic pack of disk %d (%s) imported" % (disk["number"], vid)})
        elif status not in ("online", "offline", "foreign", ""):
            problems.append("disk %d (%s) is %s in diskpart" % (disk["number"], vid, disk["status"]))
    if problems:
        raise StillpointError("refusing to bring the restored disks up: " + "; ".join(problems), problems=problems)
    return steps


def candidates(facts, w):
    """The volumes that may be ``w`` (:func:`expected_volumes`): those on exactly its disks; where several are, and the
    catalog recorded what ``w`` looked like (label, file system, size, as diskpart prints them), those that look so. For
    a partition (``w["partition"]``): the volume diskpart's ``detail partition`` shows on it."""
    if w.get("partition"):
        part = ((facts["disks"].get(w["disks"][0]) or {}).get("partitions") or {}).get(w["partition"]) or {}
        return [v for v in facts["volumes"] if part.get("volumes") == [v["number"]]]
    on = [v for v in facts["volumes"] if sorted(d for d in v["disks"] if d) == w["disks"]
          and len(v["disks"]) == len(w["disks"])]
    look = w.get("identity") or {}
    if len(on) > 1 and look:
        on = [v for v in on if all((v.get(k) or "") == value for k, value in look.items())]
    return on


def partition_problem(facts, w):
    """Why partition ``w["partition"]`` of its restored disk cannot be told to one volume, or None: no such partition,
    diskpart's partition of that number at another offset than Get-Partition's (their numbering differs), or not
    exactly one volume on it."""
    if not w.get("partition"):
        return None
    disk = facts["disks"].get(w["disks"][0]) or {}
    parts = disk.get("partitions") or {}
    part = parts.get(w["partition"])
    where = "partition %d of disk %s (%s)" % (w["partition"], disk.get("number"), w["disks"][0])
    if part is None:
        return "%s, wanted at %s: the disk has no such partition (it has %s)" % (
            where, w["target"], ", ".join(map(str, sorted(parts))) or "none")
    if part["offset"] is None or part["offset"] != part["dp_offset"]:
        return ("%s: Get-Partition puts it at offset %s, diskpart's partition %d at %s; their numbering differs, "
                "refusing to guess which partition was %s"
                % (where, part["offset"], w["partition"], part["dp_offset"], w["target"]))
    if len(part["volumes"]) != 1:
        return "%s: diskpart shows %d volumes on it, not one" % (where, len(part["volumes"]))
    return None


def _at(facts, vol, target):
    """Whether ``vol`` is at ``target`` (its drive letter, or a mount folder of it)."""
    if LETTER_RE.match(target):
        return (vol["letter"] or "").upper() == target[0].upper()
    return facts["paths"].get(target) == vol["number"]


def plan_paths(facts, wanted):
    """The drive letter / mount folder steps of one round for ``wanted`` (:func:`expected_volumes`), or raises."""
    problems = []
    steps = []
    taken = dict((v["letter"].upper(), v) for v in facts["volumes"] if v["letter"])
    restored = [w["disks"] for w in wanted]
    freed = set()  # (volume number, letter) removals planned in this round

    def free(vol, what):
        if (vol["number"], vol["letter"].upper()) not in freed:
            freed.add((vol["number"], vol["letter"].upper()))
            steps.append({"volume": vol["number"], "disks": sorted(d for d in vol["disks"] if d), "op": "remove_letter",
                          "letter": vol["letter"].upper(), "what": "volume %d: letter %s: removed (%s)" % (
                              vol["number"], vol["letter"].upper(), what)})

    for w in wanted:
        wrong = partition_problem(facts, w)
        if wrong:
            problems.append(wrong)
            continue
        matches = candidates(facts, w)
        target = w["target"]
        letter = target[0].upper() if LETTER_RE.match(target) else None
        here = [v for v in matches if _at(facts, v, target)]
        look = ", ".join("%s %s" % kv for kv in sorted(w["identity"].items())) if w.get("identity") else None
        if len(matches) > 1 and (not here or not look):
            problems.append("%s: %d volumes lie on %s (%s); %s" % (
                w["path"], len(matches), ", ".join(w["disks"]), ", ".join("volume %d" % v["number"] for v in matches),
                "the catalog's record of it (%s) fits each of them" % look if look else
                "which one was %s is not recorded (a set taken before this version)" % w["path"]))
            continue
        if not matches and look and candidates(facts, dict(w, identity={})):
            problems.append("%s: no volume on %s looks as the catalog recorded it (%s)" % (
                w["path"], ", ".join(w["disks"]), look))
            continue
        if not matches:
            problems.append("%s: no volume lies on exactly %s (is the pack imported and healthy?)"
                            % (w["path"], ", ".join(w["disks"])))
            continue
        vol = (here or matches)[0]
        if not vol["status"].lower().startswith("healthy"):
            problems.append("%s: volume %d on %s is %s, not Healthy"
                            % (w["path"], vol["number"], ", ".join(w["disks"]), vol["status"] or "in no state"))
            continue
        base = {"volume": vol["number"], "disks": w["disks"]}
        if w.get("partition"):
            part = facts["disks"][w["disks"][0]]["partitions"][w["partition"]]
            base.update(partition=w["partition"], offset=part["offset"])
        if here:
            continue
        if letter:
            holder = taken.get(letter)
            if holder is not None and holder["number"] != vol["number"]:
                if sorted(d for d in holder["disks"] if d) not in restored:
                    held_on = ", ".join(d or "a non-EBS disk" for d in holder["disks"])
                    problems.append("drive letter %s: is held by volume %d (on %s), not by the restored %s; free it "
                                    "first, or give a path map" % (letter, holder["number"], held_on, w["path"]))
                    continue
                # another restored volume came up with it (Windows' choice on arrival): it gets its own next
                free(holder, "given by Windows on arrival; wanted by %s" % w["path"])
            if vol["letter"]:
                free(vol, "given by Windows on arrival")
            steps.append(dict(base, op="assign", letter=letter, what="volume %d (%s) gets %s:" % (
                vol["number"], ", ".join(w["disks"]), letter)))
        else:
            holder = facts["paths"].get(target)
            if holder is not None:
                problems.append("mount folder %s is a mount point of volume %d already, not of the restored %s"
                                % (target, holder, w["path"]))
                continue
            steps.append(dict(base, op="assign", mount=diskpart_target(target), what="volume %d (%s) mounted at %s" % (
                vol["number"], ", ".join(w["disks"]), target)))
    if problems:
        raise StillpointError("refusing to give the restored volumes their paths: " + "; ".join(problems),
                              problems=problems)
    return steps


# --------------------------------------------------------------------------- procedures

def _apply(execute, steps, facts=None, describe=None):
    """Send ``steps`` to the host. On a Xen host each disk step carries its disk's PV location (:func:`locate`),
    checked first against the instance's block device mappings read again now (:func:`recheck_locations`)."""
    if facts is not None and facts.get("xen"):
        steps = locate(steps, facts)
        recheck_locations(steps, facts, describe)
    out = execute(APPLY, {"Steps": [dict((k, v) for k, v in s.items() if k != "what") for s in steps]})
    return out.get("results") or []


def given_instance(params):
    """The block device mappings the caller gave (``devices``: {volume id: device name EC2 reports it attached at}),
    in DescribeInstances' shape, or None. The caller read them from EC2 (the CLUSTERPRO restore: ec2_instance_info on
    its api host, and the swap that attached the restored volume at that name); no EC2 call or instance metadata
    is needed for them."""
    devices = params.get("devices") or {}
    if not devices:
        return None
    return {"InstanceId": params.get("instance_id") or "(the caller's device names)", "given": True,
            "BlockDeviceMappings": [{"DeviceName": dev, "Ebs": {"VolumeId": vid}} for vid, dev in sorted(devices.items())]}


def _read(params, execute, paths, disk_numbers=()):
    return execute(GATHER, {"Path": list(paths), "Identify": bool(params.get("expect_instance_id")),
                            "ImdsEndpoint": params.get("imds_endpoint") or "", "SkipMetadata": bool(params.get("devices")),
                            "PartitionDisk": list(disk_numbers)})


def _partition_disks(facts, params):
    """The disk numbers of the online restored disks whose partitions ``partition_letters`` names."""
    return sorted(facts["disks"][v]["number"] for v in params.get("partition_letters") or {}
                  if v in facts["disks"] and not facts["disks"][v]["offline"])


def gather(params, execute, describe=None, paths=()):
    """``(facts, instance)``: the host read by the gather script; on a Xen host (PV disks) the instance whose block
    device mappings map them (:func:`xen_instance`, or the caller's ``devices``: :func:`given_instance`), else None.
    The identity proof as asked. With ``partition_letters``, a second read gets the partitions of the restored
    disks online at the first (Get-Partition and diskpart ``detail partition``), refused if a disk number in it
    holds another volume by then."""
    raw = _read(params, execute, paths)
    given = given_instance(params)
    instance = None
    if any(vss.is_pv_disk(d) for d in raw.get("disks") or []):
        check_identity(raw, params.get("expect_instance_id"))
        instance = given or xen_instance(raw, params, describe)
    facts = host_facts(raw, instance)
    numbers = _partition_disks(facts, params)
    if numbers:
        raw = _read(params, execute, paths, numbers)
        again = host_facts(raw, given or (xen_instance(raw, params, describe) if instance else None))
        moved = [n for n in numbers if [v for v, d in facts["disks"].items() if d["number"] == n]
                 != [v for v, d in again["disks"].items() if d["number"] == n]]
        if moved:
            raise StillpointError("disk number(s) %s named other EBS volumes at the second read of the host; refusing "
                                  "the round (no step was sent)" % ", ".join(map(str, moved)))
        facts = again
    check_identity(facts, params.get("expect_instance_id"))
    return facts, instance


def _refuse_pv(facts, instance, volume_ids, what, seen=False):
    problems = facts["pv_problems"] + pv_volume_problems(facts, instance, volume_ids, seen)
    if problems:
        raise StillpointError("refusing %s on host %s (Xen PV disks, mapped through instance %s's block device "
                              "mappings; no step of this round was sent): %s"
                              % (what, facts.get("computer_name"), (instance or {}).get("InstanceId")
                                 or facts["instance_id"], "; ".join(problems)), problems=problems)


def _describer(params, describe):
    """DescribeInstances as the procedures use it; the caller's record when it gave the device names (``devices``)."""
    given = given_instance(params)
    return describe if given is None else (lambda instance_id: given)


def down(params, execute, check_mode=False, describe=None):
    """Take the disks of ``params["volume_ids"]`` offline (before their volumes are detached)."""
    describe = _describer(params, describe)
    facts, instance = gather(params, execute, describe)
    _refuse_pv(facts, instance, params.get("volume_ids") or [], "the Windows host step", seen=True)
    steps = plan_down(facts, params.get("volume_ids") or [], params.get("source_volume_ids") or [],
                      params.get("import_clone"), params.get("refuse_missing"))
    result = {"changed": bool(steps), "actions": [dict(what=s["what"], planned=check_mode) for s in steps],
              "instance_id": facts["instance_id"]}
    if steps and not check_mode:
        result["results"] = _apply(execute, steps, facts, describe)
    return result


def up(params, execute, check_mode=False, sleep=time.sleep, clock=time.monotonic, describe=None):
    """Bring the restored disks up: wait for them (by volume id; on a Xen host at the PV location of the device name
    each is attached at), disk steps, paths, then chkdsk read-only."""
    describe = _describer(params, describe)
    new_ids = list(params["volume_ids"])
    sources = list(params.get("source_volume_ids") or [])
    if len(sources) != len(new_ids) and ((params.get("layout") or {}).get("volumes") or sources):
        raise StillpointError("source_volume_ids must name the source of every restored volume, in member order")
    wanted = expected_volumes(params.get("layout"), new_ids, sources, params.get("path_map"), params.get("import_clone"),
                              params.get("partition_letters"))
    paths = sorted(set(w["target"] for w in wanted))
    deadline = clock() + float(params.get("device_timeout") or 0)
    actions = []
    rounds = 0
    while True:
        facts, instance = gather(params, execute, describe, paths)
        located = pv_volume_problems(facts, instance, new_ids)
        if located:
            _refuse_pv(facts, instance, new_ids, "to bring the restored disks up")
        missing = [v for v in new_ids if v not in facts["disks"]]
        if missing or facts["pv_problems"]:
            if check_mode or clock() > deadline:
                if check_mode and not facts["pv_problems"]:
                    return {"changed": True, "actions": [dict(what="wait for the disks of %s, then bring them up"
                                                              % ", ".join(missing), planned=True)], "volumes": [],
                            "chkdsk": []}
                if facts["xen"]:
                    raise StillpointError(
                        "the restored volumes did not appear at their Xen PV locations within %s s: %s. Refused, "
                        "never guessed." % (params.get("device_timeout"), "; ".join(
                            ["%s, expected at %s" % (v, where_expected(instance, v)) for v in missing]
                            + facts["pv_problems"])), actions=actions, problems=facts["pv_problems"])
                raise StillpointError("the restored volumes %s did not appear as disks (NVMe serial) within %s s"
                                      % (", ".join(missing), params.get("device_timeout")), actions=actions)
            sleep(2.0)
            continue
        steps = plan_disks(facts, new_ids, params.get("import_clone"))
        if not steps:
            steps = plan_paths(facts, wanted)
        if not steps:
            break
        if check_mode:
            actions += [dict(what=s["what"], planned=True) for s in steps]
            if any(s["op"] != "assign" and s["op"] != "remove_letter" for s in steps):
                actions.append(dict(what="then give back %s" % ", ".join(w["target"] for w in wanted), planned=True))
            return {"changed": True, "actions": actions, "volumes": [], "chkdsk": []}
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise StillpointError("the restored disks did not come up after %d rounds of steps" % MAX_ROUNDS,
                                  actions=actions)
        try:
            _apply(execute, steps, facts, describe)
        except StillpointError as exc:
            exc.details["actions"] = actions
            raise
        actions += [dict(what=s["what"], planned=False) for s in steps]
    volumes = []
    for w in wanted:
        vol = next(v for v in candidates(facts, w) if _at(facts, v, w["target"]))
        volumes.append(dict({"path": w["path"], "target": w["target"], "volume": vol["number"], "disks": w["disks"],
                             "type": vol["type"], "status": vol["status"]},
                            **({"partition": w["partition"]} if w.get("partition") else {})))
    checks = []
    if params.get("verify", True) and not check_mode:  # the apply script does not run in check mode
        res = _apply(execute, [{"op": "chkdsk", "path": diskpart_target(w["target"]) + (":" if LETTER_RE.match(
            w["target"]) else "")} for w in wanted])
        checks = [chkdsk_verdict(w["target"], r.get("rc"), r.get("output")) for w, r in zip(wanted, res)]
        bad = [c for c in checks if not c["ok"]]
        if bad:
            raise StillpointError("read-only chkdsk found problems: %s" % "; ".join(
                "%s rc=%s (%s): %s" % (c["path"], c["rc"], c["meaning"], " / ".join(c["tail"])) for c in bad),
                chkdsk=checks, actions=actions, volumes=volumes, changed=bool(actions))
    return {"changed": bool(actions), "actions": actions, "volumes": volumes, "chkdsk": checks,
            "instance_id": facts["instance_id"]}


def info(params, execute, describe=None):
    """Read only: the facts, and the identity proof when asked."""
    facts, instance = gather(params, execute, _describer(params, describe))
    _refuse_pv(facts, instance, [], "to report its disks")
    return {"changed": False, "instance_id": facts["instance_id"], "computer_name": facts["computer_name"],
            "disks": sorted(facts["disks"].values(), key=lambda d: d["number"]), "volumes": facts["volumes"]}


ARGUMENT_SPEC = dict(
    state=dict(type="str", required=True, choices=["info", "down", "up"]),
    volume_ids=dict(type="list", elements="str", default=[]),
    source_volume_ids=dict(type="list", elements="str", default=[]),
    layout=dict(type="dict", default={}),
    import_clone=dict(type="bool", default=False),
    path_map=dict(type="dict", default={}),
    verify=dict(type="bool", default=True),
    device_timeout=dict(type="float", default=120.0),
    expect_instance_id=dict(type="str"),
    instance_id=dict(type="str"),
    imds_endpoint=dict(type="str"),
    partition_letters=dict(type="dict", default={}),
    devices=dict(type="dict", default={}),
    refuse_missing=dict(type="bool", default=False),
)
