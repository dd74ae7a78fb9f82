# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_vss_snapshot_set's controller half for real against the strict EC2 endpoint, with a FAKE AWS VSS agent.

There is no Windows host here. The Windows module's answers come from the FAKE Windows host
(tests/fakes/vss/windows.py: the fixtures under tests/unit/fixtures/vss with the endpoint's volume ids as NVMe
serials); Systems Manager is the FAKE SSM proxy (tests/fakes/vss/proxy.py) that runs the FAKE VSS agent
(tests/fakes/vss/agent.py, AWS's documented behaviour) and forwards EC2 to the strict endpoint. The library
(module_utils/_vss.py) talks to both with real boto3 clients from amazon.aws's plugin helper (TaskAWS), as the
action plugin does. What is left in the endpoint is counted after each case.

``test_xen_instance_maps_disks_by_pv_target`` takes a set on a FAKE Xen instance (tests/fakes/vss/disks.py in Xen
mode: PV disks without a volume id, target ids from the device names of the endpoint's block device mappings).

``test_real_windows_host`` runs the module on a real Windows instance when one is given (see its docstring);
here it is skipped.
"""

import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.plugin_utils._aws import TaskAWS
from tests.fakes.vss import FakeSsmProxy
from tests.fakes.vss import FakeVssAgent
from tests.fakes.vss import FakeWindowsHost
from tests.fakes.vss import disks as fake
from tests.fakes.vss import fake_windows_facts
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_playbook

AZ = "eu-west-1a"
DEVICES = ("/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi")  # E: spans sdf+sdg, F: is sdh, sdi is outside the array


@pytest.fixture
def world(ec2):
    """An instance with a boot volume, the array's three volumes and one more data volume."""
    inst = ec2.create_instance(az=AZ, volumes=[{"size": 1, "device": d} for d in DEVICES])
    vols = [v["volume_id"] for v in inst["volumes"]]
    return dict(inst, array=vols[:3], outside=vols[3], client=ec2.client())


def params(**kw):
    out = dict((k, v.get("default")) for k, v in vss.ARGUMENT_SPEC.items())
    out.update(members=["E:", "F:"], name="sql01", wait_timeout=60, poll_interval=0.2, command_timeout=60)
    out.update(kw)
    return out


def run(ec2, world, scenario="ok", facts=None, after_writers=None, check_mode=False, missing=None, **kw):
    agent = FakeVssAgent(world["client"], scenario, missing_volume_id=missing)
    proxy = FakeSsmProxy(ec2.url, agent).start()
    host = FakeWindowsHost(facts or fake_windows_facts(world["array"], boot_volume_id=world["boot_volume_id"]),
                           after_writers=after_writers)
    p = params(**kw)
    aws = TaskAWS(vss.WINDOWS_MODULE, dict(p, endpoint_url=proxy.url, region=ec2.region, access_key="testing",
                                           secret_key="testing", session_token=None, profile=None, aws_ca_bundle=None,
                                           aws_config=None, validate_certs=True, debug_botocore_endpoint_logs=False))
    try:
        try:
            return vss.take(p, host, aws, check_mode=check_mode, sleep=lambda s: None), agent, proxy, host
        except StillpointError as exc:
            return exc, agent, proxy, host
    finally:
        proxy.stop()


def left(world, set_id):
    """Snapshots in the endpoint still carrying the run's set id."""
    return world["client"].describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:stillpoint:set-id",
                                                                           "Values": [set_id]}])["Snapshots"]


def vss_snapshots_of(world, agent):
    ids = agent.runs[-1]["snapshot_ids"] if agent.runs else []
    return [s for s in world["client"].describe_snapshots(OwnerIds=["self"])["Snapshots"] if s["SnapshotId"] in ids]


def test_complete_application_set(ec2, world):
    ec2.clear_calls()
    res, agent, proxy, host = run(ec2, world)
    assert not isinstance(res, Exception), res
    assert res["state"] == "complete" and res["level"] == "application" and res["changed"]
    assert [m["volume_id"] for m in res["members"]] == world["array"]
    # one CreateSnapshots for the instance, boot volume excluded; the SSM command as documented
    calls = ec2.calls("CreateSnapshots")
    assert len(calls) == 1 and len(agent.runs) == 1 and len(proxy.sent) == 1
    sent = proxy.sent[0]["Parameters"]
    assert sent["CopyOnly"] == ["True"] and sent["NoWriters"] == ["False"] and sent["ExcludeBootVolume"] == ["True"]
    assert "Key=stillpoint:set-id,Value=%s" % res["set_id"] in sent["tags"][0]
    # the by-product (the volume outside the array) is deleted; only the members remain, all complete
    assert res["other_snapshots"]["deleted"] and not res["other_snapshots"]["errors"]
    remaining = left(world, res["set_id"])
    assert sorted(s["SnapshotId"] for s in remaining) == sorted(res["snapshot_ids"]) and len(remaining) == 3
    # the catalog reads it as any set (backup_set_info / retention use the same functions)
    rec = ebs.catalog_sets(world["client"], set_id=res["set_id"])[0]
    assert rec["state"] == "complete" and rec["level"] == "application" and rec["procedure"] == "win_vss_snapshot_set"
    assert [m["source_volume"] for m in rec["members"]] == world["array"]
    assert rec["members"][0]["mountpoints"] == ["E:\\"] and rec["members"][2]["mountpoints"] == ["F:\\"]
    assert rec["array"]["volumes"][0] == {
        "path": "E:\\", "volume_ids": world["array"][:2], "mapped_by": ["nvme-serial", "nvme-serial"],
        "identity": {"label": "SQLDATA", "fs": "NTFS", "size": "19 GB"}}
    assert res["vss_set_id"] == agent.runs[0]["vss_set_id"].strip("{}").lower()
    for s in remaining:
        tags = dict((t["Key"], t["Value"]) for t in s["Tags"])
        assert tags["AppConsistent"] == "true" and tags["Device"] in DEVICES
    # run again with the set id: the same set, nothing sent
    again, agent2, proxy2, _h = run(ec2, world, set_id=res["set_id"])
    assert again["changed"] is False and again["state"] == "complete" and not proxy2.sent and not agent2.runs


def test_check_mode_runs_the_preflight_only(ec2, world):
    ec2.clear_calls()
    res, agent, proxy, host = run(ec2, world, check_mode=True)
    assert res["changed"] is False and res["set_id"] is None and res["instance_id"] == world["instance_id"]
    assert not proxy.sent and not agent.runs and ec2.calls("CreateSnapshots") == []
    assert [a["report"] for _m, a in host.calls] == ["preflight"]


@pytest.mark.parametrize("scenario,after,expect", [
    ("writer_timeout", "failed", "restart the service that owns the failed writer"),
    ("hold_exceeded", "stable", "flush-and-hold window is 10 s"),
])
def test_failed_agent_run_is_rolled_back(ec2, world, scenario, after, expect):
    res, agent, proxy, host = run(ec2, world, scenario=scenario, after_writers=after)
    assert isinstance(res, StillpointError), res
    made = agent.runs[0]["snapshot_ids"]
    assert len(made) == 4 and "without AppConsistent=true" in res.msg and expect in res.msg
    assert "the whole set was deleted (0 snapshot(s) left)" in res.msg
    assert sorted(res.details["rollback"]["deleted"]) == sorted(made) and not res.details["rollback"]["left_partial"]
    assert left(world, res.details["set_id"]) == [] and vss_snapshots_of(world, agent) == []
    if scenario == "writer_timeout":
        assert "SqlServerWriter: [9] Failed / Timed out" in res.msg
    assert [a["report"] for _m, a in host.calls] == ["preflight", "writers"]


def test_member_missing_is_rolled_back(ec2, world):
    res, agent, _proxy, _host = run(ec2, world, scenario="member_missing", missing=world["array"][1])
    assert isinstance(res, StillpointError)
    assert "member %s has no snapshot" % world["array"][1] in res.msg
    assert len(agent.runs[0]["snapshot_ids"]) == 3 and left(world, res.details["set_id"]) == []


def test_set_in_progress_refused(ec2, world):
    # seen in the preflight: nothing is sent
    res, agent, proxy, _host = run(ec2, world, facts=fake_windows_facts(world["array"], writers="in_progress"))
    assert isinstance(res, StillpointError) and "VSS_E_SNAPSHOT_SET_IN_PROGRESS" in res.msg and not proxy.sent
    # begun between the preflight and the agent's run: the agent refuses, nothing was made
    ec2.clear_calls()
    res, agent, proxy, _host = run(ec2, world, scenario="in_progress")
    assert isinstance(res, StillpointError) and "nothing was created (0 snapshot(s) left)" in res.msg
    assert "Restart-Service -Name VSS" in res.msg and ec2.calls("CreateSnapshots") == []


def test_no_writers_gives_a_filesystem_set(ec2, world):
    res, agent, proxy, _host = run(ec2, world, facts=fake_windows_facts(world["array"], writers="failed"), writers=False)
    assert not isinstance(res, Exception), res
    assert res["level"] == "filesystem" and res["state"] == "complete"
    assert proxy.sent[0]["Parameters"]["NoWriters"] == ["True"]
    assert ebs.catalog_sets(world["client"], set_id=res["set_id"])[0]["level"] == "filesystem"


def test_preflight_refusal_sends_nothing(ec2, world):
    res, agent, proxy, _host = run(ec2, world, facts=fake_windows_facts(world["array"], version="2.3.1"))
    assert isinstance(res, StillpointError) and "older than 2.3.3" in res.msg and not proxy.sent


XEN_DEVICES = ("xvdh", "xvdf", "xvdg", "xvdi")  # E: spans xvdh+xvdf (disks 3 and 1), F: is xvdg, xvdi is outside


@pytest.fixture
def xen_world(ec2):
    """A Xen instance (m4) whose FAKE Windows host shows PV disks: attached out of order, so that disk order and volume
    order differ and only the target ids can tell the disks apart."""
    inst = ec2.create_instance(az=AZ, instance_type="m4.large", volumes=[{"size": 1, "device": d} for d in XEN_DEVICES])
    vols = [v["volume_id"] for v in inst["volumes"]]
    host = fake.xen_sql_host(ec2, inst, "1a2b3c4d-5e6f-4701-8293-a4b5c6d7e8f9",
                             others={3: ("2b3c4d5e-6f70-4812-93a4-b5c6d7e8f9a0", "OTHER", "G")})
    facts = dict(fake_windows_facts(vols[:3], boot_volume_id=inst["boot_volume_id"]),
                 **host.vss_facts(["E:\\", "F:\\"]))
    return dict(inst, array=vols[:3], outside=vols[3], client=ec2.client(), facts=facts, host=host)


def test_xen_instance_maps_disks_by_pv_target(ec2, xen_world):
    w = xen_world
    disks = w["facts"]["disks"]
    assert all(vss.disk_volume_id(d) is None and vss.is_pv_disk(d) for d in disks)  # nothing to read a volume id from
    assert [d["SCSITargetId"] for d in disks] == [0, 5, 6, 7, 8]  # sda1, then xvdf..xvdi by device name
    # check mode: the preflight maps every member disk and stops there
    ec2.clear_calls()
    res, agent, proxy, _host = run(ec2, w, facts=w["facts"], check_mode=True)
    assert not isinstance(res, Exception), res
    assert res["instance_id"] == w["instance_id"] and res["set_id"] is None and not proxy.sent and not agent.runs
    assert ec2.calls("CreateSnapshots") == []
    assert res["array"]["volumes"][0]["volume_ids"] == w["array"][:2]
    assert res["array"]["volumes"][0]["mapped_by"] == ["pv-target", "pv-target"]
    # the real run: every member snapshot is of the volume at the member's device name
    res, agent, proxy, _host = run(ec2, w, facts=w["facts"])
    assert not isinstance(res, Exception), res
    assert res["state"] == "complete" and res["level"] == "application"
    snaps = dict((s["SnapshotId"], s) for s in left(w, res["set_id"]))
    assert sorted(snaps) == sorted(res["snapshot_ids"]) and len(snaps) == 3
    by_volume = dict((s["VolumeId"], s) for s in snaps.values())
    assert sorted(by_volume) == sorted(w["array"]) and w["outside"] not in by_volume
    for vid, device in zip(w["array"], XEN_DEVICES):
        assert catalog.member_record(by_volume[vid])["device"] == device
    rec = ebs.catalog_sets(w["client"], set_id=res["set_id"])[0]
    assert rec["array"]["volumes"] == [
        {"path": "E:\\", "volume_ids": w["array"][:2], "mapped_by": ["pv-target", "pv-target"],
         "identity": {"label": "SQLDATA", "fs": "NTFS", "size": "19 GB"}},
        {"path": "F:\\", "volume_ids": [w["array"][2]], "mapped_by": ["pv-target"],
         "identity": {"label": "BACKUP", "fs": "NTFS", "size": "19 GB"}}]
    assert dict((m["source_volume"], m["mountpoints"]) for m in rec["members"]) == {
        w["array"][0]: ["E:\\"], w["array"][1]: ["E:\\"], w["array"][2]: ["F:\\"]}


def test_xen_instance_refusals(ec2, xen_world):
    w = xen_world
    # the host's metadata did not answer: the PV disks cannot be mapped, nothing is sent
    res, _agent, proxy, _host = run(ec2, w, facts=dict(w["facts"], instance_id=None, imds_error="FAKE: timed out"))
    assert isinstance(res, StillpointError) and not proxy.sent
    assert "disk 1 is not mapped to an EBS volume: it is a Xen PV disk" in res.msg
    # the metadata names another instance whose mappings do not fit the host's disks (one more volume, at xvdj)
    other = ec2.create_instance(az=AZ, instance_type="m4.large",
                                volumes=[{"size": 1, "device": d} for d in XEN_DEVICES + ("xvdj",)])
    res, _agent, proxy, _host = run(ec2, w, facts=dict(w["facts"], instance_id=other["instance_id"]))
    assert isinstance(res, StillpointError) and not proxy.sent
    assert "instance %s has xvdj (%s, target 9) attached, but the host shows no Xen PV disk at that target" % (
        other["instance_id"], other["volumes"][4]["volume_id"]) in res.msg
    # a member volume attached under a name the PV table does not have: in no mapping, refused
    w["client"].detach_volume(VolumeId=w["array"][2])
    w["client"].get_waiter("volume_available").wait(VolumeIds=[w["array"][2]], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    w["client"].attach_volume(VolumeId=w["array"][2], InstanceId=w["instance_id"], Device="/dev/sdg")
    res, _agent, proxy, _host = run(ec2, w, facts=w["facts"])
    assert isinstance(res, StillpointError) and not proxy.sent
    assert "its device name xvdg (Xen PV target 6) is in none of instance %s's block device mappings" % w["instance_id"] in res.msg


def test_posix_host_is_refused(tmp_path, ec2):
    playbook = write_playbook(tmp_path, [{"name": "vss", "stillpoint.snapshots.win_vss_snapshot_set": {"members": ["E:"]},
                                          "ignore_errors": True}])
    rc, res, _raw = run_playbook(playbook, ec2, timeout=120)
    out = task(res, "vss")
    assert out["failed"] and "runs on Windows hosts only" in out["msg"] and "sh shell family" in out["msg"], json.dumps(out)


REAL = ("STILLPOINT_WIN_INVENTORY", "STILLPOINT_WIN_HOST", "STILLPOINT_WIN_MEMBERS")


@pytest.mark.skipif(not all(os.environ.get(k) for k in REAL),
                    reason="no Windows instance given: set STILLPOINT_WIN_INVENTORY (an inventory with WinRM/PSRP "
                           "variables), STILLPOINT_WIN_HOST (the host in it) and STILLPOINT_WIN_MEMBERS (e.g. E:,F:) "
                           "to run win_vss_snapshot_set for real; AWS credentials and region from the environment")
def test_real_windows_host(tmp_path):
    """Against a real Windows EC2 instance (AwsVssComponents >= 2.3.3, SSM Agent, AWSEC2VssSnapshotPolicy): check
    mode, a real set, and its catalog record. It creates real snapshots (and deletes the by-products)."""
    members = os.environ["STILLPOINT_WIN_MEMBERS"].split(",")
    playbook = write_playbook(tmp_path, [
        {"name": "check", "stillpoint.snapshots.win_vss_snapshot_set": {"members": members}, "check_mode": True},
        {"name": "take", "stillpoint.snapshots.win_vss_snapshot_set": {"members": members, "name": "stillpoint-test"}},
    ])
    content = open(playbook).read().replace('"hosts": "localhost"', '"hosts": "%s"' % os.environ["STILLPOINT_WIN_HOST"])
    with open(playbook, "w") as handle:
        handle.write(content)

    class Real:
        @staticmethod
        def env():
            return {}
    rc, res, _raw = run_playbook(playbook, Real(), inventory=os.environ["STILLPOINT_WIN_INVENTORY"], timeout=1800)
    assert rc == 0, json.dumps(res, indent=1)[-3000:]
    assert task(res, "check")["set_id"] is None
    taken = task(res, "take")
    assert taken["state"] == "complete" and taken["level"] == "application"
