# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plan_swap on DescribeInstances / DescribeVolumes items.

The shapes (keys, attachment states, tag lists) are those the strict test endpoint returned for an
instance with data volumes at /dev/sdf.. during attach/detach (recorded by hand from boto3, times
dropped); the cases vary only the ids, states and tags the planner reads.
"""

import copy

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _swap as swap
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

IID = "i-6f16cd652fb147142"
OTHER = "i-0ddba11c0ffee0001"
AZ = "eu-west-1a"
SET = "bs-20261121T134744Z-a1b2c3"
DEVS = ["/dev/sdf", "/dev/sdg", "/dev/sdh"]
SRC = ["vol-fcac8b469ca35052a", "vol-3f975b9c18a75552c", "vol-72d56e31628d4c64e"]
NEW = ["vol-0a0000000000000a0", "vol-0a0000000000000a1", "vol-0a0000000000000a2"]
OLD = ["vol-0b0000000000000b0", "vol-0b0000000000000b1", "vol-0b0000000000000b2"]  # an earlier restore
BOOT = "vol-d84029ae5b9590890"
RESTORE = "rs-0123456789ab"


def record(state="complete"):
    return {"set_id": SET, "state": state, "problems": [] if state == "complete" else ["x"], "member_count": 3,
            "members": [{"index": i, "device": DEVS[i], "source_volume": SRC[i], "snapshot_id": "snap-%d" % i}
                        for i in range(3)]}


def restored_tags(i, restore_id=RESTORE, set_id=SET, creator=True):
    tags = {"stillpoint:restore-id": restore_id, "stillpoint:set-id": set_id, "stillpoint:member": str(i),
            "stillpoint:device": DEVS[i], "stillpoint:source-volume": SRC[i]}
    if creator:
        tags["stillpoint:creator"] = "stillpoint.snapshots"
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def volume(vid, az=AZ, attachments=(), tags=None, state=None):
    atts = [{"VolumeId": vid, "InstanceId": a[0], "Device": a[1], "State": a[2] if len(a) > 2 else "attached",
             "DeleteOnTermination": False} for a in attachments]
    if state is None:
        state = "in-use" if atts else "available"
    out = {"VolumeId": vid, "AvailabilityZone": az, "Size": 1, "State": state, "VolumeType": "gp3",
           "Encrypted": False, "MultiAttachEnabled": False, "Attachments": atts}
    if tags:
        out["Tags"] = tags
    return out


class World:
    """An instance (DescribeInstances item) and the volumes DescribeVolumes would list."""

    def __init__(self, state="running"):
        self.instance = {
            "InstanceId": IID, "State": {"Code": 16, "Name": state}, "RootDeviceName": "/dev/sda1",
            "Placement": {"AvailabilityZone": AZ, "GroupName": "", "Tenancy": "default"},
            "BlockDeviceMappings": [],
        }
        self.volumes = {}
        self.attach(BOOT, "/dev/sda1")
        for i in range(3):
            self.attach(SRC[i], DEVS[i])
            self.volumes[NEW[i]] = volume(NEW[i], tags=restored_tags(i))

    def attach(self, vid, device, state="attached", instance_id=IID, tags=None, az=AZ):
        vol = self.volumes.get(vid) or volume(vid, az=az, tags=tags)
        vol["Attachments"] = [{"VolumeId": vid, "InstanceId": instance_id, "Device": device, "State": state,
                               "DeleteOnTermination": False}]
        vol["State"] = "in-use"
        self.volumes[vid] = vol
        if instance_id == IID and state != "detaching":
            self.instance["BlockDeviceMappings"].append(
                {"DeviceName": device, "Ebs": {"VolumeId": vid, "Status": "attached", "DeleteOnTermination": False}})

    def detach(self, vid, finished=True):
        """``finished=False``: the endpoint's detaching state (gone from the mappings, attachment ``detaching``)."""
        vol = self.volumes[vid]
        self.instance["BlockDeviceMappings"] = [b for b in self.instance["BlockDeviceMappings"]
                                                if b["Ebs"]["VolumeId"] != vid]
        if finished:
            vol["Attachments"], vol["State"] = [], "available"
        else:
            vol["Attachments"][0]["State"] = "detaching"

    def plan(self, new=None, **kw):
        new = new if new is not None else [{"index": i, "volume_id": NEW[i]} for i in range(3)]
        return swap.plan_swap(copy.deepcopy(self.instance), record(kw.pop("set_state", "complete")), new,
                              {"Volumes": copy.deepcopy(list(self.volumes.values()))}, **kw)

    def refusal(self, **kw):
        with pytest.raises(StillpointError) as info:
            self.plan(**kw)
        assert info.value.msg.startswith("refusing to swap set %s onto %s (nothing was detached or attached)"
                                         % (SET, IID))
        return info.value


def actions(plan):
    return [m["action"] for m in plan["members"]]


def test_sources_in_place_are_replaced_detach_all_then_attach_all():
    plan = World().plan()
    assert actions(plan) == ["replace"] * 3
    assert [m["replaces"] for m in plan["members"]] == ["source"] * 3
    assert [m["current"] for m in plan["members"]] == SRC
    assert [(d["volume_id"], d["device"], d["replaced_by"]) for d in plan["detach"]] == list(zip(SRC, DEVS, NEW))
    assert [(a["volume_id"], a["device"]) for a in plan["attach"]] == list(zip(NEW, DEVS))
    assert plan["changed"] is True and plan["wait_available"] == [] and plan["wait_attached"] == []
    assert not any(d["ours"] for d in plan["detach"])  # the originals carry no creator marker
    assert swap.mapping_before(plan) == dict(zip(DEVS, SRC))
    assert swap.mapping_after(plan) == dict(zip(DEVS, NEW))


def test_already_swapped_is_a_no_op():
    w = World()
    for i in range(3):
        w.detach(SRC[i])
        w.attach(NEW[i], DEVS[i])
    plan = w.plan()
    assert actions(plan) == ["none"] * 3
    assert plan["changed"] is False
    assert plan["detach"] == [] and plan["attach"] == [] and plan["wait_attached"] == []


def test_interrupted_run_waits_for_what_is_under_way_and_never_repeats_it():
    w = World()
    w.detach(SRC[0], finished=False)         # detach issued by the earlier run, still detaching
    w.detach(SRC[1])                         # detached
    w.attach(NEW[1], DEVS[1], "attaching")   # and its new volume attach issued
    plan = w.plan()                          # member 2 untouched
    assert actions(plan) == ["attach", "none", "replace"]
    assert plan["wait_available"] == [SRC[0]]
    assert plan["wait_attached"] == [{"index": 1, "volume_id": NEW[1], "device": DEVS[1]}]
    assert [d["volume_id"] for d in plan["detach"]] == [SRC[2]]
    assert [a["volume_id"] for a in plan["attach"]] == [NEW[0], NEW[2]]


def test_volume_the_host_keeps_busy_is_waited_for_not_detached_again():
    w = World()
    w.detach(SRC[0], finished=False)
    w.volumes[SRC[0]]["Attachments"][0]["State"] = "busy"
    plan = w.plan()
    assert actions(plan) == ["attach", "replace", "replace"]
    assert plan["wait_available"] == [SRC[0]]
    assert plan["busy"] == [{"index": 0, "volume_id": SRC[0], "device": DEVS[0]}]
    assert [d["volume_id"] for d in plan["detach"]] == SRC[1:]


def test_earlier_restore_is_replaced_and_marked_ours():
    w = World()
    for i in range(3):
        w.detach(SRC[i])
        w.attach(OLD[i], DEVS[i], tags=restored_tags(i, restore_id="rs-earlier000"))
    plan = w.plan()
    assert [m["replaces"] for m in plan["members"]] == ["earlier-restore"] * 3
    assert all(d["ours"] for d in plan["detach"])


def test_restored_copy_of_another_member_at_a_device_is_unknown():
    w = World()
    w.detach(SRC[0])
    w.attach(OLD[1], DEVS[0], tags=restored_tags(1, restore_id="rs-earlier000"))
    err = w.refusal()
    assert "/dev/sdf holds %s, which is neither the set's source volume %s nor a restored copy of member 0" % (
        OLD[1], SRC[0]) in err.msg


def test_unknown_volume_is_refused_unless_replace_unknown():
    w = World()
    w.detach(SRC[1])
    w.attach("vol-0c0000000000000c1", DEVS[1], tags=[{"Key": "Name", "Value": "scratch"}])
    err = w.refusal()
    assert err.details["problems"] == [
        "member 1 (/dev/sdg): /dev/sdg holds vol-0c0000000000000c1, which is neither the set's source volume %s nor a "
        "restored copy of member 1 of set %s; expected %s or %s there. Refusing to detach it (replace_unknown: true "
        "replaces it anyway)" % (SRC[1], SET, SRC[1], NEW[1])]
    assert [m["action"] for m in err.details["plan"]] == ["replace", None, "replace"]
    plan = w.plan(replace_unknown=True)
    assert plan["members"][1]["replaces"] == "unknown"
    assert [d["volume_id"] for d in plan["detach"]] == [SRC[0], "vol-0c0000000000000c1", SRC[2]]


def test_az_mismatch_is_refused():
    w = World()
    w.volumes[NEW[2]]["AvailabilityZone"] = "eu-west-1b"
    err = w.refusal()
    assert err.details["problems"] == [
        "member 2 (/dev/sdh): restored volume %s is in eu-west-1b but instance %s is in eu-west-1a (AZ mismatch); "
        "restore the set into eu-west-1a" % (NEW[2], IID)]


def test_new_volume_attached_elsewhere_is_refused():
    w = World()
    w.attach(NEW[0], "/dev/sdf", instance_id=OTHER)
    w.attach(NEW[1], "/dev/sdk")
    problems = w.refusal().details["problems"]
    assert problems[0] == ("member 0 (/dev/sdf): restored volume %s is attached to another instance, %s at /dev/sdf; "
                           "detach it there first" % (NEW[0], OTHER))
    assert problems[1] == ("member 1 (/dev/sdg): restored volume %s is attached to %s at /dev/sdk, not at /dev/sdg; "
                           "detach it first" % (NEW[1], IID))
    assert len(problems) == 2


def test_copy_beside_its_source_is_refused_unless_allowed():
    w = World()
    w.detach(SRC[0])
    w.attach(SRC[0], "/dev/sdk")  # the source moved to another device; /dev/sdf is free
    err = w.refusal()
    assert err.details["problems"] == [
        "member 0 (/dev/sdf): the set's source volume %s would stay attached to %s at /dev/sdk while its restored copy "
        "%s is attached at /dev/sdf: both carry the same filesystem, LVM PV and md UUIDs. Detach %s first, or set "
        "allow_beside_source: true" % (SRC[0], IID, NEW[0], SRC[0])]
    plan = w.plan(allow_beside_source=True)
    assert actions(plan) == ["attach", "replace", "replace"]


def test_another_restored_copy_of_the_member_beside_it_is_refused():
    w = World()
    w.attach(OLD[2], "/dev/sdp", tags=restored_tags(2, restore_id="rs-earlier000"))
    err = w.refusal()
    assert "%s, another restored copy of the same member, would stay attached" % OLD[2] in err.msg


def test_source_at_another_members_device_replaced_when_unknown_allowed_is_not_beside():
    w = World()
    w.detach(SRC[0])
    w.detach(SRC[1])
    w.attach(SRC[0], DEVS[1])  # source of member 0 sits at member 1's device
    err = w.refusal()
    assert any("holds %s, which is neither" % SRC[0] in p for p in err.details["problems"])
    plan = w.plan(replace_unknown=True)  # detached as member 1's occupant: not left beside its copy
    assert actions(plan) == ["attach", "replace", "replace"]


def test_missing_member_never_part_of_a_set():
    err = World().refusal(new=[{"index": 0, "volume_id": NEW[0]}, {"index": 2, "volume_id": NEW[2]}])
    assert err.details["problems"] == [
        "no restored volume for member(s) 1 of set %s; a swap never attaches part of a set (restore every member "
        "first)" % SET]


def test_missing_new_volume_and_extra_member():
    new = [{"index": i, "volume_id": NEW[i]} for i in range(3)] + [{"index": 3, "volume_id": "vol-0e0000000000000e3"}]
    w = World()
    del w.volumes[NEW[1]]
    problems = w.refusal(new=new).details["problems"]
    assert "restored volumes given for member(s) 3, which set %s does not have" % SET in problems
    assert "member 1 (/dev/sdg): restored volume %s does not exist in this region" % NEW[1] in problems


@pytest.mark.parametrize("state", ["pending", "stopping", "shutting-down", "terminated"])
def test_instance_state_must_allow_attach(state):
    problems = World(state).refusal().details["problems"]
    assert problems == ["instance %s is %s; volumes can be attached only to a running or stopped instance" % (IID, state)]


def test_stopped_instance_is_fine():
    assert actions(World("stopped").plan()) == ["replace"] * 3


def test_set_must_be_complete():
    problems = World().refusal(set_state="partial").details["problems"]
    assert problems == ["set %s is partial (x); only a complete set is swapped in" % SET]


def test_volume_tagged_for_another_member_or_set_is_refused():
    w = World()
    w.volumes[NEW[0]]["Tags"] = restored_tags(2)
    w.volumes[NEW[1]]["Tags"] = restored_tags(1, set_id="bs-other")
    problems = w.refusal().details["problems"]
    assert problems == ["member 0 (/dev/sdf): volume %s is tagged as member 2, not 0" % NEW[0],
                        "member 1 (/dev/sdg): volume %s was restored from set bs-other, not %s" % (NEW[1], SET)]


def test_xvd_alias_of_the_recorded_device_counts_as_that_device():
    w = World()
    w.detach(SRC[0])
    w.attach(SRC[0], "/dev/xvdf")
    plan = w.plan()
    item = plan["members"][0]
    assert (item["action"], item["current"], item["current_device"]) == ("replace", SRC[0], "/dev/xvdf")
    assert plan["detach"][0]["device"] == "/dev/xvdf"
    assert plan["attach"][0]["device"] == "/dev/sdf"


def test_root_device_of_a_running_instance_is_refused():
    w = World()
    rec = record()
    rec["members"][0].update(device="/dev/sda1", source_volume=BOOT)
    with pytest.raises(StillpointError) as info:
        swap.plan_swap(w.instance, rec, [{"index": i, "volume_id": NEW[i]} for i in range(3)], list(w.volumes.values()))
    assert "/dev/sda1 is the root device of running instance %s; stop the instance to swap it" % IID in info.value.msg


def test_new_volume_still_creating_or_detaching_is_waited_for():
    w = World()
    w.volumes[NEW[0]]["State"] = "creating"
    w.attach(NEW[1], "/dev/sdz", state="detaching", instance_id=OTHER)
    plan = w.plan()
    assert plan["wait_available"] == [NEW[0], NEW[1]]
    assert actions(plan) == ["replace"] * 3


def test_volumes_replaced_by_an_earlier_run_are_found_by_their_tag():
    w = World()
    for i in range(3):
        w.detach(SRC[i])
        w.attach(NEW[i], DEVS[i])
        w.volumes[OLD[i]] = volume(OLD[i], tags=restored_tags(i, "rs-earlier000") + [
            {"Key": "stillpoint:replaced-by", "Value": NEW[i]}])
    plan = w.plan()
    assert plan["changed"] is False
    assert plan["replaced_before"] == sorted(OLD)


def test_new_volume_map_forms_and_refusals():
    assert swap.new_volume_map([{"index": 1, "volume_id": "vol-b", "snapshot_id": "snap-x", "az": AZ},
                                {"index": "0", "volume_id": "vol-a"}]) == {0: "vol-a", 1: "vol-b"}
    assert swap.new_volume_map({0: "vol-a"}) == {0: "vol-a"}
    with pytest.raises(StillpointError) as info:
        swap.new_volume_map([{"index": 0, "volume_id": "vol-a"}, {"index": 0, "volume_id": "vol-b"},
                             {"index": 1, "volume_id": "vol-a"}, {"volume_id": "vol-c"}])
    assert info.value.details["problems"] == [
        "member 0 is given twice (vol-a and vol-b)",
        "volumes entry {'volume_id': 'vol-c'} needs an integer index and a volume_id",
        "volume vol-a is given for members 0 and 1"]


def test_volumes_from_restore_by_member_tag():
    vols = [volume(NEW[i], tags=restored_tags(i)) for i in range(3)]
    vols.append(volume("vol-0d0000000000000d0", tags=restored_tags(0), state="deleting"))
    assert swap.volumes_from_restore(vols, SET, RESTORE) == dict(enumerate(NEW))
    with pytest.raises(StillpointError) as info:
        swap.volumes_from_restore(vols + [volume("vol-0d0000000000000d1", tags=restored_tags(1))], SET, RESTORE)
    assert "member 1 of restore %s has two volumes (%s and vol-0d0000000000000d1)" % (RESTORE, NEW[1]) in info.value.msg
    with pytest.raises(StillpointError) as info:
        swap.volumes_from_restore(vols, "bs-other", RESTORE)
    assert "comes from set %s, not bs-other" % SET in info.value.msg


def test_alias():
    assert swap.alias("/dev/sdf") == "/dev/xvdf"
    assert swap.alias("/dev/xvdg") == "/dev/sdg"
    assert swap.alias("/dev/nvme1n1") is None
