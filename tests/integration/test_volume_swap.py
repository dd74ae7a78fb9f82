# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ebs_volume_swap against the strict EC2 endpoint (real HTTP on 127.0.0.1).

Each test builds its own instance with data volumes at /dev/sdf.., a complete backup set of them
(one CreateSnapshots call with the catalog's tags, per-member tags, the complete mark) and restored
volumes (CreateVolume from each member snapshot in the instance's AZ, with the restore tags), the
way ebs_snapshot_set and ebs_volume_restore make them, then runs the module in-process. The
endpoint refuses what EC2 refuses (attach in another AZ, at a device in use, of a volume in use;
detach at the wrong device) and keeps attachments ``attaching``/``detaching`` for a while.
"""

import hashlib
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_volume_swap
from tests.unit.utils import run_module


DEVICES = ["/dev/sdf", "/dev/sdg", "/dev/sdh"]
MUTATING = ("AttachVolume", "DetachVolume", "CreateTags", "DeleteTags", "DeleteVolume", "CreateVolume")
FAST = dict(poll_interval=0.05, detach_timeout=20, attach_timeout=20)


def restore_tags(set_id, restore_id, index, device, source):
    return {"stillpoint:restore-id": restore_id, "stillpoint:set-id": set_id, "stillpoint:member": str(index),
            "stillpoint:device": device, "stillpoint:source-volume": source, "stillpoint:creator": catalog.CREATOR}


class Lab:
    """An instance with three data volumes, a complete set of them, and helpers to restore it."""

    def __init__(self, ep, client):
        self.ep = ep
        self.client = client
        self.world = ep.create_instance(volumes=[{"size": 1, "device": d} for d in DEVICES])
        self.iid = self.world["instance_id"]
        self.az = self.world["az"]
        self.sources = [v["volume_id"] for v in self.world["volumes"]]
        self.set_id = catalog.new_set_id()
        shared = catalog.set_tags(self.set_id, "swap", 3, self.iid, self.az, "db1", "filesystem", state="pending")
        items = self.client.create_snapshots(
            InstanceSpecification={"InstanceId": self.iid, "ExcludeBootVolume": True},
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared)}])["Snapshots"]
        by_volume = dict((it["VolumeId"], it["SnapshotId"]) for it in items)
        self.snapshots = [by_volume[v] for v in self.sources]
        for i, (vid, sid) in enumerate(zip(self.sources, self.snapshots)):
            self.client.create_tags(Resources=[sid], Tags=catalog.to_tag_list(
                catalog.member_tags(i, DEVICES[i], vid, ["/srv/data"])))
        ep.pending(0, snapshot_ids=self.snapshots)
        self.client.create_tags(Resources=self.snapshots, Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])

    def restore(self, az=None, salt=""):
        """One volume per member in ``az`` (the instance's by default); returns (restore_id, [{index, volume_id}])."""
        az = az or self.az
        restore_id = "rs-" + hashlib.sha1(("%s|%s|%s%s" % (self.set_id, az, self.iid, salt)).encode()).hexdigest()[:12]
        out = []
        for i, sid in enumerate(self.snapshots):
            tags = restore_tags(self.set_id, restore_id, i, DEVICES[i], self.sources[i])
            vid = self.client.create_volume(AvailabilityZone=az, SnapshotId=sid, VolumeType="gp3", TagSpecifications=[
                {"ResourceType": "volume", "Tags": catalog.to_tag_list(tags)}])["VolumeId"]
            out.append({"index": i, "volume_id": vid, "snapshot_id": sid, "availability_zone": az})
        return restore_id, out

    def args(self, **kw):
        out = dict(endpoint_url=self.ep.url, access_key="testing", secret_key="testing", region=self.ep.region,
                   instance_id=self.iid, set_id=self.set_id, **FAST)
        out.update(kw)
        return out

    def mapping(self):
        inst = self.client.describe_instances(InstanceIds=[self.iid])["Reservations"][0]["Instances"][0]
        return dict((b["DeviceName"], b["Ebs"]["VolumeId"]) for b in inst["BlockDeviceMappings"])

    def volumes(self, ids):
        vols = self.client.describe_volumes(VolumeIds=list(ids))["Volumes"]
        return dict((v["VolumeId"], v) for v in vols)

    def state(self, ids):
        """What must not change: the instance's mapping, and each volume's state, attachments and tags."""
        vols = self.volumes(ids)
        return self.mapping(), dict(
            (vid, (v["State"], sorted((a["InstanceId"], a["Device"], a["State"]) for a in v["Attachments"]),
                   catalog.tag_dict(v.get("Tags")))) for vid, v in vols.items())

    def wait_available(self, vid):
        waiter = self.client.get_waiter("volume_available")
        waiter.wait(VolumeIds=[vid], WaiterConfig={"Delay": 0.05, "MaxAttempts": 100})

    def attach(self, vid, device):
        """Attach and wait until ``attached`` (the stock waiter stops at ``in-use``, i.e. still attaching)."""
        self.client.attach_volume(VolumeId=vid, InstanceId=self.iid, Device=device)
        for _attempt in range(100):
            if [a["State"] for a in self.volumes([vid])[vid]["Attachments"]] == ["attached"]:
                return
            time.sleep(0.05)
        raise AssertionError("%s not attached at %s" % (vid, device))


def run(monkeypatch, args, check_mode=False):
    return run_module(monkeypatch, ebs_volume_swap.main, args, check_mode)


def mutations(ep):
    return [(c["action"], c["params"].get("VolumeId") or c["params"].get("ResourceId.1")) for c in ep.calls()
            if c["action"] in MUTATING and c["status"] == 200]


@pytest.fixture(scope="module")
def client(ec2_endpoint):  # noqa: F811
    return ec2_endpoint.client()  # one for the module: a boto3 client costs a few tenths of a second


@pytest.fixture
def lab(ec2, client):  # noqa: F811
    ec2.delays(attach_seconds=0.05, detach_seconds=0.05)  # the endpoint's 0.2 s only where timings are checked
    lab = Lab(ec2, client)
    ec2.clear_calls()
    return lab


def test_swap_verified_then_rerun_changes_nothing(monkeypatch, lab):
    lab.ep.delays(attach_seconds=0.2, detach_seconds=0.2)
    restore_id, restored = lab.restore()
    new = [r["volume_id"] for r in restored]
    res = run(monkeypatch, lab.args(volumes=restored))
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    assert [(m["index"], m["device"], m["current"], m["new"], m["action"], m["replaces"]) for m in res["plan"]] == [
        (i, DEVICES[i], lab.sources[i], new[i], "replace", "source") for i in range(3)]
    assert res["mapping"] == dict(zip(DEVICES, new))
    assert {d: v for d, v in lab.mapping().items() if d in DEVICES} == dict(zip(DEVICES, new))
    assert res["detached"] == lab.sources and res["attached"] == new
    # the originals are kept, detached, and say what took their place
    for vid, vol in lab.volumes(lab.sources).items():
        assert vol["State"] == "available"
        assert catalog.tag_dict(vol["Tags"])["stillpoint:replaced-by"] == new[lab.sources.index(vid)]
    for vol in lab.volumes(new).values():
        assert [(a["InstanceId"], a["State"]) for a in vol["Attachments"]] == [(lab.iid, "attached")]

    # all detaches are issued before any attach, each once; timings cover what the endpoint saw
    detaches, attaches = lab.ep.calls("DetachVolume"), lab.ep.calls("AttachVolume")
    assert sorted(c["params"]["VolumeId"] for c in detaches) == sorted(lab.sources)
    assert sorted(c["params"]["VolumeId"] for c in attaches) == sorted(new)
    assert all("Force" not in c["params"] for c in detaches)
    assert max(c["t_start"] for c in detaches) < min(c["t_start"] for c in attaches)
    seen_ms = (max(c["t_end"] for c in attaches) - min(c["t_start"] for c in detaches)) * 1000.0
    assert res["downtime_ms"] >= seen_ms
    assert res["downtime_ms"] >= 400  # 0.2 s detaching + 0.2 s attaching at the endpoint
    assert res["detach_ms"] >= 200 and res["attach_ms"] >= 200
    assert res["downtime_ms"] >= res["detach_ms"] + res["attach_ms"] - 1
    assert res["downtime_ms"] < 5000

    lab.ep.clear_calls()
    again = run(monkeypatch, lab.args(restore_id=restore_id))  # the same volumes, found by their restore id
    assert again.get("failed") is not True, again.get("msg")
    assert again["changed"] is False
    assert [m["action"] for m in again["plan"]] == ["none"] * 3
    assert again["mapping"] == dict(zip(DEVICES, new))
    assert again["detached"] == [] and again["attached"] == [] and again["downtime_ms"] == 0.0
    assert mutations(lab.ep) == []


def _detach(lab, vid, device, wait=True):
    lab.client.detach_volume(VolumeId=vid, InstanceId=lab.iid, Device=device)
    if wait:
        lab.wait_available(vid)


@pytest.mark.parametrize("interrupted", ["after-one-detach", "after-all-detaches", "after-one-attach"])
def test_rerun_after_interruption_converges_without_repeating(monkeypatch, lab, interrupted):
    _restore_id, restored = lab.restore()
    new = [r["volume_id"] for r in restored]
    if interrupted == "after-one-detach":
        _detach(lab, lab.sources[0], DEVICES[0], wait=False)  # still detaching when the module starts
        expect_detach, expect_attach = lab.sources[1:], new
    else:
        for vid, dev in zip(lab.sources, DEVICES):
            _detach(lab, vid, dev)
        expect_detach, expect_attach = [], new
        if interrupted == "after-one-attach":
            lab.client.attach_volume(VolumeId=new[0], InstanceId=lab.iid, Device=DEVICES[0])  # still attaching
            expect_attach = new[1:]
    lab.ep.clear_calls()
    res = run(monkeypatch, lab.args(volumes=restored))
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    assert res["mapping"] == dict(zip(DEVICES, new))
    assert {d: v for d, v in lab.mapping().items() if d in DEVICES} == dict(zip(DEVICES, new))
    assert sorted(c["params"]["VolumeId"] for c in lab.ep.calls("DetachVolume")) == sorted(expect_detach)
    assert sorted(c["params"]["VolumeId"] for c in lab.ep.calls("AttachVolume")) == sorted(expect_attach)
    assert all(c["status"] == 200 for c in lab.ep.calls("DetachVolume") + lab.ep.calls("AttachVolume"))
    assert [m["action"] for m in res["plan"]][0] == ("none" if interrupted == "after-one-attach" else "attach")
    for vol in lab.volumes(new).values():
        assert [(a["InstanceId"], a["State"]) for a in vol["Attachments"]] == [(lab.iid, "attached")]


def test_run_stopped_mid_detach_then_rerun_converges(monkeypatch, lab):
    _restore_id, restored = lab.restore()
    new = [r["volume_id"] for r in restored]
    lab.ep.delays(detach_seconds=0.5)
    res = run(monkeypatch, lab.args(volumes=restored, detach_timeout=0.1))
    assert res["failed"] is True
    assert res["msg"].startswith("swap on %s stopped while detaching: timed out after 0.1 s waiting for" % lab.iid)
    assert "re-run the swap to continue from here" in res["msg"]
    assert sorted(res["detached"]) == sorted(lab.sources) and res["attached"] == []
    again = run(monkeypatch, lab.args(volumes=restored))
    assert again.get("failed") is not True, again.get("msg")
    assert [m["action"] for m in again["plan"]] == ["attach"] * 3
    assert sorted(c["params"]["VolumeId"] for c in lab.ep.calls("DetachVolume")) == sorted(lab.sources)  # no second detach
    assert sorted(c["params"]["VolumeId"] for c in lab.ep.calls("AttachVolume")) == sorted(new)
    assert again["mapping"] == dict(zip(DEVICES, new))
    for vid, vol in lab.volumes(lab.sources).items():  # marked before their detach, by the first run
        assert catalog.tag_dict(vol["Tags"])["stillpoint:replaced-by"] == new[lab.sources.index(vid)]


def test_check_mode_plans_and_touches_nothing(monkeypatch, lab):
    _restore_id, restored = lab.restore()
    new = [r["volume_id"] for r in restored]
    before = lab.state(lab.sources + new)
    lab.ep.clear_calls()
    res = run(monkeypatch, lab.args(volumes=restored, delete_replaced=True, _ansible_diff=True), check_mode=True)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    assert [(m["current"], m["new"], m["action"]) for m in res["plan"]] == [
        (lab.sources[i], new[i], "replace") for i in range(3)]
    assert res["detached"] == lab.sources and res["attached"] == new and res["deleted"] == []
    assert res["diff"] == {"before": {"mapping": dict(zip(DEVICES, lab.sources))},
                           "after": {"mapping": dict(zip(DEVICES, new))}}
    assert lab.state(lab.sources + new) == before
    assert [c["action"] for c in lab.ep.calls() if not c["action"].startswith("Describe")] == []


def test_replacing_an_earlier_restore_and_deleting_only_ours(monkeypatch, lab):
    _first_id, first = lab.restore(salt="-1")
    res = run(monkeypatch, lab.args(volumes=first))
    assert res.get("failed") is not True, res.get("msg")
    second_id, second = lab.restore(salt="-2")
    lab.ep.clear_calls()
    res = run(monkeypatch, lab.args(restore_id=second_id, delete_replaced=True, force_detach=True))
    assert res.get("failed") is not True, res.get("msg")
    old, new = [r["volume_id"] for r in first], [r["volume_id"] for r in second]
    assert [c["params"].get("Force") for c in lab.ep.calls("DetachVolume")] == ["true"] * 3
    assert [m["replaces"] for m in res["plan"]] == ["earlier-restore"] * 3
    assert res["mapping"] == dict(zip(DEVICES, new))
    assert sorted(res["deleted"]) == sorted(old)
    assert lab.client.describe_volumes(Filters=[{"Name": "volume-id", "Values": old}])["Volumes"] == []
    assert sorted(lab.volumes(lab.sources)) == sorted(lab.sources)  # the originals are never deleted
    assert sorted(c["params"]["VolumeId"] for c in lab.ep.calls("DeleteVolume")) == sorted(old)


# ----------------------------------------------------------------------------- refusals

def _refused(monkeypatch, lab, args, watch):
    before = lab.state(watch)
    lab.ep.clear_calls()
    res = run(monkeypatch, args)
    assert res["failed"] is True
    assert res["msg"].startswith("refusing to swap set %s onto %s (nothing was detached or attached): "
                                 % (lab.set_id, lab.iid))
    assert mutations(lab.ep) == []
    assert lab.state(watch) == before
    return res


def test_refuses_restored_volume_in_another_az(monkeypatch, lab):
    _rid, restored = lab.restore()
    _rid_b, elsewhere = lab.restore(az="eu-west-1b")
    restored[2] = elsewhere[2]
    res = _refused(monkeypatch, lab, lab.args(volumes=restored), lab.sources + [r["volume_id"] for r in restored])
    assert res["problems"] == [
        "member 2 (/dev/sdh): restored volume %s is in eu-west-1b but instance %s is in %s (AZ mismatch); restore "
        "the set into %s" % (elsewhere[2]["volume_id"], lab.iid, lab.az, lab.az)]


def test_refuses_unknown_volume_at_a_device(monkeypatch, lab):
    _rid, restored = lab.restore()
    _detach(lab, lab.sources[1], DEVICES[1])
    stranger = lab.client.create_volume(AvailabilityZone=lab.az, Size=1)["VolumeId"]
    lab.attach(stranger, DEVICES[1])
    res = _refused(monkeypatch, lab, lab.args(volumes=restored), lab.sources + [stranger])
    assert res["problems"] == [
        "member 1 (/dev/sdg): /dev/sdg holds %s, which is neither the set's source volume %s nor a restored copy of "
        "member 1 of set %s; expected %s or %s there. Refusing to detach it (replace_unknown: true replaces it anyway)"
        % (stranger, lab.sources[1], lab.set_id, lab.sources[1], restored[1]["volume_id"])]


def test_refuses_copy_beside_its_source(monkeypatch, lab):
    _rid, restored = lab.restore()
    _detach(lab, lab.sources[0], DEVICES[0])
    lab.attach(lab.sources[0], "/dev/sdk")
    res = _refused(monkeypatch, lab, lab.args(volumes=restored), lab.sources + [r["volume_id"] for r in restored])
    assert res["problems"] == [
        "member 0 (/dev/sdf): the set's source volume %s would stay attached to %s at /dev/sdk while its restored "
        "copy %s is attached at /dev/sdf: both carry the same filesystem, LVM PV and md UUIDs. Detach %s first, or "
        "set allow_beside_source: true" % (lab.sources[0], lab.iid, restored[0]["volume_id"], lab.sources[0])]


def test_refuses_part_of_a_set(monkeypatch, lab):
    _rid, restored = lab.restore()
    res = _refused(monkeypatch, lab, lab.args(volumes=[restored[0], restored[2]]),
                   lab.sources + [r["volume_id"] for r in restored])
    assert res["problems"] == [
        "no restored volume for member(s) 1 of set %s; a swap never attaches part of a set (restore every member "
        "first)" % lab.set_id]
