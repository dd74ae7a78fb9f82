# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE Windows disk subsystem of one EC2 instance (tests only; not Microsoft software).

It stands in for what the windows_ebs_disk role's scripts Get-EbsArrayDisks.ps1 and Set-EbsArrayDisks.ps1
meet on a Windows host: Get-Disk, diskpart, chkdsk and the instance metadata. No PowerShell runs here:
:meth:`FakeWindowsDisks.gather` and :meth:`FakeWindowsDisks.apply` do what those two scripts do (their
contract, as their headers state it) against this model, and render diskpart's output in the layout of the
fixtures under tests/unit/fixtures/vss (sources in their README). The model, and the documentation each
behaviour follows:

* the disks are the EBS volumes EC2 says are attached to the instance (DescribeInstances at the strict
  endpoint), numbered boot first, then by device name; the serial number is the volume id without the dash
  (AWS, "Map NVMe disks on Amazon EC2 Windows instance to volumes"). In Xen mode (``new_state(xen=True)``) they
  are Xen PV disks instead: no volume id in the serial, Get-Disk's Path holds PROD_PVDISK and Win32_DiskDrive's
  target id is the one AWS's table gives the device name of the block device mapping (AWS, "Map non-NVMe disks
  on Amazon EC2 Windows instance to volumes"; the rest of the record is the FAKE's, see windows.py). The target id
  follows the instance's block device mappings at every read: after a swap the restored volume, attached at the old
  volume's device name, is the disk at the old target id. The restore's scripts find such a disk by that location
  (Set-EbsArrayDisks.ps1's ``pv_target``), and the gather script asks the instance metadata whenever it sees a PV
  disk (as Get-EbsArrayDisks.ps1 does). A volume made from a snapshot carries the
  on-disk content (partition style, MBR signature / GPT disk GUID, dynamic pack, volumes) of the snapshot's
  source volume;
* a disk seen for the first time follows the SAN policy (diskpart ``san``: with ``OfflineAll`` new disks are
  offline and read-only; ``OnlineAll`` online), and a disk whose signature/GUID is that of an online disk is
  kept offline with OfflineReason ``Collision`` (MSFT_Disk / VDS_DISK_OFFLINE_REASON: "its disk signature is the
  same as that of another disk that is online");
* a dynamic disk that arrives while no disk of its pack is online on the host comes back ``Foreign`` (the field
  report issue 16 quotes: "restored dynamic disks coming back as a foreign pack that must be imported"; the exact
  condition is the FAKE's choice); a dynamic disk of a pack the host has not imported is ``Foreign`` in ``list disk`` and its volumes are not
  listed until diskpart ``import`` ("imports every disk that is in the same group as the disk with focus");
  ``offline disk`` / ``online disk`` / ``attributes disk clear readonly`` / ``uniqueid disk id=`` (diskpart
  reference pages of the same names);
* automount (diskpart ``automount``: new volumes are mounted and given a drive letter): a volume that becomes
  available gets its remembered letter if it is a basic volume whose (disk signature/GUID, partition) the host
  knows (the MountedDevices registry, keyed by disk signature and offset: Russinovich, "Fixing Disk Signature
  Collisions") and the letter is free, else the next free letter from D:. Dynamic volumes imported as a foreign
  pack get the next free letter (FAKE's choice: no source says what Windows does there);
* ``assign letter=`` / ``assign mount=`` on a letter or folder in use, ``remove letter=`` of a letter the volume
  does not hold, ``online disk`` of a disk that still collides, ``import`` of a disk that is not foreign: a
  diskpart error (exit code 2, the FAKE's own number and texts: only "non-zero with a message" is relied upon);
* ``chkdsk X:`` without ``/f``: the read-only run's text (``WARNING! /F parameter not specified. Running CHKDSK in
  read-only mode.``), exit code 0 when the volume is clean, 3 with "Errors found. CHKDSK cannot continue in
  read-only mode." when the test marked it damaged (chkdsk's documented exit codes).

Every command the FAKE runs is appended to the state's ``log`` (``["diskpart", "select disk 2", "import"]``,
``["chkdsk", "E:"]``), so tests assert what would have run on Windows.
"""

import copy
import json
import os
import re
import urllib.request

import boto3

from tests.fakes.vss.windows import xen_disk

BOOT = "boot"
LETTERS = "DEFGHIJKLMNOPQRSTUVWXYZ"
DP_HEAD = "\nMicrosoft DiskPart version 10.0.20348.1\n\nCopyright (C) Microsoft Corporation.\nOn computer: %s\n\n"
DISK_HEAD = ("  Disk ###  Status         Size     Free     Dyn  Gpt\n"
             "  --------  -------------  -------  -------  ---  ---\n")
VOL_HEAD = ("  Volume ###  Ltr  Label        Fs     Type        Size     Status     Info\n"
            "  ----------  ---  -----------  -----  ----------  -------  ---------  --------\n")
SCRIPTS = ("Get-EbsArrayDisks.ps1", "Set-EbsArrayDisks.ps1")
# the single-disk script of the CLUSTERPRO backup and its -Action for the windows_ebs_disk entry point disks
SINGLE_SCRIPT = "EbsDisk.ps1"
SINGLE_ACTIONS = ("Get",)


class DiskpartError(Exception):
    pass


def basic_content(style, ident, label, size_gb=20, errors=False):
    """A basic disk with one NTFS data partition."""
    return {"style": style, "id": ident, "dynamic": False, "group": None, "ldm": None, "size_gb": size_gb,
            "volumes": [{"key": "part1", "label": label, "fs": "NTFS", "type": "Partition", "size_gb": size_gb - 1,
                         "extents": ["self"], "errors": errors}]}


def dynamic_pack(group, idents, volumes, size_gb=10):
    """The contents of the disks of one dynamic pack: ``volumes`` = ``[{"key", "label", "type", "disks":
    [indexes]}]``; every disk of the pack carries the pack's database (as LDM does)."""
    ldm = ["ldm-%s-%d" % (group, i) for i in range(len(idents))]
    table = [{"key": v["key"], "label": v["label"], "fs": "NTFS", "type": v["type"],
              "size_gb": v.get("size_gb", size_gb * len(v["disks"]) - 1), "extents": [ldm[i] for i in v["disks"]],
              "errors": v.get("errors", False)} for v in volumes]
    return [{"style": "GPT", "id": ident, "dynamic": True, "group": group, "ldm": ldm[i], "size_gb": size_gb,
             "volumes": table} for i, ident in enumerate(idents)]


def new_state(ec2_url, region, instance_id, boot_volume_id, contents, letters=None, san_policy="OfflineAll",
              computer_name="FAKE-SQL01", xen=False):
    """The FAKE host as it was at backup time: ``contents`` {volume_id: content}, those disks online, their packs
    imported, ``letters`` {volume_id: {volume key: letter}} mounted; ``xen``: a Xen instance (PV disks)."""
    state = {"ec2": {"url": ec2_url, "region": region, "instance_id": instance_id}, "boot_volume_id": boot_volume_id,
             "xen": bool(xen),
             "computer_name": computer_name, "san_policy": san_policy, "content": {}, "disk": {}, "groups": [],
             "letters": {}, "mounts": {}, "log": []}
    for vid, content in contents.items():
        state["content"][vid] = copy.deepcopy(content)
        state["disk"][vid] = {"offline": False, "read_only": False, "reason": None}
        if content["group"] and content["group"] not in state["groups"]:
            state["groups"].append(content["group"])
    host = FakeWindowsDisks(state)
    for vid, keys in (letters or {}).items():
        for key, letter in keys.items():
            state["letters"][host.volume_key(vid, key)] = letter
    return state


def xen_sql_host(ec2, inst, backup_guid, others=None):
    """FAKE: the Windows host of a Xen instance ``inst`` (PV disks; its volumes attached in the order of its first three
    devices, and any after them): E: a spanned volume of the dynamic pack grp-sql01 on its first two volumes, F: a
    GPT disk (``backup_guid``) on its third; ``others`` {index: (guid, label, letter)} adds basic GPT disks."""
    vols = [v["volume_id"] for v in inst["volumes"]]
    pack = dynamic_pack("grp-sql01", ["3f1e2d4c-5b6a-4789-8a9b-0c1d2e3f4a5b", "7a6b5c4d-3e2f-4109-8b7a-6c5d4e3f2a1b"],
                        [{"key": "vE", "label": "SQLDATA", "type": "Spanned", "disks": [0, 1]}])
    boot = basic_content("MBR", "6a4b3c2d", "SYSTEM", 30)
    boot["volumes"] = []
    contents = {inst["boot_volume_id"]: boot, vols[0]: pack[0], vols[1]: pack[1],
                vols[2]: basic_content("GPT", backup_guid, "BACKUP")}
    letters = {vols[0]: {"vE": "E"}, vols[2]: {"part1": "F"}}
    for index, (guid, label, letter) in (others or {}).items():
        contents[vols[index]] = basic_content("GPT", guid, label)
        letters[vols[index]] = {"part1": letter}
    return FakeWindowsDisks(new_state(ec2.url, ec2.region, inst["instance_id"], inst["boot_volume_id"], contents,
                                      letters=letters, xen=True))


def _diskpart_target(path):
    """How the scripts name a path to diskpart's ``select volume=``: ``E`` for ``E:\\``, the folder without its
    trailing backslash for a mount folder."""
    target = path.rstrip("\\")
    return target[0] if re.match(r"^[A-Za-z]:$", target) else target


class FakeWindowsDisks:
    """The model over one state dict (``load``/``save`` for a JSON file shared with the FAKE module)."""

    def __init__(self, state, ec2=None):
        self.state = state
        self._ec2 = ec2
        # without an endpoint (unit tests): state["attached"] [[device, volume_id]] and state["origin"] {copy: source}

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def save(self, path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.state, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ EC2 and the disks

    def ec2(self):
        if self._ec2 is None:
            e = self.state["ec2"]
            self._ec2 = boto3.client("ec2", endpoint_url=e["url"], region_name=e["region"],
                                     aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._ec2

    def attached(self):
        """``[(device, volume_id)]`` attached (or attaching) now, boot first, then by device name."""
        if "attached" in self.state:
            boot = self.state["boot_volume_id"]
            return sorted([tuple(a) for a in self.state["attached"]], key=lambda dv: (dv[1] != boot, dv[0]))
        inst = self.ec2().describe_instances(InstanceIds=[self.state["ec2"]["instance_id"]])
        inst = inst["Reservations"][0]["Instances"][0]
        out = [(b["DeviceName"], b["Ebs"]["VolumeId"]) for b in inst.get("BlockDeviceMappings") or []
               if b["Ebs"].get("Status") in ("attached", "attaching")]
        boot = self.state["boot_volume_id"]
        return sorted(out, key=lambda dv: (dv[1] != boot, dv[0]))

    def _content_of(self, vid):
        if vid in self.state["content"]:
            return self.state["content"][vid]
        src = (self.state.get("origin") or {}).get(vid)
        if src in self.state["content"]:
            self.state["content"][vid] = copy.deepcopy(self.state["content"][src])
            return self.state["content"][vid]
        seen = set()
        cur = vid
        while "attached" not in self.state and cur and cur not in seen:
            seen.add(cur)
            vols = self.ec2().describe_volumes(VolumeIds=[cur])["Volumes"]
            snap = vols[0].get("SnapshotId") if vols else None
            if not snap:
                break
            src = self.ec2().describe_snapshots(SnapshotIds=[snap])["Snapshots"][0].get("VolumeId")
            if src in self.state["content"]:
                self.state["content"][vid] = copy.deepcopy(self.state["content"][src])
                return self.state["content"][vid]
            cur = src
        self.state["content"][vid] = {"style": "RAW", "id": None, "dynamic": False, "group": None, "ldm": None,
                                      "size_gb": 1, "volumes": []}
        return self.state["content"][vid]

    def disks(self):
        """The disks now: ``[{"number", "volume_id", "content", "state"}]``; a disk seen for the first time
        arrives as the SAN policy and a signature collision with an online disk say."""
        out = [{"number": number, "volume_id": vid, "device": dev, "content": self._content_of(vid),
                "state": self.state["disk"].get(vid)} for number, (dev, vid) in enumerate(self.attached())]
        for d in out:
            if d["state"] is not None:
                continue
            offline = self.state["san_policy"] == "OfflineAll" and d["volume_id"] != self.state["boot_volume_id"]
            st = {"offline": offline, "read_only": offline, "reason": "Policy" if offline else None}
            ident = d["content"]["id"]
            if ident and any(o is not d and o["state"] is not None and not o["state"]["offline"]
                             and o["content"]["id"] == ident for o in out):
                st.update(offline=True, reason="Collision")
            group = d["content"]["group"]
            if group and group in self.state["groups"] and not any(
                    o is not d and o["state"] is not None and not o["state"]["offline"] and o["content"]["group"] == group
                    for o in out):
                self.state["groups"].remove(group)  # no disk of the pack is online here: it comes back foreign
                prefix = "dyn:%s:" % group  # and its volumes are new volumes to automount after the import
                self.state["letters"] = dict((k, v) for k, v in self.state["letters"].items() if not k.startswith(prefix))
                self.state["mounted_once"] = [k for k in self.state.get("mounted_once", []) if not k.startswith(prefix)]
            self.state["disk"][d["volume_id"]] = d["state"] = st
        self._automount(out)
        return out

    def status(self, d):
        if d["state"]["offline"]:
            return "Offline"
        if d["content"]["dynamic"] and d["content"]["group"] not in self.state["groups"]:
            return "Foreign"
        return "Online"

    def volume_key(self, vid, key):
        content = self.state["content"][vid]
        if content["dynamic"]:
            return "dyn:%s:%s" % (content["group"], key)
        return "basic:%s:%s" % (content["id"], key)

    def volumes(self, disks=None):
        """The available volumes: ``[{"key", "label", "fs", "type", "size_gb", "disks": [disk dicts], "errors"}]``,
        the boot volume first."""
        disks = self.disks() if disks is None else disks
        out = []
        seen = set()
        by_ldm = dict((d["content"]["ldm"], d) for d in disks if d["content"]["ldm"])
        for d in disks:
            if self.status(d) != "Online":
                continue
            for v in d["content"]["volumes"]:
                key = self.volume_key(d["volume_id"], v["key"])
                if key in seen:
                    continue
                on = [d] if v["extents"] == ["self"] else [by_ldm.get(x) for x in v["extents"]]
                if None in on or any(self.status(o) != "Online" for o in on):
                    continue
                seen.add(key)
                out.append(dict(v, key=key, disks=on))
        return out

    def _automount(self, disks):
        used = set(["C"])
        vols = self.volumes(disks) if disks is not None else []
        for v in vols:
            letter = self.state["letters"].get(v["key"])
            if letter in used:
                del self.state["letters"][v["key"]]
            elif letter:
                used.add(letter)
        for v in vols:
            if v["key"] not in self.state["letters"] and not self.state["mounts"].get(v["key"]) \
                    and v["key"] not in self.state.setdefault("mounted_once", []):
                free = next((c for c in LETTERS if c not in used), None)
                if free:
                    self.state["letters"][v["key"]] = free
                    used.add(free)
                self.state["mounted_once"].append(v["key"])

    def numbered(self):
        """``(disks, [(number, volume)])``: diskpart's volume numbers, C: is volume 0."""
        disks = self.disks()
        return disks, [(i + 1, v) for i, v in enumerate(self.volumes(disks))]

    # ------------------------------------------------------------------ rendering

    def _disk_row(self, d, mark=" "):
        """A row at the header's column positions (Status 12, Size 27, Free 36, Dyn 45, Gpt 50)."""
        c = d["content"]
        row = "%s Disk %d" % (mark, d["number"])
        row = row.ljust(12) + self.status(d)
        row = row.ljust(27) + ("%d GB" % c["size_gb"]).rjust(7)
        row = row.ljust(36) + "0 B".rjust(7)
        row = row.ljust(46) + ("*" if c["dynamic"] else " ")
        row = row.ljust(51) + ("*" if c["style"] == "GPT" else " ")
        return row.rstrip() + "\n"

    def _vol_row(self, number, v, letter):
        return "  Volume %-4d %-3s  %-11s  %-5s  %-10s  %4d GB  %-9s  %s\n" % (
            number, letter or "", v["label"], v["fs"], v["type"], v["size_gb"], "Healthy", "")

    def list_disk(self, disks):
        return DISK_HEAD + "".join(self._disk_row(d) for d in disks) + "\n"

    def list_volume(self, vols):
        rows = "  Volume 0     C                NTFS   Partition     29 GB  Healthy    Boot\n"
        rows += "".join(self._vol_row(n, v, self.state["letters"].get(v["key"])) for n, v in vols)
        return VOL_HEAD + rows + "\n"

    def detail_disk(self, d, vols):
        c = d["content"]
        ident = ("{%s}" % c["id"].upper()) if c["style"] == "GPT" else (c["id"] or "00000000").upper()
        boot = d["volume_id"] == self.state["boot_volume_id"]
        kind = ("FAKE AWS PV disk\nDisk ID: %s\nType   : SCSI\n" if self.state.get("xen") else
                "NVMe Amazon Elastic B\nDisk ID: %s\nType   : NVMe\n")
        text = ("Disk %d is now the selected disk.\n\n" + kind +
                "Status : %s\nPath   : 0\nTarget : 0\nLUN ID : 0\nCurrent Read-only State : %s\nRead-only  : %s\n"
                "Boot Disk  : %s\nPagefile Disk  : %s\nHibernation File Disk  : No\nCrashdump Disk  : No\n"
                "Clustered Disk  : No\n\n") % (d["number"], ident, self.status(d), "Yes" if d["state"]["read_only"] else "No",
                                               "Yes" if d["state"]["read_only"] else "No", "Yes" if boot else "No",
                                               "Yes" if boot else "No")
        if boot:
            return text + VOL_HEAD + "  Volume 0     C                NTFS   Partition     29 GB  Healthy    Boot\n\n"
        mine = [(n, v) for n, v in vols if d in v["disks"]]
        if not mine:
            return text + "There are no volumes.\n\n"
        return text + VOL_HEAD + "".join(self._vol_row(n, v, self.state["letters"].get(v["key"])) for n, v in mine) + "\n"

    def detail_volume(self, number, v, disks):
        on = [d for d in disks if d["number"] == 0] if v is None else v["disks"]
        text = "Volume %d is the selected volume.\n\n" % number + DISK_HEAD
        text += "".join(self._disk_row(d, "*" if i == 0 else " ") for i, d in enumerate(on))
        return text + ("\nRead-only              : No\nHidden                 : No\nNo Default Drive Letter: No\n"
                       "Shadow Copy            : No\nOffline                : No\nBitLocker Encrypted    : No\n"
                       "Installable            : Yes\n\nVolume Capacity        :   %d GB\n\n" % (v or {"size_gb": 29})["size_gb"])

    # ------------------------------------------------------------------ the scripts' contracts

    def get_disk(self, disks):
        out = []
        for d in disks:
            c = d["content"]
            out.append({"Number": d["number"], "SerialNumber": d["volume_id"].replace("-", "") + "_00000001.",
                        "IsOffline": d["state"]["offline"], "IsReadOnly": d["state"]["read_only"],
                        "OfflineReason": d["state"]["reason"] if d["state"]["offline"] else None,
                        "PartitionStyle": c["style"], "Signature": c["id"] if c["style"] == "MBR" else None,
                        "Guid": ("{%s}" % c["id"]) if c["style"] == "GPT" else "",
                        "IsBoot": d["volume_id"] == self.state["boot_volume_id"],
                        "IsSystem": d["volume_id"] == self.state["boot_volume_id"]})
            if self.state.get("xen"):
                out[-1] = xen_disk(out[-1], d["device"])
        return out

    def find_volume(self, target, vols):
        """The volume at a drive letter (``E``) or mount folder, or None."""
        t = target.rstrip("\\").upper()
        if t == "C":
            return 0, None
        for n, v in vols:
            if (self.state["letters"].get(v["key"]) or "") == t[:1] and len(t) == 1:
                return n, v
            if any(m.rstrip("\\").upper() == t for m in self.state["mounts"].get(v["key"], [])):
                return n, v
        return None

    def vss_facts(self, members):
        """The disk facts win_vss_snapshot_set.ps1 returns for ``members`` (paths as the module passes them): Get-Disk,
        diskpart's ``list disk`` and ``select disk N`` + ``detail disk`` of every disk, ``select volume`` + ``detail
        volume`` per member; for fake_windows_facts (tests/fakes/vss/windows.py) in place of its fixtures, so that a
        set is taken from the same FAKE host a restore then meets."""
        disks, vols = self.numbered()
        head = DP_HEAD % self.state["computer_name"]
        out = {"disks": self.get_disk(disks), "diskpart_members": {}, "instance_id": self.state["ec2"]["instance_id"],
               "imds_error": None,
               "diskpart_disks": head + self.list_disk(disks) + "".join(self.detail_disk(d, vols) for d in disks)}
        for member in members:
            found = self.find_volume(_diskpart_target(member), vols)
            out["diskpart_members"][member] = head + (self.detail_volume(found[0], found[1], disks) if found else
                                                      "There is no volume selected.\n")
        return out

    def gather(self, params, imds=None):
        """What Get-EbsArrayDisks.ps1 returns."""
        disks, vols = self.numbered()
        head = DP_HEAD % self.state["computer_name"]
        text = head + self.list_disk(disks) + self.list_volume(vols)
        text += head + "".join(self.detail_disk(d, vols) for d in disks)
        text += "".join(self.detail_volume(0, None, disks) if n == 0 else "" for n in [0])
        text += "".join(self.detail_volume(n, v, disks) for n, v in vols)
        self.log("diskpart", "list disk", "list volume")
        paths = {}
        for path in params.get("Path") or []:
            target = _diskpart_target(path)
            self.log("diskpart", 'select volume="%s"' % target, "detail volume")
            found = self.find_volume(target, vols)
            if found is None:
                paths[path] = {"rc": 2, "output": head + "There is no volume selected.\n\nThe volume you selected is "
                                                         "not valid or does not exist.\n"}
            else:
                paths[path] = {"rc": 0, "output": head + self.detail_volume(found[0], found[1], disks)}
        parts, parts_text = self.read_partitions(params.get("PartitionDisk") or [], disks, vols)
        instance_id = imds_error = None
        pv = self.state.get("xen") and bool(disks) and not params.get("SkipMetadata")
        if "imds" in self.state and (params.get("Identify") or pv):
            # unit tests without an endpoint: the metadata's answer given in the state ({"instance_id"} or {"error"})
            instance_id, imds_error = self.state["imds"].get("instance_id"), self.state["imds"].get("error")
        elif params.get("Identify") or pv:
            base = (params.get("ImdsEndpoint") or "http://169.254.169.254").rstrip("/")
            try:
                token = urllib.request.urlopen(urllib.request.Request(
                    base + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}),
                    timeout=5).read().decode()
                instance_id = urllib.request.urlopen(urllib.request.Request(
                    base + "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}),
                    timeout=5).read().decode()
            except Exception as exc:  # as the script's catch: recorded, decided by the controller
                imds_error = "%s: %s" % (base, exc)
        return {"computer_name": self.state["computer_name"], "instance_id": instance_id, "imds_error": imds_error,
                "disks": self.get_disk(disks), "diskpart": text, "diskpart_paths": paths, "partitions": parts,
                "diskpart_partitions": parts_text if parts else ""}

    def log(self, *argv):
        self.state["log"].append(list(argv))

    def partition_table(self, d):
        """``[(number, volume, offset in bytes)]`` of a basic disk: a partition's number is its volume's place on the
        disk, from 1, each starting 1 MiB after the previous one's end, the first at 1 MiB (the FAKE's choice; the
        scripts read both numbers and offsets, Get-Partition's and diskpart's, which agree here)."""
        out = []
        offset = 1 << 20
        for i, v in enumerate(v for v in d["content"]["volumes"] if v["extents"] == ["self"]):
            out.append((i + 1, v, offset))
            offset += (v["size_gb"] << 30) + (1 << 20)
        return out

    def read_partitions(self, numbers, disks, vols):
        """Get-EbsArrayDisks.ps1 -PartitionDisk: ``(Get-Partition records, diskpart text)`` of the disks ``numbers``."""
        records, text = [], DP_HEAD % self.state["computer_name"]
        by_key = dict((v["key"], n) for n, v in vols)
        for number in numbers:
            d = [x for x in disks if x["number"] == int(number)][0]
            for part, v, offset in self.partition_table(d):
                key = self.volume_key(d["volume_id"], v["key"])
                records.append({"DiskNumber": d["number"], "PartitionNumber": part, "Offset": offset,
                                "DriveLetter": self.state["letters"].get(key) if key in by_key else None})
                self.log("diskpart", "select disk %d" % d["number"], "select partition %d" % part, "detail partition")
                text += self.detail_partition(d, part, offset, by_key.get(key), v)
        return records, text

    def detail_partition(self, d, part, offset, number, v):
        """diskpart's ``select disk N`` + ``select partition P`` + ``detail partition`` (Microsoft's layout: the
        partition's type, flags and offset, then the volume on it in a volume table)."""
        text = ("\nDisk %d is now the selected disk.\n\nPartition %d is now the selected partition.\n\nPartition %d\n"
                "Type    : 07\nHidden  : No\nActive  : No\nOffset in Bytes: %d\n\n" % (d["number"], part, part, offset))
        if number is None:
            return text + "There is no volume associated with this partition.\n\n"
        row = self._vol_row(number, v, self.state["letters"].get(self.volume_key(d["volume_id"], v["key"])))
        return text + VOL_HEAD + "*" + row[1:] + "\n"

    def describe_instance(self, instance_id):
        """DescribeInstances' record of the instance (the endpoint's; without one, ``state["attached"]``)."""
        if "attached" not in self.state:
            return self.ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if instance_id != self.state["ec2"]["instance_id"]:
            raise DiskpartError("FAKE: no instance %s" % instance_id)
        return {"InstanceId": instance_id, "BlockDeviceMappings": [
            {"DeviceName": dev, "Ebs": {"VolumeId": vid, "Status": "attached"}} for dev, vid in self.state["attached"]]}

    def _find(self, vid, disks, target=None):
        """The disk of a step: by the volume id in its serial (NVMe), or with ``target`` as the one Xen PV disk at bus 0,
        that target, LUN 0 (what the script sees: the location, not the volume id)."""
        if target is None:
            found = [d for d in disks if d["volume_id"] == vid and not self.state.get("xen")]
            if len(found) != 1:
                raise DiskpartError("Expected exactly one disk with the serial of %s, found %d; refusing." % (vid, len(found)))
            return found[0]
        found = [d for d, g in zip(disks, self.get_disk(disks)) if g.get("SCSITargetId") == int(target)
                 and g.get("SCSIBus") == 0 and g.get("SCSILogicalUnit") == 0]
        if len(found) != 1 or not self.state.get("xen"):
            raise DiskpartError("Expected exactly one disk at Xen PV bus 0, target %s, LUN 0 (where %s is attached), "
                                "found %d; refusing." % (target, vid, len(found) if self.state.get("xen") else 0))
        return found[0]

    def check_partition(self, step, number, disks, vols, target):
        """Set-EbsArrayDisks.ps1's Assert-PartitionVolume: Get-Partition's partition of the step's number on its disk
        starts at the step's offset, and diskpart's ``detail partition`` shows the step's volume on it."""
        d = self._find(step["disks"][0], disks, target)
        part = int(step["partition"])
        found = [(v, offset) for n, v, offset in self.partition_table(d) if n == part]
        if not found:
            raise DiskpartError("Get-Partition: FAKE: disk %d has no partition %d" % (d["number"], part))
        v, offset = found[0]
        if offset != int(step["offset"]):
            raise DiskpartError("Partition %d of disk %d (%s) starts at %d, not at %s as read before; refusing."
                                % (part, d["number"], step["disks"][0], offset, step["offset"]))
        self.log("diskpart", "select disk %d" % d["number"], "select partition %d" % part, "detail partition")
        key = self.volume_key(d["volume_id"], v["key"])
        have = [n for n, vol in vols if vol["key"] == key]
        if have != [number]:
            raise DiskpartError("Partition %d of disk %d (%s) holds volume(s) %s, not volume %d; refusing."
                                % (part, d["number"], step["disks"][0], have, number))

    def apply(self, params):
        """What Set-EbsArrayDisks.ps1 does: every step in order, the first failure raises."""
        results = []
        for step in params.get("Steps") or []:
            disks, vols = self.numbered()
            op = step["op"]
            rec = {"op": op, "rc": 0, "output": ""}
            if op in ("offline", "online", "clear_readonly", "new_signature", "import"):
                d = self._find(step["volume_id"], disks, step.get("pv_target"))
                rec.update(volume_id=d["volume_id"], disk_number=d["number"])
                sel = "select disk %d" % d["number"]
                st = d["state"]
                if op == "offline":
                    if d["volume_id"] == self.state["boot_volume_id"]:
                        raise DiskpartError("Disk %d holds the running system; refusing to take it offline." % d["number"])
                    self.log("diskpart", sel, "offline disk")
                    st.update(offline=True, reason=None)
                elif op == "online":
                    self.log("diskpart", sel, "online disk")
                    twin = [o for o in disks if o is not d and o["content"]["id"] == d["content"]["id"]
                            and not o["state"]["offline"]]
                    if twin:
                        raise DiskpartError("diskpart (%s / online disk) failed (rc=2): FAKE: the disk's signature "
                                            "collides with disk %d" % (sel, twin[0]["number"]))
                    st.update(offline=False, reason=None)
                elif op == "clear_readonly":
                    self.log("diskpart", sel, "attributes disk clear readonly")
                    st["read_only"] = False
                elif op == "new_signature":
                    self.log("diskpart", sel, "uniqueid disk id=%s" % step["id"])
                    d["content"]["id"] = step["id"].lower()
                else:
                    self.log("diskpart", sel, "import")
                    if self.status(d) != "Foreign":
                        raise DiskpartError("diskpart (%s / import) failed (rc=2): FAKE: the disk is not foreign" % sel)
                    self.state["groups"].append(d["content"]["group"])
            elif op in ("assign", "remove_letter"):
                number = int(step["volume"])
                vol = dict(vols).get(number)
                targets = list(step.get("pv_targets") or []) + [None] * len(step["disks"])
                want = sorted(self._find(v, disks, t)["number"] for v, t in zip(step["disks"], targets))
                self.log("diskpart", "select volume %d" % number, "detail volume")
                have = sorted(d["number"] for d in vol["disks"]) if vol else []
                if want != have:
                    raise DiskpartError("Volume %d lies on disk(s) %s, not on the disks of %s (%s); refusing."
                                        % (number, have, step["disks"], want))
                if step.get("partition") is not None:
                    self.check_partition(step, number, disks, vols, targets[0])
                    rec["partition"] = int(step["partition"])
                rec["volume"] = number
                if op == "remove_letter":
                    self.log("diskpart", "select volume %d" % number, "remove letter=%s" % step["letter"])
                    if self.state["letters"].get(vol["key"]) != step["letter"]:
                        raise DiskpartError("diskpart remove letter=%s failed (rc=2): FAKE: not this volume's" % step["letter"])
                    del self.state["letters"][vol["key"]]
                elif step.get("letter"):
                    self.log("diskpart", "select volume %d" % number, "assign letter=%s" % step["letter"])
                    if step["letter"] == "C" or step["letter"] in [self.state["letters"].get(v["key"]) for _n, v in vols]:
                        raise DiskpartError("diskpart assign letter=%s failed (rc=2): FAKE: the drive letter is in use"
                                            % step["letter"])
                    if self.state["letters"].get(vol["key"]):
                        raise DiskpartError("diskpart assign failed (rc=2): FAKE: the volume already has a letter")
                    self.state["letters"][vol["key"]] = step["letter"]
                else:
                    self.log("diskpart", "select volume %d" % number, 'assign mount="%s"' % step["mount"])
                    if self.find_volume(step["mount"], vols) is not None:
                        raise DiskpartError("diskpart assign mount failed (rc=2): FAKE: the mount point is in use")
                    self.state["mounts"].setdefault(vol["key"], []).append(step["mount"].rstrip("\\") + "\\")
            elif op == "chkdsk":
                self.log("chkdsk", step["path"])
                found = self.find_volume(step["path"].rstrip(":"), vols)
                if found is None or found[1] is None:
                    rec.update(rc=3, output="The drive, the path, or the file name is not valid.\n")
                else:
                    v = found[1]
                    out = ("The type of the file system is NTFS.\nVolume label is %s.\n\nWARNING! /F parameter not "
                           "specified.\nRunning CHKDSK in read-only mode.\n\nStage 1: Examining basic file system "
                           "structure ...\n" % v["label"])
                    if v.get("errors"):
                        rec.update(rc=3, output=out + "Errors found. CHKDSK cannot continue in read-only mode.\n")
                    else:
                        rec.update(output=out + ("Stage 2: Examining file name linkage ...\nStage 3: Examining security "
                                                 "descriptors ...\n\nWindows has scanned the file system and found no "
                                                 "problems.\nNo further action is required.\n"))
                rec["path"] = step["path"]
            else:
                raise DiskpartError("Unknown step '%s'." % op)
            results.append(rec)
            self.disks()  # automount after each change, as Windows would
        return {"results": results}


def single_pv_target(vid, device):
    """Where EbsDisk.ps1 (Get-PvTarget) looks for the disk of a volume attached at ``device`` on a host with Xen PV
    disks: AWS's table, /dev/sda1 0, xvdb..xvdz 1..25; any other name refused (the script's contract, as its header
    states it)."""
    bare = (device or "").strip().lower()
    bare = bare[len("/dev/"):] if bare.startswith("/dev/") else bare
    if bare == "sda1":
        return 0
    m = re.match(r"^xvd([b-z])$", bare)
    if m:
        return ord(m.group(1)) - ord("a")
    raise DiskpartError("EBS volume %s is attached at '%s', a device name AWS's table gives no Xen PV location (only "
                        "/dev/sda1 and xvdb to xvdz); refusing to pick a disk on this host with Xen PV disks." % (vid, device))


class FakeSingleDisk(FakeWindowsDisks):
    """What the windows_ebs_disk role's single-disk script does (SINGLE_SCRIPT -Action Get, its header's contract): the
    disk by the volume id in its serial, or, given the device name on a host where a Get-Disk Path holds PROD_PVDISK,
    the one PV disk at bus 0, that device's target, LUN 0. A partition's number is its volume's place on the (basic)
    disk, from 1 (:meth:`FakeWindowsDisks.partition_table`, the FAKE's choice). It changes nothing."""

    def find_single(self, vid, device, disks):
        if not re.match(r"^vol-[0-9a-f]{8,17}$", vid or ""):
            raise DiskpartError("Invalid EBS volume id '%s': expected vol- followed by 8 to 17 hex digits." % vid)
        got = self.get_disk(disks)
        if device and any("PROD_PVDISK" in (g.get("Path") or "").upper() for g in got):
            target = single_pv_target(vid, device)
            at = [(d, g) for d, g in zip(disks, got) if g.get("SCSIBus") == 0 and g.get("SCSITargetId") == target
                  and g.get("SCSILogicalUnit") == 0]
            if len(at) != 1:
                raise DiskpartError("Expected exactly one disk at Xen PV bus 0, target %d, LUN 0 (where %s is attached, "
                                    "%s), found %d; refusing." % (target, vid, device, len(at)))
            d, g = at[0]
            if "PROD_PVDISK" not in (g.get("Path") or "").upper():
                raise DiskpartError("The disk at Xen PV target %d is not one Xen PV disk; refusing." % target)
            if re.match(r"^vol[0-9a-f]{8,17}(\b|_|$)", (g.get("SerialNumber") or "").strip()):
                raise DiskpartError("The disk at Xen PV target %d carries an EBS volume id in its serial (%s); refusing."
                                    % (target, g["SerialNumber"]))
            return d, target
        serial = vid.replace("-", "")
        found = [d for d, g in zip(disks, got) if (g.get("SerialNumber") or "").strip().startswith(serial)]
        if not found:
            raise DiskpartError("No disk has the serial number of EBS volume %s (%s); is it attached to this instance?"
                                % (vid, serial))
        if len(found) > 1:
            raise DiskpartError("Several disks (%s) carry the serial of EBS volume %s; refusing to guess."
                                % (", ".join(str(d["number"]) for d in found), vid))
        return found[0], None

    def partitions(self, d):
        """``[(number, volume key, letter or None)]`` of a basic disk; a letter only while the disk is online."""
        out = []
        for number, v, _offset in self.partition_table(d):
            key = self.volume_key(d["volume_id"], v["key"])
            out.append((number, key, self.state["letters"].get(key) if self.status(d) == "Online" else None))
        return out

    def report(self, params):
        """EbsDisk.ps1 -Action Get: one record per volume, changes nothing."""
        vids, devices = list(params.get("VolumeId") or []), list(params.get("Device") or [])
        if devices and len(devices) != len(vids):
            raise DiskpartError("Got %d device names for %d volumes; give one per volume or none." % (len(devices), len(vids)))
        disks = self.disks()
        out = []
        for i, vid in enumerate(vids):
            d, target = self.find_single(vid, devices[i] if devices else None, disks)
            g = self.get_disk([d])[0]
            out.append({"volume_id": vid, "disk_number": d["number"], "serial": (g.get("SerialNumber") or "").strip(),
                        "path": g.get("Path") or "", "found_by": "nvme-serial" if target is None else "pv-target",
                        "pv_target": target, "offline": d["state"]["offline"], "read_only": d["state"]["read_only"],
                        "partitions": [{"partition_number": n, "drive_letter": letter, "size": None}
                                       for n, _key, letter in self.partitions(d)]})
        return out, False


def run_single_script(params, state_path):
    """Run the FAKE of the single-disk script with ``params`` (its ``Action`` one of SINGLE_ACTIONS) against the state
    file; returns ``(output objects, changed, error)``."""
    action = params.get("Action")
    if action not in SINGLE_ACTIONS:  # the script's ValidateSet: refused before it runs
        return None, False, ("Cannot validate argument on parameter 'Action'. The argument \"%s\" does not belong to "
                             "the set \"%s\"." % (action, ",".join(SINGLE_ACTIONS)))
    host = FakeSingleDisk.load(state_path)
    try:
        out, changed = host.report(params)
        return out, changed, None
    except DiskpartError as exc:
        return None, False, str(exc)
    finally:
        host.save(state_path)


def run_script(name, params, state_path, imds=None):
    """Run the FAKE of one of the role's scripts against the state file; returns ``(output, error)``."""
    host = FakeWindowsDisks.load(state_path)
    try:
        if name == SCRIPTS[0]:
            out = host.gather(params)
        elif name == SCRIPTS[1]:
            out = host.apply(params)
        else:
            return None, "FAKE Windows host: no stand-in for this script"
        return out, None
    except DiskpartError as exc:
        return None, str(exc)
    finally:
        host.save(state_path)
