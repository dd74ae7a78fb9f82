# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Windows VSS sets of dynamic-disk arrays: the controller half of ``win_vss_snapshot_set``.

The Windows module (``plugins/modules/win_vss_snapshot_set.ps1``) only gathers raw facts on the host
(the AwsVssComponents version, ``vssadmin list writers``' text, Get-Disk's objects, diskpart's text
for the named volumes and every disk) and changes nothing. Everything that decides is here, in
Python, so it can be tested without Windows:

* :func:`parse_writers`, :func:`parse_diskpart`, :func:`disk_volume_id`: the parsers;
* :func:`preflight`: agent version, writers stable, no snapshot set in progress, the dynamic pack's
  disks online, every member disk mapped to its EBS volume (NVMe serial; on Xen, the PV target id's device name
  through the instance's block device mappings: :func:`map_disk`), the members exactly the array the user named;
* :func:`run_vss_command`: the snapshot through Systems Manager's ``AWSEC2-CreateVssSnapshot``
  (AWS's own documented path: the AWS VSS agent ``ec2-vss-agent.exe`` makes the one CreateSnapshots
  call inside VSS's flush-and-hold; its own command line is not documented beyond ``-nw``/``-copy``);
* :func:`prove`: every member has a snapshot of one VSS snapshot set (``AwsVssConfig``) with
  ``AppConsistent``; else the set is deleted, all or nothing;
* :func:`take`: the whole procedure; the set becomes a catalog set (``_catalog.set_tags`` /
  its member map), so ``backup_set_info`` and retention read it as a Linux set.

Nothing here exits; every failure is a StillpointError naming what to do. docs/windows-vss.md says
which Windows command lines are verified and from where.
"""

from __future__ import annotations

import re
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

PROCEDURE = "win_vss_snapshot_set"
WINDOWS_MODULE = "stillpoint.snapshots.win_vss_snapshot_set"
SSM_DOCUMENT = "AWSEC2-CreateVssSnapshot"
# AWS VSS solution version history: 2.1.0 "Added support for using the CreateSnapshots API" (one call for
# the instance), 2.3.1 "Added new default tag AwsVssConfig", 2.3.3 "Updated the VSS agent to ensure that the
# Ec2VssProvider is used during snapshot creation". Below 2.3.3 the proof (AwsVssConfig) or the provider
# cannot be relied upon.
MIN_AGENT_VERSION = "2.3.3"
TAG_APP_CONSISTENT = "AppConsistent"
TAG_VSS_CONFIG = "AwsVssConfig"
HOLD_LIMIT_S = 10  # VSS's flush-and-hold window, not configurable (AWS troubleshooting page)
STABLE = "[1] Stable"
NO_ERROR = "No error"
GUID_RE = re.compile(r"\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?")
SSM_DONE = ("Success", "Failed", "Cancelled", "TimedOut", "Cancelling")
# the SSM tags parameter takes only alphanumerics and these (AWS, "Parameters for Systems Manager VSS snapshot documents")
SSM_TAG_CHARS = re.compile(r"^[A-Za-z0-9 ()./\\\-\"'@_+:={}]*$")

CLEAR_IN_PROGRESS = (
    "another VSS snapshot set is in progress (VSS_E_SNAPSHOT_SET_IN_PROGRESS, or writers waiting for completion). "
    "If a backup is running, wait for it to end. If a failed run left it behind (no ec2-vss-agent.exe or other "
    "backup process running), end it by restarting the Volume Shadow Copy service on the host "
    "(Restart-Service -Name VSS, as Administrator; the service is demand-started) and check that "
    "`vssadmin list writers` shows every writer \"[1] Stable\" before running again")
HOLD_ADVICE = (
    "VSS's flush-and-hold window is %d s and cannot be changed; the snapshot call did not finish inside it. "
    "Run again when the instance is under less I/O (AWS: excessive I/O, slow EC2 API from the instance, "
    "fragmented volumes, antivirus, a slow writer), or take the set with writers=false only if a "
    "filesystem-consistent set is acceptable" % HOLD_LIMIT_S)
WRITER_ADVICE = ("restart the service that owns the failed writer (vssadmin list writers names it; e.g. SQL Server "
                 "VSS Writer -> SQLWriter) until every writer shows \"[1] Stable\" / \"No error\", then run again")
CLUSTER_ADVICE = ("on a Windows failover cluster only the node that owns the shared disks can snapshot them (AWS: the "
                  "command document must run on the primary node; it fails on the others). Run this task on the "
                  "owner node (Get-ClusterGroup / Get-ClusterSharedVolume show it), or move the group there first")


# --------------------------------------------------------------------------- parsers

def parse_writers(text):
    """``vssadmin list writers`` -> ``[{"name", "id", "instance_id", "state", "state_code", "last_error"}]``.

    Every writer block starts with ``Writer name: '<name>'``; the fields follow as ``Key: value`` lines.
    The header lines (``vssadmin 1.1 - ...``) are ignored."""
    writers = []
    current = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        m = re.match(r"^Writer name:\s*'?(.*?)'?\s*$", line)
        if m:
            current = {"name": m.group(1), "id": None, "instance_id": None, "state": None, "state_code": None,
                       "last_error": None}
            writers.append(current)
            continue
        if current is None or ":" not in line:
            continue
        key, value = [p.strip() for p in line.split(":", 1)]
        key = key.lower()
        if key == "writer id":
            current["id"] = value.strip("{}")
        elif key == "writer instance id":
            current["instance_id"] = value.strip("{}")
        elif key == "state":
            current["state"] = value
            code = re.match(r"^\[(\d+)\]", value)
            current["state_code"] = int(code.group(1)) if code else None
        elif key == "last error":
            current["last_error"] = value
    return writers


def writer_problems(writers):
    """The writers that are not ``[1] Stable`` with ``No error``, as ``name: state, last error``."""
    return ["%s: %s, last error %s" % (w["name"], w["state"] or "(no state)", w["last_error"] or "(none)")
            for w in writers if w["state_code"] != 1 or (w["last_error"] or "").lower() != NO_ERROR.lower()]


def writer_in_progress(writers):
    """Writers waiting on another snapshot set (VSS_WRITER_STATE 2..5: waiting for freeze, thaw, post
    snapshot, backup complete): a set is in progress."""
    return [w["name"] for w in writers if w["state_code"] in (2, 3, 4, 5)]


def _table_rows(lines, what):
    """Rows of a diskpart table (``Disk ###`` or ``Volume ###``) with the header's column positions."""
    rows = []
    header = None
    for line in lines:
        if re.match(r"^\s*%s ###" % what, line):
            header = line
            continue
        m = re.match(r"^(\s*\*?\s*)%s (\d+)\s+(.*)$" % what, line)
        if m and header is not None:
            rows.append((header, line, int(m.group(2))))
    return rows


def _flag(header, line, column):
    pos = header.find(column)
    if pos < 0:
        return False
    return "*" in line[pos:pos + len(column)]


def parse_disk_rows(text):
    """diskpart's disk table (``list disk``, and the one ``detail volume`` prints) ->
    ``[{"number", "status", "dynamic", "gpt", "selected"}]``."""
    out = []
    for header, line, number in _table_rows((text or "").splitlines(), "Disk"):
        status_at = header.find("Status")
        size_at = header.find("Size")
        status = line[status_at:size_at].strip() if 0 <= status_at < size_at else ""
        out.append({"number": number, "status": status, "dynamic": _flag(header, line, "Dyn"),
                    "gpt": _flag(header, line, "Gpt"), "selected": line.lstrip().startswith("*")})
    return out


VOLUME_COLUMNS = ("Ltr", "Label", "Fs", "Type", "Size", "Status", "Info")
IDENTITY = ("label", "fs", "size")  # a volume's look in the catalog (volume_identity)


def parse_volume_rows(text, first_table=False):
    """diskpart's volume tables (``detail disk``, ``list volume``) -> ``[{"number", "letter", "label", "fs", "type",
    "size", "status", "info"}]``: each cell cut at its header's column positions (a size is right-aligned under its
    header, inside the column). A table ends at the first line that is neither a row nor its dashes;
    ``first_table``: the rows of the first table only."""
    out = []
    header = None
    for line in (text or "").splitlines():
        if re.match(r"^\s*Volume ###", line):
            if first_table and out:
                break
            header = line
            continue
        if header is None:
            continue
        m = re.match(r"^\s*\*?\s*Volume (\d+)\s", line)
        if not m:
            if not line.strip().startswith("-"):
                header = None  # the table ended
                if first_table and out:
                    break
            continue
        pos = [header.find(c) for c in VOLUME_COLUMNS]
        if min(pos) < 0:
            continue  # not a table this version reads
        pos.append(len(line) + 1)
        cell = dict((c, line[pos[i]:pos[i + 1]].strip()) for i, c in enumerate(VOLUME_COLUMNS))
        out.append({"number": int(m.group(1)), "letter": cell["Ltr"] or None, "label": cell["Label"], "fs": cell["Fs"],
                    "type": cell["Type"], "size": cell["Size"], "status": cell["Status"], "info": cell["Info"]})
    return out


def volume_identity(row):
    """What a volume looked like in diskpart's volume table (label, file system, size, as diskpart prints them): the
    catalog records it per volume, so that a restore tells apart volumes that lie on the same disks."""
    return dict((k, row[k]) for k in IDENTITY if (row or {}).get(k))


def parse_disk_details(text):
    """One diskpart run of ``list disk`` then ``select disk N`` + ``detail disk`` for every disk ->
    ``(disks, volumes_by_disk)``: the ``list disk`` rows and ``{N: [volume numbers]}``."""
    parts = re.split(r"^\s*Disk (\d+) is now the selected disk\.\s*$", text or "", flags=re.M)
    disks = parse_disk_rows(parts[0])
    volumes = {}
    for i in range(1, len(parts) - 1, 2):
        volumes[int(parts[i])] = [v["number"] for v in parse_volume_rows(parts[i + 1])]
    return disks, volumes


def parse_volume_detail(text):
    """One diskpart run of ``select volume=<path>`` + ``detail volume`` -> ``{"volume", "disks"}``:
    the selected volume's number and the disks it lies on (a spanned/striped/mirrored volume lists all)."""
    m = re.search(r"^\s*Volume (\d+) is the selected volume\.\s*$", text or "", flags=re.M)
    return {"volume": int(m.group(1)) if m else None, "disks": parse_disk_rows(text)}


def disk_volume_id(disk):
    """The EBS volume id of a Get-Disk object by its NVMe serial (AWS: ``vol0123...`` is the volume id
    without the dash; anything after an underscore is not part of it), else None."""
    serial = (disk.get("SerialNumber") or "").strip()
    m = re.match(r"^vol([0-9a-f]{8,17})(?:_.*)?$", serial)
    return "vol-" + m.group(1) if m else None


# Xen instances (AWS PV / Citrix PV drivers; AWS EC2 User Guide for Windows, "Map non-NVMe disks on Amazon EC2 Windows
# instance to volumes"): an EBS disk's Get-Disk Path holds PROD_PVDISK, its Win32_DiskDrive location is bus 0, LUN 0,
# target N; target 0 is the device name /dev/sda1, targets 1..25 are xvdb..xvdz ('a' + N). Targets 78..89
# (xvdca..xvdcl) are instance store disks, never an EBS volume.
PV_PATH_MARKER = "PROD_PVDISK"
PV_EBS_TARGETS = range(0, 26)
PV_INSTANCE_STORE_TARGETS = range(78, 90)
MAPPED_BY_SERIAL = "nvme-serial"
MAPPED_BY_PV_TARGET = "pv-target"


def is_pv_disk(disk):
    """Whether a Get-Disk object is a disk of the Xen PV drivers (its Path holds ``PROD_PVDISK``)."""
    return PV_PATH_MARKER.lower() in (disk.get("Path") or "").lower()


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def pv_device_name(disk):
    """The device name of a Xen PV disk from its SCSI location (``/dev/sda1`` for target 0, ``xvd<a + N>`` for
    targets 1..25). Raises StillpointError saying why when the disk is not an EBS disk at such a location."""
    bus, lun, target = (_int_or_none(disk.get(k)) for k in ("SCSIBus", "SCSILogicalUnit", "SCSITargetId"))
    where = "bus %s, target %s, LUN %s" % (bus, target, lun)
    if target in PV_INSTANCE_STORE_TARGETS:
        raise StillpointError("it is an instance store disk (Xen PV %s), not an EBS volume" % where)
    if bus != 0 or lun != 0 or target not in PV_EBS_TARGETS:
        raise StillpointError("its Xen PV location (%s) is not one where an EBS volume sits (bus 0, LUN 0, target "
                              "0..25)" % where)
    return pv_location_device(target)


def _bare_device(name):
    n = (name or "").strip().lower()
    return n[len("/dev/"):] if n.startswith("/dev/") else n


def pv_target_of_device(name):
    """The Xen PV target id where AWS's table puts an EBS volume attached at device ``name`` (``/dev/sda1`` 0,
    ``xvdb``..``xvdz`` 1..25, with or without ``/dev/``), or None for a name the table gives no EBS location
    (``/dev/sdf``, the instance store's ``xvdca``..``xvdcl``): :func:`pv_device_name` read backwards."""
    n = _bare_device(name)
    if n == "sda1":
        return 0
    m = re.match(r"^xvd([b-z])$", n)
    return ord(m.group(1)) - ord("a") if m else None


def pv_location_device(target):
    """The device name AWS's table gives Xen PV target ``target`` (bus 0, LUN 0, one of ``PV_EBS_TARGETS``):
    ``/dev/sda1`` for 0, ``xvd<a + N>`` for 1..25."""
    return "/dev/sda1" if target == 0 else "xvd" + chr(ord("a") + target)


def pv_volume_id(disk, instance):
    """The EBS volume of a Xen PV disk: the block device mapping of ``instance`` (DescribeInstances) whose
    DeviceName is the disk's device name (with or without ``/dev/``). Returns ``(volume_id, device name)``; raises
    StillpointError when no mapping or more than one has that name (never guessed)."""
    device = pv_device_name(disk)
    found = [b for b in (instance or {}).get("BlockDeviceMappings") or []
             if _bare_device(b.get("DeviceName")) == _bare_device(device) and (b.get("Ebs") or {}).get("VolumeId")]
    if not found:
        raise StillpointError("its device name %s (Xen PV target %s) is in none of instance %s's block device "
                              "mappings (%s)" % (device, disk.get("SCSITargetId"), instance.get("InstanceId"), ", ".join(
                                  b.get("DeviceName") or "?" for b in instance.get("BlockDeviceMappings") or []) or "none"))
    if len(found) > 1:
        raise StillpointError("its device name %s matches %d block device mappings of instance %s (%s)" % (
            device, len(found), instance.get("InstanceId"), ", ".join(
                "%s %s" % (b["DeviceName"], b["Ebs"]["VolumeId"]) for b in found)))
    return found[0]["Ebs"]["VolumeId"], found[0]["DeviceName"]


def map_disk(disk, instance=None):
    """How a member disk maps to its EBS volume: ``{"volume_id", "mapped_by", "device"}``. By the NVMe serial where
    there is one; else, for a Xen PV disk, by its target id through ``instance``'s block device mappings (which
    the caller read from EC2 for the instance the host's metadata names). Raises StillpointError saying why not."""
    vid = disk_volume_id(disk)
    if vid:
        return {"volume_id": vid, "mapped_by": MAPPED_BY_SERIAL, "device": None}
    if not is_pv_disk(disk):
        raise StillpointError("it has no EBS volume id in its serial number (%r) and is not a Xen PV disk (no %s in "
                              "its path %r): only NVMe EBS disks and Xen PV EBS disks are mapped; never guessed by disk "
                              "order" % (disk.get("SerialNumber"), PV_PATH_MARKER, disk.get("Path")))
    pv_device_name(disk)  # an instance store disk or an odd location is refused before anything else
    if instance is None:
        raise StillpointError("it is a Xen PV disk, mapped through the instance's block device mappings, and the "
                              "instance is not known (the host's instance metadata did not answer)")
    vid, device = pv_volume_id(disk, instance)
    return {"volume_id": vid, "mapped_by": MAPPED_BY_PV_TARGET, "device": device}


def pv_consistency(disks, instance):
    """Problems that show the host's Xen PV disks are not ``instance``'s: an attached EBS mapping named like a PV
    location (``/dev/sda1``, ``xvdb``..``xvdz``) with no PV disk at that target on the host."""
    targets = set(_int_or_none(d.get("SCSITargetId")) for d in disks if is_pv_disk(d)
                  and _int_or_none(d.get("SCSIBus")) == 0 and _int_or_none(d.get("SCSILogicalUnit")) == 0)
    missing = []
    for b in (instance or {}).get("BlockDeviceMappings") or []:
        t = pv_target_of_device(b.get("DeviceName"))
        if t is not None and (b.get("Ebs") or {}).get("Status") == "attached" and t not in targets:
            missing.append("%s (%s, target %d)" % (b["DeviceName"], b["Ebs"].get("VolumeId"), t))
    if missing:
        return ["instance %s has %s attached, but the host shows no Xen PV disk at that target: the host is not that "
                "instance, or an attachment is not visible yet" % (instance.get("InstanceId"), ", ".join(missing))]
    return []


def normalize_member(path):
    """``E``, ``e:``, ``E:\\`` -> ``E:\\``; a mount folder gets one trailing backslash."""
    p = (path or "").strip().replace("/", "\\")
    if re.match(r"^[A-Za-z]:?\\?$", p):
        return p[0].upper() + ":\\"
    if not re.match(r"^[A-Za-z]:\\.+", p):
        raise StillpointError("member %r is neither a drive letter (E:) nor a mount folder (C:\\mnt\\data)" % path)
    return p[0].upper() + p[1:].rstrip("\\") + "\\"


def version_tuple(text):
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:4])


def agent_version(components):
    """The AwsVssComponents version the host reports: the uninstall entry's, else the agent file's."""
    for source in ("uninstall", "file"):
        for c in components or ():
            if c.get("source") == source and c.get("version"):
                return c["version"], source
    return None, None


def vss_set_id(tags):
    """The VSS snapshot-set id in an AwsVssConfig tag value (a GUID), or None."""
    m = GUID_RE.search(tags.get(TAG_VSS_CONFIG) or "")
    return m.group(1).lower() if m else None


# --------------------------------------------------------------------------- preflight

def preflight(raw, members, min_version=MIN_AGENT_VERSION, writers_required=True, instance=None):
    """Decide from the Windows module's raw facts. Returns the array plan; raises with every problem found.
    ``instance``: DescribeInstances' record of the instance the host's metadata names (``raw["instance_id"]``),
    needed only to map Xen PV disks (:func:`map_disk`)."""
    problems = []
    version, source = agent_version(raw.get("components"))
    if version is None:
        problems.append("AwsVssComponents is not installed (no uninstall entry, no ec2-vss-agent.exe): install it "
                        "with the SSM document AWS-ConfigureAWSPackage (name AwsVssComponents)")
    elif version_tuple(version) < version_tuple(min_version):
        problems.append("AwsVssComponents %s (%s) is older than %s: update it (AWS-ConfigureAWSPackage)"
                        % (version, source, min_version))
    writers = parse_writers(raw.get("writers_output"))
    if not writers:
        problems.append("`vssadmin list writers` listed no writer (the output is not what this version reads)")
    busy = writer_in_progress(writers)
    agents = raw.get("vss_processes") or []
    if busy or agents:
        problems.append(CLEAR_IN_PROGRESS + " (writers waiting: %s; running: %s)"
                        % (", ".join(busy) or "none", ", ".join(agents) or "none"))
    bad = writer_problems(writers)
    if bad and writers_required and not busy:
        problems.append("VSS writers not stable: %s; %s" % ("; ".join(bad), WRITER_ADVICE))
    paths = [normalize_member(m) for m in members]
    if len(set(paths)) != len(paths):
        problems.append("members named twice: %s" % ", ".join(sorted(p for p in set(paths) if paths.count(p) > 1)))
    disks = dict((d.get("Number"), d) for d in raw.get("disks") or [])
    pack, volumes_by_disk = parse_disk_details(raw.get("diskpart_disks"))
    selected = {}
    for path in paths:
        text = (raw.get("diskpart_members") or {}).get(path)
        detail = parse_volume_detail(text)
        if detail["volume"] is None or not detail["disks"]:
            problems.append("volume %s not found by diskpart (select volume / detail volume): name a drive letter or "
                            "mount folder of the array" % path)
            continue
        selected[path] = detail
    member_volumes = set(d["volume"] for d in selected.values())
    member_disks = sorted(set(r["number"] for d in selected.values() for r in d["disks"]))
    mapped = {}
    for n in member_disks:
        disk = disks.get(n)
        row = next((r for r in pack if r["number"] == n), None)
        if disk is None:
            problems.append("disk %s (under %s) is not in Get-Disk's list" % (n, ", ".join(
                p for p, d in selected.items() if n in [r["number"] for r in d["disks"]])))
            continue
        if disk.get("IsOffline") or (row and row["status"].lower() != "online"):
            state = "offline" if disk.get("IsOffline") else row["status"]
            problems.append("disk %s is %s: %s" % (n, state, CLUSTER_ADVICE
                                                   if raw.get("cluster_service") else "bring it online first"))
        try:
            mapped[n] = map_disk(disk, instance)
        except StillpointError as exc:
            problems.append("disk %s is not mapped to an EBS volume: %s" % (n, exc.msg))
        others = sorted(set(volumes_by_disk.get(n, [])) - member_volumes)
        if others:
            problems.append("disk %s also holds volume(s) %s that are not named: name every volume of the array's "
                            "disks, or the set would hold half of another volume" % (n, ", ".join(map(str, others))))
    by_volume = {}
    for n, m in sorted(mapped.items()):
        by_volume.setdefault(m["volume_id"], []).append(n)
    for vid, nums in sorted(by_volume.items()):
        if len(nums) > 1:
            problems.append("disks %s all map to EBS volume %s: refusing to guess which one it is"
                            % (", ".join(map(str, nums)), vid))
    if any(m["mapped_by"] == MAPPED_BY_PV_TARGET for m in mapped.values()):
        problems.extend(pv_consistency(raw.get("disks") or [], instance))
    dynamic = [r for r in pack if r["dynamic"]]
    if any(r["number"] in member_disks for r in dynamic):
        sick = [r for r in dynamic if r["status"].lower() != "online"]
        if sick:
            problems.append("the dynamic pack is not healthy: %s; a dynamic array is snapshotted only with every disk "
                            "of its pack online" % ", ".join("disk %d %s" % (r["number"], r["status"]) for r in sick))
    if problems:
        raise StillpointError("preflight on the Windows host refused the snapshot: " + "; ".join(problems),
                              problems=problems, writers=writers, agent_version=version)
    rows = dict((r["number"], r) for r in parse_volume_rows(raw.get("diskpart_disks")))
    array = []
    for path in paths:
        nums = [r["number"] for r in selected[path]["disks"]]
        array.append({"path": path, "volume": selected[path]["volume"], "disks": nums,
                      "volume_ids": [mapped[n]["volume_id"] for n in nums],
                      "mapped_by": [mapped[n]["mapped_by"] for n in nums],
                      "identity": volume_identity(rows.get(selected[path]["volume"]))})
    volume_ids = []
    for n in member_disks:
        vid = mapped[n]["volume_id"]
        if vid not in volume_ids:
            volume_ids.append(vid)
    return {"members": array, "volume_ids": volume_ids, "disks": member_disks, "writers": writers,
            "agent_version": version, "hostname": raw.get("hostname"),
            "mapping": dict((n, mapped[n]) for n in member_disks)}


# --------------------------------------------------------------------------- the snapshot (SSM)

def ssm_tags(tags):
    """The ``tags`` parameter of the VSS documents: ``Key=k,Value=v;Key=...`` (AWS's format)."""
    for k, v in tags.items():
        if not SSM_TAG_CHARS.match(k) or not SSM_TAG_CHARS.match(v) or "," in k + v or ";" in k + v:
            raise StillpointError("tag %s=%s has characters the VSS document refuses" % (k, v))
    return ";".join("Key=%s,Value=%s" % kv for kv in sorted(tags.items()))


def ssm_parameters(exclude_boot, copy_only, writers, description, tags, timeout):
    return {"ExcludeBootVolume": [str(bool(exclude_boot))], "CopyOnly": [str(bool(copy_only))],
            "NoWriters": [str(not writers)], "CreateAmi": ["False"], "description": [description],
            "tags": [ssm_tags(tags)], "executionTimeout": [str(int(timeout))]}


def run_vss_command(ssm, instance_id, parameters, timeout, poll=2.0, sleep=time.sleep, clock=time.monotonic):
    """SendCommand ``AWSEC2-CreateVssSnapshot`` to the instance and wait for its invocation to end.
    Returns ``{"command_id", "status", "status_details", "stdout", "stderr", "response_code"}``."""
    try:
        sent = ssm.send_command(DocumentName=SSM_DOCUMENT, InstanceIds=[instance_id], Parameters=parameters,
                                TimeoutSeconds=max(30, int(timeout)), Comment="stillpoint.snapshots win_vss_snapshot_set")
    except ebs.aws_errors() as e:
        raise ebs.aws_error("SSM SendCommand %s to %s (nothing was snapshotted; the instance needs SSM Agent and an "
                            "instance profile allowed to use Systems Manager)" % (SSM_DOCUMENT, instance_id), e)
    command_id = sent["Command"]["CommandId"]
    start = clock()
    while True:
        inv = command_invocation(ssm, command_id, instance_id, unknown_ok=clock() - start <= 60)
        if inv.get("Status") in SSM_DONE:
            return {"command_id": command_id, "status": inv["Status"], "status_details": inv.get("StatusDetails"),
                    "stdout": inv.get("StandardOutputContent") or "", "stderr": inv.get("StandardErrorContent") or "",
                    "response_code": inv.get("ResponseCode")}
        if clock() - start > timeout + 60:
            raise StillpointError("SSM command %s (%s) still %s after %d s; its snapshots, if any, carry "
                                  "stillpoint:set-id (backup_set_info / backup_set_prune find them)"
                                  % (command_id, SSM_DOCUMENT, inv.get("Status"), timeout + 60), command_id=command_id)
        sleep(poll)


def command_invocation(ssm, command_id, instance_id, unknown_ok=True):
    """One GetCommandInvocation of ``command_id`` on the instance; ``{"Status": "Pending"}`` while SSM does not know
    the invocation yet (``InvocationDoesNotExist``, right after SendCommand) and ``unknown_ok``."""
    try:
        return ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ebs.aws_errors() as e:
        if ebs.error_code(e) != "InvocationDoesNotExist" or not unknown_ok:
            raise ebs.aws_error("SSM GetCommandInvocation %s (command %s)" % (instance_id, command_id), e)
        return {"Status": "Pending"}


def classify_failure(output):
    """What the agent's output says went wrong (its texts are not documented; matched loosely)."""
    low = (output or "").lower()
    if "in_progress" in low or "in progress" in low:
        return "in_progress"
    if "writer" in low:
        return "writer"
    if "thaw" in low or "timed out" in low or "timeout" in low:
        return "hold"
    return None


# --------------------------------------------------------------------------- the proof

def prove(members, snapshots, writers=True, command_status="Success"):
    """Check the snapshots one VSS run made against the array's members (``[{"volume_id", ...}]``).

    Returns ``{"members": [...with snapshot_id], "others": [ids], "vss_set_id", "level"}``; raises a
    StillpointError (with ``why``) when the set is not what the user asked for."""
    by_volume = {}
    for s in snapshots:
        by_volume.setdefault(s.get("VolumeId"), []).append(s)
    problems = []
    out = []
    for m in members:
        found = by_volume.get(m["volume_id"], [])
        if not found:
            problems.append("member %s has no snapshot" % m["volume_id"])
        elif len(found) > 1:
            problems.append("member %s has %d snapshots" % (m["volume_id"], len(found)))
        else:
            out.append(dict(m, snapshot_id=found[0]["SnapshotId"], state=found[0].get("State")))
    member_ids = set(m["volume_id"] for m in members)
    others = [s["SnapshotId"] for s in snapshots if s.get("VolumeId") not in member_ids]
    tags = dict((s["SnapshotId"], catalog.tag_dict(s.get("Tags"))) for s in snapshots)
    configs = set(tags[s["SnapshotId"]].get(TAG_VSS_CONFIG) for s in snapshots)
    set_ids = set(vss_set_id(t) for t in tags.values())
    if None in configs:
        problems.append("snapshot(s) without the AwsVssConfig tag: %s" % ", ".join(
            sorted(sid for sid, t in tags.items() if not t.get(TAG_VSS_CONFIG))))
    elif None in set_ids and len(configs) > 1:
        problems.append("AwsVssConfig values differ and carry no snapshot-set id this version reads: %s"
                        % "; ".join(sorted(configs)))
    elif None not in set_ids and len(set_ids) > 1:
        problems.append("snapshots from different VSS snapshot sets: %s" % ", ".join(sorted(set_ids)))
    not_app = sorted(sid for sid, t in tags.items() if sid not in others
                     and (t.get(TAG_APP_CONSISTENT) or "").lower() != "true")
    if writers and not_app:
        problems.append("member snapshot(s) without AppConsistent=true (the agent did not finish inside VSS's "
                        "freeze): %s" % ", ".join(not_app))
    if command_status != "Success":
        problems.append("the SSM command ended %s" % command_status)
    if problems:
        raise StillpointError("; ".join(problems), why=problems)
    vss_id = next(iter(set_ids)) if len(set_ids) == 1 else None
    return {"members": out, "others": others, "vss_set_id": vss_id,
            "level": "application" if writers else "filesystem"}


# --------------------------------------------------------------------------- the procedure

def _find_snapshots(ec2, set_id, expect, tries=3, sleep=time.sleep):
    """The snapshots tagged with this run's set id (the agent applies the run's tags at creation)."""
    snaps = []
    for i in range(tries):
        snaps = ebs.describe_snapshots(ec2, filters=[{"Name": "tag:%s" % catalog.K_SET_ID, "Values": [set_id]}])
        if len(snaps) >= expect:
            break
        if i + 1 < tries:
            sleep(2.0)
    return snaps


def layout(pre):
    """The set's array descriptor (``stillpoint:array``) from :func:`preflight`'s plan: each volume's path, the EBS
    volumes it lies on and, where diskpart showed it, what it looked like (``identity``)."""
    volumes = []
    for m in pre["members"]:
        entry = {"path": m["path"], "volume_ids": m["volume_ids"]}
        if m.get("mapped_by"):
            entry["mapped_by"] = m["mapped_by"]
        if m.get("identity"):
            entry["identity"] = m["identity"]
        volumes.append(entry)
    return {"kind": "windows-volumes", "volumes": volumes}


def take(params, execute, aws, check_mode=False, sleep=time.sleep, on_progress=None):
    """The whole procedure. ``execute(module, args)`` runs a module on the Windows host and returns its result;
    ``aws.client(service, ...)`` gives boto3 clients (plugin_utils/_aws.TaskAWS)."""
    writers = params["writers"]
    if params.get("set_id") and not check_mode:
        found = ebs.existing_set(aws.client("ec2", retry_decorator=ebs.RETRY), params["set_id"], wait=params["wait"],
                                 wait_timeout=params["wait_timeout"], poll_interval=params["poll_interval"])
        if found is not None:
            return found
    members = [normalize_member(m) for m in params["members"]]
    args = dict(members=members, report="preflight")
    raw = execute(WINDOWS_MODULE, args)
    if raw.get("failed"):
        raise StillpointError("the Windows side (%s) failed: %s" % (WINDOWS_MODULE, raw.get("msg")), host=raw)
    ec2 = aws.client("ec2", retry_decorator=ebs.RETRY)
    host_instance_id = raw.get("instance_id") or None
    instance = None
    if any(is_pv_disk(d) for d in raw.get("disks") or []) and host_instance_id:
        # Xen PV disks carry no volume id: they are mapped through the block device mappings of the instance the
        # host's own metadata (IMDSv2) names; the volumes found are checked below to be attached to it
        instance = ebs.describe_instance(ec2, host_instance_id)
    pre = preflight(raw, members, params["min_agent_version"], writers_required=writers, instance=instance)
    instance_id = ebs.instance_for_volumes(ec2, pre["volume_ids"])
    if host_instance_id and instance_id != host_instance_id:
        raise StillpointError("the host's instance metadata names instance %s, but the member volumes %s are attached "
                              "to %s; refusing (nothing was created)"
                              % (host_instance_id, ", ".join(pre["volume_ids"]), instance_id))
    if instance is None or instance.get("InstanceId") != instance_id:
        instance = ebs.describe_instance(ec2, instance_id)
    plan = ebs.plan_members(instance, include_volume_ids=pre["volume_ids"], exclude_boot_volume=True)
    mounts = {}
    for m in pre["members"]:
        for vid in m["volume_ids"]:
            mounts.setdefault(vid, []).append(m["path"])
    array = layout(pre)
    result = {"changed": not check_mode, "instance_id": instance_id, "agent_version": pre["agent_version"],
              "members": plan["members"], "array": array, "writers": pre["writers"], "method": "ssm",
              "copy_only": params["copy_only"], "exclude_boot_volume": plan["exclude_boot_volume"]}
    if check_mode:
        result.update(state=None, set_id=None, level=None,
                      msg="preflight passed; would run %s on %s" % (SSM_DOCUMENT, instance_id))
        return result
    set_id = params.get("set_id") or catalog.new_set_id()
    run_tags = {catalog.K_CREATOR: catalog.CREATOR, catalog.K_SET_ID: set_id, catalog.K_STATE: "pending"}
    parameters = ssm_parameters(plan["exclude_boot_volume"], params["copy_only"], writers,
                                params.get("description") or "stillpoint.snapshots set %s" % set_id, run_tags,
                                params["command_timeout"])
    ssm = aws.client("ssm", retry_decorator=ebs.RETRY)
    command = run_vss_command(ssm, instance_id, parameters, params["command_timeout"], sleep=sleep)
    result.update(set_id=set_id, command=command)
    snaps = _find_snapshots(ec2, set_id, len(plan["members"]), sleep=sleep)
    ids = [s["SnapshotId"] for s in snaps]
    try:
        proof = prove(plan["members"], snaps, writers, command["status"])
    except StillpointError as exc:
        rb = ebs.rollback(ec2, ids)
        states = None
        try:
            after = execute(WINDOWS_MODULE, dict(members=members, report="writers"))
            states = parse_writers(after.get("writers_output")) if not after.get("failed") else None
        except StillpointError:
            pass
        kind = classify_failure(command["stdout"] + command["stderr"])
        if kind != "in_progress" and states and writer_problems(states):
            kind = "writer"
        advice = {"in_progress": CLEAR_IN_PROGRESS, "hold": HOLD_ADVICE, "writer": WRITER_ADVICE}.get(kind)
        msg = "VSS set refused: %s; %s (%d snapshot(s) left)%s%s" % (
            exc.msg, "nothing was created" if not ids else "the whole set was deleted" if not rb["left_partial"]
            else "deleted except %s, tagged partial" % ", ".join(rb["left_partial"]),
            len(rb["left_partial"]), "; writers now: %s" % ("; ".join(
                "%s: %s / %s" % (w["name"], w["state"], w["last_error"]) for w in states) if states else "unknown"),
            "; " + advice if advice else "")
        raise StillpointError(msg, rollback=rb, command=command, writers=states, why=exc.details.get("why"),
                              set_id=set_id, instance_id=instance_id)
    deleted, failed = ebs.delete_ours(ec2, proof["others"])
    member_ids = [m["snapshot_id"] for m in proof["members"]]
    shared = catalog.set_tags(set_id, params.get("name"), len(plan["members"]), instance_id,
                              plan["availability_zone"], pre["hostname"], proof["level"], state="pending",
                              procedure=PROCEDURE, array=array)
    try:
        map_tags, per_member = catalog.member_catalog_tags([(m["index"], m["device"], m["volume_id"],
                                                            mounts.get(m["volume_id"], ())) for m in proof["members"]])
        ebs.tag(ec2, member_ids, dict(shared, **map_tags))
        ebs.tag_members(ec2, proof["members"], per_member)
    except StillpointError as e:
        e.details["rollback"] = ebs.rollback(ec2, member_ids)
        e.msg += "; the set was rolled back"
        raise
    result.update(level=proof["level"], vss_set_id=proof["vss_set_id"], snapshot_ids=member_ids,
                  members=proof["members"], state="pending",
                  other_snapshots={"deleted": deleted, "errors": failed})
    if params["wait"]:
        result.update(ebs.finish(ec2, member_ids, params["wait_timeout"], params["poll_interval"],
                                 on_progress=on_progress, sleep=sleep))
    return result


ARGUMENT_SPEC = dict(
    members=dict(type="list", elements="str", required=True),
    name=dict(type="str"),
    set_id=dict(type="str"),
    writers=dict(type="bool", default=True),
    copy_only=dict(type="bool", default=True),
    description=dict(type="str"),
    min_agent_version=dict(type="str", default=MIN_AGENT_VERSION),
    command_timeout=dict(type="int", default=600),
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=14400),
    poll_interval=dict(type="float", default=15.0),
)
