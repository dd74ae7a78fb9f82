# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE Windows host facts (tests only): what win_vss_snapshot_set.ps1 returns, built from the fixtures
under tests/unit/fixtures/vss (sources in their README), with disk 1 and 2 (the spanned E:) and disk 3 (F:)
given the endpoint's volume ids as NVMe serial numbers. Variants change one fact each."""

import copy
import json
import os

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "unit", "fixtures", "vss")


def fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def serial(volume_id):
    return volume_id.replace("-", "") + "_00000001."


def fake_windows_facts(volume_ids, writers="stable", version="2.5.1", boot_volume_id="vol-0aaaaaaaaaaaaaaa0"):
    """``volume_ids``: the EBS volumes of disks 1, 2, 3 (E: spans 1 and 2, F: is on 3)."""
    disks = json.loads(fixture("get_disk.json"))
    for disk, vid in zip(disks, [boot_volume_id] + list(volume_ids)):
        disk["SerialNumber"] = serial(vid)
    return {
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
