# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE Windows host facts (tests only): what win_vss_snapshot_set.ps1 returns, built from the fixtures
under tests/unit/fixtures/vss (sources in their README), with disk 1 and 2 (the spanned E:) and disk 3 (F:)
given the endpoint's volume ids as NVMe serial numbers. Variants change one fact each.

Xen mode (``xen_devices``): the disks are Xen PV disks instead, as AWS's page "Map non-NVMe disks on Amazon EC2
Windows instance to volumes" describes them (Get-Disk's Path holds PROD_PVDISK; Win32_DiskDrive bus 0, LUN 0,
target N for the device name: /dev/sda1 is 0, xvdb..xvdz are 1..25, the instance store's xvdca..xvdcl 78..89) and
no volume id in the serial number. The rest of such a record (the Path's other parts, the serial number, the
FriendlyName, BusType) is the FAKE's own: no source shows a real one."""

import copy
import json
import os
import re

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "unit", "fixtures", "vss")


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def serial(volume_id):
    return volume_id.replace("-", "") + "_00000001."


PV_PATH = "\\\\?\\scsi#disk&ven_aws&prod_pvdisk#%06d#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}"  # FAKE's composition


def pv_target(device):
    """FAKE: the Xen PV target id a device name gets (AWS's tables read backwards); ValueError for a name the tables
    do not list (the FAKE does not invent where Windows would show it)."""
    name = device[5:] if device.startswith("/dev/") else device
    if name == "sda1":
        return 0
    m = re.match(r"^xvd([b-z])$", name)
    if m:
        return ord(m.group(1)) - ord("a")
    m = re.match(r"^xvdc([a-l])$", name)
    if m:
        return 78 + ord(m.group(1)) - ord("a")
    raise ValueError("FAKE: AWS's tables give no Xen PV target for the device name %s" % device)


def xen_disk(disk, device):
    """A Get-Disk record (``Number`` set) made a Xen PV disk at ``device``: no volume id in its serial number."""
    return dict(disk, SerialNumber="", FriendlyName="FAKE AWS PV disk", BusType="SCSI", Location="",
                Path=PV_PATH % disk["Number"], SCSIBus=0, SCSITargetId=pv_target(device), SCSILogicalUnit=0)


def fake_windows_facts(volume_ids, writers="stable", version="2.5.1", boot_volume_id="vol-0aaaaaaaaaaaaaaa0",
                       xen_devices=None, instance_id=None):
    """``volume_ids``: the EBS volumes of disks 1, 2, 3 (E: spans 1 and 2, F: is on 3). ``xen_devices``: the
    device names of disks 0..3 on a Xen instance (Xen PV disks, no serial); ``instance_id``: IMDS's answer."""
    disks = json.loads(fixture("get_disk.json"))
    for disk, vid in zip(disks, [boot_volume_id] + list(volume_ids)):
        disk["SerialNumber"] = serial(vid)
    if xen_devices:
        disks = [xen_disk(d, dev) for d, dev in zip(disks, xen_devices)]
    return {
        "instance_id": instance_id,
        "imds_error": None if instance_id else "FAKE: no instance metadata given",
        "changed": False,
        "components": [{"source": "uninstall", "name": "AwsVssComponents", "version": version}],
        "writers_output": fixture("vssadmin_writers_%s.txt" % writers),
        "vss_processes": [],
        "cluster_service": None,
        "hostname": "FAKE-SQL01",
        "disks": disks,
        "diskpart_disks": fixture("diskpart_disks.txt"),
        "diskpart_members": {"E:\\": fixture("diskpart_volume_E.txt"),
                             "F:\\": fixture("diskpart_volume_E.txt").replace("Volume 2 is", "Volume 3 is")
                             .replace("* Disk 1    Online           10 GB      0 B   *    *\n  Disk 2    Online"
                                      "           10 GB      0 B   *    *",
                                      "* Disk 3    Online           20 GB      0 B        *")},
    }


class FakeWindowsHost:
    """``execute(module, args)`` as the action plugin's: answers win_vss_snapshot_set with the facts,
    ``report=writers`` with ``after_writers``' writer text. ``calls`` records every call."""

    def __init__(self, facts, after_writers=None):
        self.facts = facts
        self.after_writers = after_writers
        self.calls = []

    def __call__(self, module, args):
        self.calls.append((module, copy.deepcopy(args)))
        if module != "stillpoint.snapshots.win_vss_snapshot_set":
            return {"failed": True, "msg": "FAKE Windows host: unknown module %s" % module}
        if args.get("report") == "writers":
            text = fixture("vssadmin_writers_%s.txt" % self.after_writers) if self.after_writers \
                else self.facts["writers_output"]
            return {"changed": False, "writers_output": text}
        out = copy.deepcopy(self.facts)
        out["diskpart_members"] = dict((m, out["diskpart_members"].get(m, "DiskPart: There is no volume selected.\n"))
                                       for m in args["members"])
        return out
