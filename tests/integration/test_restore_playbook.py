# -*- coding: utf-8 -*-
"""playbooks/restore.yml (role array_restore) end to end on this host.

The emulated instance is local at the EC2 endpoint: its volumes are loop devices the endpoint attaches
(losetup + udev-style link) when AttachVolume is called, so a restore really creates volumes from the
snapshots' bytes, detaches the live ones and attaches the new ones at the recorded device names, and
the filesystems come back with the data of the backup.
"""

import os

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.mounts import mounts
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import checksum
from tests.support.world import destroy
from tests.support.world import write_data
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_playbook

pytestmark = pytest.mark.skipif(missing_requirements("btrfs") is not None, reason=str(missing_requirements("btrfs")))

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
MUTATING = ("CreateVolume", "AttachVolume", "DetachVolume", "DeleteVolume")
# any EC2 call that changes something (DryRun requests are not in ec2.calls())
CHANGING = ("Create", "Attach", "Detach", "Delete", "Modify", "Enable", "Disable")
PROVE = "Read which instance the play host is (its own instance metadata, IMDSv2)"
REFUSE_HOST = "Refuse a play host that is not the target instance (nothing has changed yet)"
PLAN = "Plan of the swap and the host steps (check mode, volumes not created yet)"


def backup(ec2, inst, mode="host"):
    rc, res, _raw = run_playbook(BACKUP, ec2, {
        "backup_hosts": "localhost", "backup_become": False, "array_backup_mode": mode,
        "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
        "array_backup_name": "restore-test", "array_backup_keep_last": 0,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2})
    assert rc == 0, res
    return task(res, TAKE)


def restore(ec2, inst, set_id, check=False, mode="host", **extra):
    rc, res, raw = run_playbook(RESTORE, ec2, dict({
        "restore_hosts": "localhost", "restore_become": False, "array_restore_mode": mode,
        "array_restore_set_id": set_id, "array_restore_by_id_dir": inst.by_id_dir,
        "array_restore_aws_endpoint_url": ec2.url, "array_restore_aws_region": ec2.region,
        "array_restore_device_timeout": 30}, **extra), check=check)
    return rc, res, raw


def mapping(ec2, instance_id):
    inst = ec2.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {b["DeviceName"]: b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"]}


def mutating_calls(ec2):
    return [c["action"] for c in ec2.calls() if c["action"] in MUTATING]


def changing_calls(ec2):
    return [c["action"] for c in ec2.calls() if c["action"].startswith(CHANGING)]


def mounted(paths):
    """The subset of ``paths`` that are mountpoints now."""
    now = set(m for _s, m, _d in mounts())
    return [p for p in paths if p in now]


@pytest.mark.parametrize("layout", ["filesystems", "array"])
def test_restore_check_mode_real_run_and_rerun(ec2, layout):
    with EmulatedInstance(ec2, n=3, layout=layout, local=True) as inst:
        sums = write_data(inst.mountpoints)
        taken = backup(ec2, inst)
        destroy(sums)
        before = mapping(ec2, inst.instance_id)

        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"], check=True)
        assert rc == 0, res
        assert mutating_calls(ec2) == []
        assert mapping(ec2, inst.instance_id) == before
        assert all(checksum(p) != s for p, s in sums.items())  # nothing was touched
        planned = task(res, "Create the volumes from the set in the instance's zone (before any downtime)")
        assert len(planned["volumes_to_create"]) == 3
        # the plan names the host's steps (the Windows task, skipped here, once overwrote them with its skip)
        [host_line] = [line for line in task(res, PLAN)["msg"] if line.startswith("host: ")]
        assert all("unmount %s" % mp in host_line for mp in inst.mountpoints), host_line

        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"])
        assert rc == 0, res
        assert all(checksum(p) == s for p, s in sums.items())
        swap = task(res, "Swap the volumes at the recorded device names")
        after = mapping(ec2, inst.instance_id)
        restored = task(res, "Create the volumes from the set in the instance's zone (before any downtime)")
        for vol in restored["volumes"]:
            assert after[vol["device"]] == vol["volume_id"]
            assert before[vol["device"]] != vol["volume_id"]
        assert sorted(mutating_calls(ec2)) == sorted(["CreateVolume"] * 3 + ["DetachVolume"] * 3
                                                     + ["AttachVolume"] * 3)
        assert swap["downtime_ms"] > 0

        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"])
        assert rc == 0, res
        assert mutating_calls(ec2) == []
        for name in ("Create the volumes from the set in the instance's zone (before any downtime)",
                     "Swap the volumes at the recorded device names",
                     "Bring the filesystems up on the restored volumes (assemble, activate, verify, mount, start)"):
            assert task(res, name)["changed"] is False, name
        assert all(checksum(p) == s for p, s in sums.items())


def interrupt(ec2, inst, set_id, tmp_path, step):
    """Leave the state a run killed right after ``step`` leaves, using the same modules."""
    aws = {"endpoint_url": ec2.url, "region": ec2.region}
    tasks = [{"name": "create", "register": "restored",
              "stillpoint.snapshots.ebs_volume_restore": dict(aws, set_id=set_id, instance_id=inst.instance_id)}]
    if step in ("detach", "attach"):
        tasks.append({"name": "read set", "register": "info",
                      "stillpoint.snapshots.backup_set_info": dict(aws, set_id=set_id)})
        tasks.append({"name": "down", "stillpoint.snapshots.array_host": {
            "state": "down", "layout": "{{ info.sets[0].array }}", "by_id_dir": inst.by_id_dir}})
    rc, res, _raw = run_playbook(write_playbook(tmp_path, tasks, name="interrupt.yml"), ec2)
    assert rc == 0, res
    client = ec2.client()
    new = {v["device"]: v["volume_id"] for v in res["create"]["volumes"]}
    if step in ("detach", "attach"):
        old = mapping(ec2, inst.instance_id)
        for device in new:
            client.detach_volume(VolumeId=old[device], InstanceId=inst.instance_id, Device=device)
        client.get_waiter("volume_available").wait(VolumeIds=[old[d] for d in new],
                                                   WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    if step == "attach":
        for device, volume_id in new.items():
            client.attach_volume(VolumeId=volume_id, InstanceId=inst.instance_id, Device=device)
        client.get_waiter("volume_in_use").wait(VolumeIds=list(new.values()),
                                                WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return new


@pytest.mark.parametrize("step", ["create", "detach", "attach"])
def test_restore_converges_after_a_run_killed_after_each_step(ec2, tmp_path, step):
    with EmulatedInstance(ec2, n=2, local=True) as inst:
        sums = write_data(inst.mountpoints)
        taken = backup(ec2, inst)
        destroy(sums)
        new = interrupt(ec2, inst, taken["set_id"], tmp_path, step)
        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"])
        assert rc == 0, res
        calls = mutating_calls(ec2)
        assert "CreateVolume" not in calls  # found the interrupted run's volumes
        expected = {"create": ["AttachVolume", "AttachVolume", "DetachVolume", "DetachVolume"],
                    "detach": ["AttachVolume", "AttachVolume"], "attach": []}[step]
        assert sorted(calls) == expected
        assert {d: v for d, v in mapping(ec2, inst.instance_id).items() if d in new} == new
        assert all(checksum(p) == s for p, s in sums.items())
        restored = ec2.client().describe_volumes(Filters=[
            {"Name": "tag:stillpoint:set-id", "Values": [taken["set_id"]]}])["Volumes"]
        assert sorted(v["VolumeId"] for v in restored) == sorted(new.values())  # no duplicates


def test_restore_refuses_a_partial_set(ec2):
    with EmulatedInstance(ec2, n=2, local=True) as inst:
        taken = backup(ec2, inst)
        client = ec2.client()
        client.create_tags(Resources=[taken["snapshot_ids"][1]], Tags=[{"Key": "stillpoint:state", "Value": "partial"}])
        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"])
        assert rc != 0
        refusal = task(res, "Refuse anything but one complete set")
        assert "only a complete set is restored, never part of one" in refusal["msg"]
        assert mutating_calls(ec2) == []
        # Windows services named for a Linux set: refused before any change
        client.create_tags(Resources=[taken["snapshot_ids"][1]], Tags=[{"Key": "stillpoint:state", "Value": "complete"}])
        rc, res, _raw = restore(ec2, inst, taken["set_id"], array_restore_windows_services="MSSQLSERVER")
        assert rc != 0
        refusal = task(res, "Refuse Windows services for a Linux set (nothing has changed yet)")
        assert "is not a Windows set: array_restore_windows_services (MSSQLSERVER)" in refusal["msg"], refusal
        assert mutating_calls(ec2) == []


def test_restore_in_controller_mode(ec2):
    with EmulatedInstance(ec2, n=2, layout="array", local=True) as inst:
        sums = write_data(inst.mountpoints)
        taken = backup(ec2, inst, mode="controller")
        destroy(sums)
        rc, res, _raw = restore(ec2, inst, taken["set_id"], mode="controller")
        assert rc == 0, res
        assert all(checksum(p) == s for p, s in sums.items())


def test_restore_refuses_a_play_host_that_is_not_the_target_instance(ec2):
    """The play host proves which instance it is (IMDSv2) before anything changes: another instance is
    refused, in check mode too, whether the target is the set's own or named by array_restore_instance_id;
    naming the play host's own instance (restore elsewhere) passes the proof; the set's instance restores."""
    with EmulatedInstance(ec2, n=2, local=True) as source:
        sums = write_data(source.mountpoints)
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as other:  # the emulated IMDS now says: this host is `other`
            before = {source.instance_id: mapping(ec2, source.instance_id),
                      other.instance_id: mapping(ec2, other.instance_id)}
            up = source.mountpoints + other.mountpoints
            for check, named in ((True, {}), (False, {}), (False, {"array_restore_instance_id": source.instance_id})):
                ec2.clear_calls()
                rc, res, _raw = restore(ec2, source, taken["set_id"], check=check, **named)
                assert rc != 0, res
                msg = task(res, REFUSE_HOST)["msg"]
                assert ("host localhost is instance %s, not the target instance %s" % (other.instance_id, source.instance_id)
                        in msg), msg
                assert ("array_restore_instance_id" if named else "the instance set %s was taken from" % taken["set_id"]) in msg
                assert "set array_restore_instance_id=%s to restore the set onto this instance" % other.instance_id in msg
                assert task(res, PROVE)["instance"]["instance_id"] == other.instance_id
                assert changing_calls(ec2) == [], ec2.calls()
                assert {i: mapping(ec2, i) for i in before} == before
                assert mounted(up) == up  # nothing unmounted on the host
                assert all(checksum(p) == s for p, s in sums.items())

            # restore elsewhere: the play host's own instance named as the target passes the proof (plan only)
            ec2.clear_calls()
            rc, res, _raw = restore(ec2, source, taken["set_id"], check=True, array_restore_instance_id=other.instance_id,
                                    array_restore_replace_unknown=True)
            assert task(res, PROVE)["instance"]["instance_id"] == other.instance_id
            assert task(res, REFUSE_HOST).get("failed") is not True, res
            assert rc == 0, res
            assert changing_calls(ec2) == []

            # the escape hatch skips the proof (check mode: the plan only)
            rc, res, _raw = restore(ec2, source, taken["set_id"], check=True, array_restore_check_host="false")
            assert rc == 0, res
            assert task(res, PROVE)["skipped"] is True and task(res, REFUSE_HOST)["skipped"] is True
            assert changing_calls(ec2) == []
            assert mounted(up) == up

        # the right host: the emulated IMDS says `source` again, and the set restores
        ec2.set_imds(instance_id=source.instance_id, az=source.info["az"])
        destroy(sums)
        ec2.clear_calls()
        rc, res, _raw = restore(ec2, source, taken["set_id"])
        assert rc == 0, res
        assert task(res, PROVE)["instance"]["instance_id"] == source.instance_id
        assert all(checksum(p) == s for p, s in sums.items())
        assert sorted(mutating_calls(ec2)) == sorted(["CreateVolume"] * 2 + ["DetachVolume"] * 2 + ["AttachVolume"] * 2)


def test_restore_refuses_a_host_without_a_metadata_service(ec2):
    with EmulatedInstance(ec2, n=1, local=True) as inst:
        taken = backup(ec2, inst)
        ec2.clear_calls()
        rc, res, _raw = restore(ec2, inst, taken["set_id"], check=True, array_restore_imds_endpoint="http://127.0.0.1:9")
        assert rc != 0, res
        msg = task(res, REFUSE_HOST)["msg"]
        assert "could not prove that it is the target instance %s" % inst.instance_id in msg, msg
        assert "http://127.0.0.1:9" in msg and "array_restore_check_host=false" in msg
        assert changing_calls(ec2) == []
        assert mounted(inst.mountpoints) == inst.mountpoints


HOST_VARIABLES = {"backup.yml": "backup_hosts", "restore.yml": "restore_hosts", "clusterpro_backup.yml": "clusterpro_hosts",
                  "clusterpro_restore.yml": "clusterpro_hosts", "drbd_mirror_backup.yml": "drbd_hosts",
                  "drbd_mirror_restore.yml": "drbd_hosts", "drbd_disk_replace.yml": "drbd_hosts"}


@pytest.mark.parametrize("playbook,value", [(p, "missing") for p in sorted(HOST_VARIABLES)]
                         + [("restore.yml", ""), ("restore.yml", None), ("backup.yml", "  ")])
def test_playbooks_refuse_a_run_without_their_hosts_variable(ec2, playbook, value):
    """No default host pattern (never `all`): a run without the variable, or with a blank survey answer,
    stops on localhost with a message naming it, before any play host or EC2 is touched."""
    variable = HOST_VARIABLES[playbook]
    extravars = {} if value == "missing" else {variable: value}
    ec2.clear_calls()
    rc, res, raw = run_playbook(os.path.join(ROOT, "playbooks", playbook), ec2, extravars)
    assert rc != 0
    refusal = task(res, "Refuse a run without %s (never every host of the inventory by default)" % variable)
    assert refusal["msg"].startswith("%s is required" % variable), refusal
    assert [play["play"]["name"] for play in raw["plays"]] == [
        "Require %s (no default hosts)" % variable]
    assert ec2.calls() == []
