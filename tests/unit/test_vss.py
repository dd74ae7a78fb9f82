# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_vss_snapshot_set's parsers, preflight and proof (module_utils/_vss.py) on the fixtures under
fixtures/vss (their sources: fixtures/vss/README.md). No Windows runs here."""

import copy

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from tests.fakes.vss.windows import fake_windows_facts
from tests.fakes.vss.windows import fixture

VOLS = ["vol-0bbbbbbbbbbbbbbb1", "vol-0ccccccccccccccc2", "vol-0ddddddddddddddd3"]


def facts(**kw):
    return fake_windows_facts(VOLS, **kw)


def test_parse_writers_stable():
    writers = vss.parse_writers(fixture("vssadmin_writers_stable.txt"))
    assert [w["name"] for w in writers] == ["Task Scheduler Writer", "SqlServerWriter", "System Writer", "Registry Writer"]
    sql = writers[1]
    assert sql == {"name": "SqlServerWriter", "id": "a65faa63-5ea8-4ebc-9dbd-a0c4db26912a",
                   "instance_id": "9075f235-fa84-4a28-9c5d-a9e3e1fc0b26", "state": "[1] Stable", "state_code": 1,
                   "last_error": "No error"}
    assert vss.writer_problems(writers) == [] and vss.writer_in_progress(writers) == []


def test_parse_writers_failed_and_in_progress():
    failed = vss.parse_writers(fixture("vssadmin_writers_failed.txt"))
    assert vss.writer_problems(failed) == ["SqlServerWriter: [9] Failed, last error Timed out"]
    busy = vss.parse_writers(fixture("vssadmin_writers_in_progress.txt"))
    assert vss.writer_in_progress(busy) == ["SqlServerWriter", "System Writer"]
    assert vss.parse_writers("") == [] and vss.parse_writers("garbage\nState: [1] Stable") == []


def test_parse_diskpart_disks_and_volume():
    disks, volumes = vss.parse_disk_details(fixture("diskpart_disks.txt"))
    assert [(d["number"], d["status"], d["dynamic"], d["gpt"]) for d in disks] == [
        (0, "Online", False, False), (1, "Online", True, True), (2, "Online", True, True), (3, "Online", False, True)]
    assert volumes == {0: [0], 1: [2], 2: [2], 3: [3]}
    detail = vss.parse_volume_detail(fixture("diskpart_volume_E.txt"))
    assert detail["volume"] == 2 and [(d["number"], d["selected"]) for d in detail["disks"]] == [(1, True), (2, False)]
    assert vss.parse_volume_detail("DiskPart: There is no volume selected.") == {"volume": None, "disks": []}


@pytest.mark.parametrize("serial,expected", [
    ("vol0bbbbbbbbbbbbbbb1_00000001.", "vol-0bbbbbbbbbbbbbbb1"),
    ("vol0123456789abcdef0", "vol-0123456789abcdef0"),
    ("  vol01234567  ", "vol-01234567"),
    ("AWS-1234ABCD", None),  # not an NVMe EBS serial (Xen/PV or instance store): never guessed
    ("", None),
])
def test_disk_volume_id(serial, expected):
    assert vss.disk_volume_id({"SerialNumber": serial}) == expected


@pytest.mark.parametrize("given,expected", [("E", "E:\\"), ("e:", "E:\\"), ("E:\\", "E:\\"), ("C:/mnt/data", "C:\\mnt\\data\\"),
                                            ("C:\\mnt\\data\\\\", "C:\\mnt\\data\\")])
def test_normalize_member(given, expected):
    assert vss.normalize_member(given) == expected


def test_normalize_member_refuses_other_forms():
    with pytest.raises(StillpointError, match="neither a drive letter"):
        vss.normalize_member("\\\\?\\Volume{abc}\\")


def test_preflight_maps_the_spanned_volume_and_the_partition():
    plan = vss.preflight(facts(), ["E:\\", "F:\\"])
    assert plan["volume_ids"] == VOLS and plan["disks"] == [1, 2, 3] and plan["agent_version"] == "2.5.1"
    # what each volume looked like in diskpart's detail disk tables goes into the catalog (a restore tells apart
    # volumes on the same disks by it)
    assert plan["members"][0] == {"path": "E:\\", "volume": 2, "disks": [1, 2], "volume_ids": VOLS[:2],
                                  "mapped_by": ["nvme-serial", "nvme-serial"],
                                  "identity": {"label": "SQLDATA", "fs": "NTFS", "size": "19 GB"}}
    assert plan["members"][1]["volume_ids"] == [VOLS[2]]
    assert plan["members"][1]["identity"] == {"label": "BACKUP", "fs": "NTFS", "size": "19 GB"}
    assert vss.layout(plan) == {"kind": "windows-volumes", "volumes": [
        {"path": "E:\\", "volume_ids": VOLS[:2], "mapped_by": ["nvme-serial", "nvme-serial"],
         "identity": {"label": "SQLDATA", "fs": "NTFS", "size": "19 GB"}},
        {"path": "F:\\", "volume_ids": [VOLS[2]], "mapped_by": ["nvme-serial"],
         "identity": {"label": "BACKUP", "fs": "NTFS", "size": "19 GB"}}]}


def refusal(raw, members=("E:\\", "F:\\"), **kw):
    with pytest.raises(StillpointError) as info:
        vss.preflight(raw, list(members), **kw)
    return info.value


def test_preflight_refusals():
    old = refusal(facts(version="2.3.2"))
    assert "AwsVssComponents 2.3.2 (uninstall) is older than 2.3.3" in old.msg
    none = facts()
    none["components"] = []
    assert "AwsVssComponents is not installed" in refusal(none).msg
    failed = refusal(facts(writers="failed"))
    assert "VSS writers not stable: SqlServerWriter: [9] Failed, last error Timed out" in failed.msg
    assert "restart the service that owns the failed writer" in failed.msg and failed.details["writers"]
    # writers=false: the writers' state does not block (the agent runs with NoWriters)
    assert vss.preflight(facts(writers="failed"), ["E:\\", "F:\\"], writers_required=False)["volume_ids"] == VOLS
    busy = refusal(facts(writers="in_progress"))
    assert "VSS_E_SNAPSHOT_SET_IN_PROGRESS" in busy.msg and "Restart-Service -Name VSS" in busy.msg
    running = facts()
    running["vss_processes"] = ["ec2-vss-agent (pid 4242)"]
    assert "running: ec2-vss-agent (pid 4242)" in refusal(running).msg


def test_preflight_refuses_half_an_array_and_unknown_volumes():
    # E: alone is a whole array: it covers its disks 1 and 2, which hold nothing else
    assert vss.preflight(facts(), ["E:"])["volume_ids"] == VOLS[:2]
    raw = facts()
    raw["diskpart_disks"] = raw["diskpart_disks"].replace(
        "  Volume 2     E   SQLDATA      NTFS   Spanned       19 GB  Healthy\n\nDisk 2",
        "  Volume 2     E   SQLDATA      NTFS   Spanned       19 GB  Healthy\n"
        "  Volume 4     G   OTHER        NTFS   Simple         1 GB  Healthy\n\nDisk 2")
    assert "disk 1 also holds volume(s) 4 that are not named" in refusal(raw).msg
    assert "volume G:\\ not found by diskpart" in refusal(facts(), members=["E:", "F:", "G:"]).msg
    assert "members named twice: E:\\" in refusal(facts(), members=["E:", "e:\\", "F:"]).msg


def test_preflight_refuses_offline_foreign_and_unmapped_disks():
    raw = facts()
    raw["disks"][2]["IsOffline"] = True
    assert "disk 2 is offline: bring it online first" in refusal(raw).msg
    raw["cluster_service"] = "Running"
    assert "only the node that owns the shared disks" in refusal(raw).msg
    foreign = facts()
    foreign["diskpart_disks"] = foreign["diskpart_disks"].replace("  Disk 2    Online  ", "  Disk 2    Foreign ")
    msg = refusal(foreign).msg
    assert "the dynamic pack is not healthy: disk 2 Foreign" in msg
    pv = facts()
    pv["disks"][1]["SerialNumber"] = "AWS-PV-DISK-1"
    msg = refusal(pv).msg
    assert "disk 1 is not mapped to an EBS volume: it has no EBS volume id in its serial number" in msg
    assert "not a Xen PV disk" in msg and "never guessed by disk order" in msg


# --------------------------------------------------------------------------- Xen PV disks (AWS PV / Citrix PV drivers)

XEN_DEVICES = ("/dev/sda1", "xvdf", "xvdg", "xvdh")  # disks 0..3: boot, E: on xvdf+xvdg, F: on xvdh
XEN_ID = "i-0123456789abcdef0"


def xen_instance(devices=("/dev/sda1", "xvdf", "xvdg", "xvdh"), volumes=None, instance_id=XEN_ID):
    """DescribeInstances' record of the Xen instance: ``devices`` mapped to the boot volume and VOLS in order."""
    vols = volumes or ["vol-0aaaaaaaaaaaaaaa0"] + VOLS
    return {"InstanceId": instance_id, "RootDeviceName": "/dev/sda1", "BlockDeviceMappings": [
        {"DeviceName": d, "Ebs": {"VolumeId": v, "Status": "attached"}} for d, v in zip(devices, vols)]}


def xen_facts(devices=XEN_DEVICES, **kw):
    return facts(xen_devices=list(devices), instance_id=XEN_ID, **kw)


def test_the_fake_xen_disk_is_what_aws_describes():
    # the FAKE renders what the library reads: no volume id in the serial, PROD_PVDISK in the path, bus 0 LUN 0
    disk = xen_facts()["disks"][1]
    assert vss.disk_volume_id(disk) is None and vss.is_pv_disk(disk)
    assert (disk["SCSIBus"], disk["SCSITargetId"], disk["SCSILogicalUnit"]) == (0, 5, 0)


@pytest.mark.parametrize("target,device", [(0, "/dev/sda1"), (1, "xvdb"), (5, "xvdf"), (25, "xvdz")])
def test_pv_device_name_follows_aws_table(target, device):
    assert vss.pv_device_name({"SCSIBus": 0, "SCSILogicalUnit": 0, "SCSITargetId": target}) == device


@pytest.mark.parametrize("location,why", [
    ((0, 78, 0), "instance store disk"), ((0, 89, 0), "instance store disk"),
    ((0, 26, 0), "not one where an EBS volume sits"), ((1, 5, 0), "not one where an EBS volume sits"),
    ((0, 5, 1), "not one where an EBS volume sits"), ((None, None, None), "not one where an EBS volume sits"),
])
def test_pv_device_name_refuses_other_locations(location, why):
    bus, target, lun = location
    with pytest.raises(StillpointError, match=why):
        vss.pv_device_name({"SCSIBus": bus, "SCSITargetId": target, "SCSILogicalUnit": lun})


def test_preflight_maps_xen_disks_through_the_block_device_mappings():
    plan = vss.preflight(xen_facts(), ["E:\\", "F:\\"], instance=xen_instance())
    assert plan["volume_ids"] == VOLS and plan["disks"] == [1, 2, 3]
    assert plan["mapping"][1] == {"volume_id": VOLS[0], "mapped_by": "pv-target", "device": "xvdf"}
    assert plan["members"][0]["volume_ids"] == VOLS[:2] and plan["members"][0]["mapped_by"] == ["pv-target"] * 2
    assert vss.layout(plan)["volumes"][1] == {"path": "F:\\", "volume_ids": [VOLS[2]], "mapped_by": ["pv-target"],
                                              "identity": {"label": "BACKUP", "fs": "NTFS", "size": "19 GB"}}
    # the device name matches with or without /dev/, and the order of the mappings does not matter
    shuffled = xen_instance(devices=("/dev/sda1", "/dev/xvdh", "/dev/xvdg", "/dev/xvdf"),
                            volumes=["vol-0aaaaaaaaaaaaaaa0", VOLS[2], VOLS[1], VOLS[0]])
    assert vss.preflight(xen_facts(), ["E:", "F:"], instance=shuffled)["volume_ids"] == VOLS
    # the disks' order is not the devices' order: each disk is mapped by its own target id
    swapped = xen_facts(devices=["/dev/sda1", "xvdg", "xvdf", "xvdh"])
    assert vss.preflight(swapped, ["E:", "F:"], instance=xen_instance())["members"][0]["volume_ids"] == [VOLS[1], VOLS[0]]


def test_preflight_refuses_xen_disks_it_cannot_map():
    # no instance known (the host's metadata did not answer)
    assert "the instance is not known (the host's instance metadata did not answer)" in refusal(xen_facts()).msg
    # the device name is in no mapping (attached as /dev/sdf: no documented target for that name)
    inst = xen_instance(devices=("/dev/sda1", "/dev/sdf", "xvdg", "xvdh"))
    msg = refusal(xen_facts(), instance=inst).msg
    assert "disk 1 is not mapped to an EBS volume: its device name xvdf (Xen PV target 5) is in none of instance" in msg
    # two mappings with that name
    inst = xen_instance()
    inst["BlockDeviceMappings"].append({"DeviceName": "/dev/xvdf", "Ebs": {"VolumeId": "vol-0eeeeeeeeeeeeeee4",
                                                                           "Status": "attached"}})
    assert "its device name xvdf matches 2 block device mappings" in refusal(xen_facts(), instance=inst).msg
    # two disks map to one volume
    twice = xen_facts(devices=["/dev/sda1", "xvdf", "xvdf", "xvdh"])
    assert "disks 1, 2 all map to EBS volume %s: refusing to guess" % VOLS[0] in refusal(twice, instance=xen_instance()).msg
    # an instance store disk (target 78 = xvdca) is never an EBS volume
    store = xen_facts(devices=["/dev/sda1", "xvdf", "xvdg", "xvdca"])
    assert "disk 3 is not mapped to an EBS volume: it is an instance store disk" in refusal(store, instance=xen_instance()).msg
    # the instance's mappings name a PV location where the host has no disk: not this host's instance
    inst = xen_instance(devices=("/dev/sda1", "xvdf", "xvdg", "xvdh", "xvdj"),
                        volumes=["vol-0aaaaaaaaaaaaaaa0"] + VOLS + ["vol-0fffffffffffffff5"])
    msg = refusal(xen_facts(), instance=inst).msg
    assert "has xvdj (vol-0fffffffffffffff5, target 9) attached, but the host shows no Xen PV disk at that target" in msg


def snap(sid, vid, app=True, config="FAKE;SnapshotSetId={6f1d3c2a-0000-4000-8000-00000000000a}"):
    tags = [{"Key": "AwsVssConfig", "Value": config}] if config is not None else []
    if app:
        tags.append({"Key": "AppConsistent", "Value": "true"})
    return {"SnapshotId": sid, "VolumeId": vid, "State": "pending", "Tags": tags}


MEMBERS = [{"index": 0, "volume_id": "vol-a", "device": "/dev/sdf"}, {"index": 1, "volume_id": "vol-b", "device": "/dev/sdg"}]


def test_prove_complete_set_and_by_products():
    proof = vss.prove(MEMBERS, [snap("snap-1", "vol-a"), snap("snap-2", "vol-b"), snap("snap-3", "vol-c", app=False)])
    assert [m["snapshot_id"] for m in proof["members"]] == ["snap-1", "snap-2"] and proof["others"] == ["snap-3"]
    assert proof["vss_set_id"] == "6f1d3c2a-0000-4000-8000-00000000000a" and proof["level"] == "application"
    # no writers asked for: filesystem, and AppConsistent is not required
    assert vss.prove(MEMBERS, [snap("snap-1", "vol-a", app=False), snap("snap-2", "vol-b", app=False)],
                     writers=False)["level"] == "filesystem"


@pytest.mark.parametrize("snaps,status,why", [
    ([snap("snap-1", "vol-a")], "Success", "member vol-b has no snapshot"),
    ([snap("snap-1", "vol-a"), snap("snap-2", "vol-b", app=False)], "Failed", "without AppConsistent=true"),
    ([snap("snap-1", "vol-a"), snap("snap-2", "vol-b", config="x;{6f1d3c2a-0000-4000-8000-00000000000b}")], "Success",
     "snapshots from different VSS snapshot sets"),
    ([snap("snap-1", "vol-a"), snap("snap-2", "vol-b", config=None)], "Success", "without the AwsVssConfig tag"),
    ([snap("snap-1", "vol-a"), snap("snap-2", "vol-b")], "TimedOut", "the SSM command ended TimedOut"),
    ([snap("snap-1", "vol-a"), snap("snap-2", "vol-b"), snap("snap-3", "vol-b")], "Success", "member vol-b has 2 snapshots"),
])
def test_prove_refusals(snaps, status, why):
    with pytest.raises(StillpointError, match=why):
        vss.prove(MEMBERS, snaps, True, status)


def test_prove_without_a_readable_set_id_compares_the_whole_tag():
    same = [snap("snap-1", "vol-a", config="v=2.9;opaque"), snap("snap-2", "vol-b", config="v=2.9;opaque")]
    assert vss.prove(MEMBERS, same)["vss_set_id"] is None
    with pytest.raises(StillpointError, match="AwsVssConfig values differ"):
        vss.prove(MEMBERS, [snap("snap-1", "vol-a", config="a"), snap("snap-2", "vol-b", config="b")])


def test_ssm_parameters_and_tags():
    params = vss.ssm_parameters(True, True, True, "d", {"stillpoint:set-id": "bs-20260101T000000Z-abcdef",
                                                        "stillpoint:creator": "stillpoint.snapshots"}, 600)
    assert params == {"ExcludeBootVolume": ["True"], "CopyOnly": ["True"], "NoWriters": ["False"], "CreateAmi": ["False"],
                      "description": ["d"], "executionTimeout": ["600"],
                      "tags": ["Key=stillpoint:creator,Value=stillpoint.snapshots;"
                               "Key=stillpoint:set-id,Value=bs-20260101T000000Z-abcdef"]}
    with pytest.raises(StillpointError, match="characters the VSS document refuses"):
        vss.ssm_tags({"a": "b;c"})


@pytest.mark.parametrize("text,kind", [("VSS_E_SNAPSHOT_SET_IN_PROGRESS", "in_progress"),
                                       ("Thaw pipe connection timed out", "hold"),
                                       ("writer SqlServerWriter failed", "writer"), ("", None)])
def test_classify_failure(text, kind):
    assert vss.classify_failure(text) == kind


def test_version_order():
    assert vss.version_tuple("2.10.0") > vss.version_tuple("2.3.3") > vss.version_tuple("2.3.2.0")
    assert vss.agent_version([{"source": "file", "version": "2.5.1.0"}]) == ("2.5.1.0", "file")
    assert vss.agent_version(copy.deepcopy(facts()["components"])) == ("2.5.1", "uninstall")
