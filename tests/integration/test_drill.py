# -*- coding: utf-8 -*-
"""playbooks/drill.yml (role restore_drill) end to end on this host, against the strict EC2 endpoint.

Two local instances (tests/support/world.py): the source, whose 2-volume set playbooks/backup.yml takes,
and a scratch instance with a volume of its own. The drill creates volumes from the set's snapshots,
the endpoint attaches them to the scratch instance as loop devices, the role brings them up read-only
under a scratch root, checks them, records the verdict on the set and removes every scratch volume.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.mounts import mounts
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import ansible_env
from tests.support.world import checksum
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_data
from tests.support.world import write_playbook

pytestmark = pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
DRILL = os.path.join(ROOT, "playbooks", "drill.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
CHANGING = ("Create", "Attach", "Detach", "Delete", "Modify", "Enable", "Disable", "Copy", "Lock")
CREATE = "Create the scratch volumes from the set in the scratch instance's zone and attach them at free names"
UP = "Bring the copy up read-only under the drill root (check each filesystem, mount; md/LVM as clones)"
LEFTOVERS = "Remove the leftover scratch volumes (detach from the scratch instance, delete)"
REMOVE = "Remove the scratch volumes (detach from the scratch instance, delete)"
VERDICT = "Record the verdict on every member snapshot of the set"
TIMINGS = []  # (test, report) for the table printed at the end (run with -s)


def backup(ec2, inst, fstype="ext4"):
    rc, res, _raw = run_playbook(BACKUP, ec2, {
        "backup_hosts": "localhost", "backup_become": False, "array_backup_mode": "host",
        "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
        "array_backup_name": "drill-test", "array_backup_keep_last": 0,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2})
    assert rc == 0, failed(res)
    return task(res, TAKE)


def drill(ec2, scratch, root, check=False, **extra):
    variables = {"drill_hosts": "localhost", "drill_become": False, "restore_drill_instance_id": scratch.instance_id,
                 "restore_drill_by_id_dir": scratch.by_id_dir, "restore_drill_root": str(root),
                 "restore_drill_aws_endpoint_url": ec2.url, "restore_drill_aws_region": ec2.region,
                 "restore_drill_device_timeout": 30, "restore_drill_wait_timeout": 60}
    variables.update(extra)
    return run_playbook(DRILL, ec2, variables, check=check)


def changing_calls(ec2):
    return [c["action"] for c in ec2.calls() if c["action"].startswith(CHANGING)]


def mapping(ec2, instance_id):
    inst = ec2.client().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {b["DeviceName"]: b["Ebs"]["VolumeId"] for b in inst["BlockDeviceMappings"]}


def drill_volumes(ec2, set_id=None):
    filters = [{"Name": "tag-key", "Values": ["stillpoint:drill-of"]}]
    if set_id:
        filters = [{"Name": "tag:stillpoint:drill-of", "Values": [set_id]}]
    return ec2.client().describe_volumes(Filters=filters)["Volumes"]


def under(root):
    root = str(root).rstrip("/") + "/"
    return [m for _s, m, _d in mounts() if (m + "/").startswith(root)]


def verdicts(ec2, snapshot_ids, region=None):
    snaps = ec2.client(region=region or ec2.region).describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
    out = {}
    for snap in snaps:
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        chunks = [tags.get("stillpoint:drill")] + [tags[k] for k in sorted(t for t in tags if t.startswith("stillpoint:drill."))]
        out[snap["SnapshotId"]] = json.loads("".join(chunks)) if chunks[0] else None
    return out


def source_state(ec2, source):
    vols = ec2.client().describe_volumes(VolumeIds=source.volume_ids)["Volumes"]
    return {"mapping": mapping(ec2, source.instance_id),
            "volumes": sorted((v["VolumeId"], v["State"], [(a["InstanceId"], a["Device"], a["State"])
                                                           for a in v["Attachments"]]) for v in vols)}


def touches(ec2, ids):
    """EC2 calls that change something and name one of ``ids`` (the source instance and its volumes) as a
    resource (a tag value naming the source volume, stillpoint:source-volume, is no touch)."""
    return [c for c in ec2.calls() if c["action"].startswith(CHANGING)
            and any(str(v) in ids for k, v in c["params"].items() if "Tag" not in k)]


def unmount_under(root):
    for mp in sorted(under(root), key=lambda m: m.count("/"), reverse=True):
        os.system("umount -l %s" % mp)


def info(ec2, tmp_path, **args):
    aws = {"endpoint_url": ec2.url, "region": ec2.region}
    play = write_playbook(tmp_path, [{"name": "info", "stillpoint.snapshots.backup_set_info": dict(aws, **args)}],
                          name="info.yml")
    rc, res, _raw = run_playbook(play, ec2)
    assert rc == 0, failed(res)
    return res["info"]


def test_drill_check_mode_then_real_run(ec2, tmp_path):
    root = tmp_path / "drill"
    with EmulatedInstance(ec2, n=2, local=True) as source:
        sums = write_data(source.mountpoints)
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as scratch:  # the emulated IMDS says: this host is scratch
            try:
                before = source_state(ec2, source)
                scratch_own = mapping(ec2, scratch.instance_id)

                ec2.clear_calls()
                rc, res, _raw = drill(ec2, scratch, root, check=True, restore_drill_set_id=taken["set_id"])
                assert rc == 0, failed(res)
                assert changing_calls(ec2) == []
                plan = task(res, CREATE)
                assert [v["device"] for v in plan["volumes"]] == ["/dev/sdg", "/dev/sdh"]  # sdf is the scratch's own
                assert "plan: drill set %s onto %s" % (taken["set_id"], scratch.instance_id) in task(res, "Report the drill")["msg"]

                ec2.clear_calls()
                t0 = time.monotonic()
                rc, res, raw = drill(ec2, scratch, root, restore_drill_name="drill-test",
                                     restore_drill_source_instance_id=source.instance_id)
                wall = time.monotonic() - t0
                assert rc == 0, failed(res)
                assert sorted(changing_calls(ec2)) == sorted(["CreateVolume"] * 2 + ["AttachVolume"] * 2
                                                             + ["CreateTags"] + ["DetachVolume"] * 2 + ["DeleteVolume"] * 2)
                up = task(res, UP)
                assert [m["mounted"] for m in up["mounts"]] == [True, True]
                assert all("ro" in m["options"].split(",") for m in up["mounts"])
                assert all(m["mountpoint"].startswith(str(root) + "/" + taken["set_id"] + "/") for m in up["mounts"])
                assert len([a for a in up["actions"] if a["what"].startswith("check ")]) >= 2

                # the verdict on every member, read back from the endpoint
                found = verdicts(ec2, taken["snapshot_ids"])
                assert len(found) == 2
                for value in found.values():
                    assert value["set"] == taken["set_id"] and value["result"] == "pass"
                    assert value["instance"] == scratch.instance_id and value["rto_s"] > 0
                    assert value["checks"]["filesystems"].startswith("pass")
                    assert value["checks"]["manifest"].startswith("none")
                    assert sorted(value["phases"]) == ["attach_s", "create_s", "up_s"]
                    assert abs(sum(value["phases"].values()) - value["rto_s"]) < 0.2
                assert len(set(json.dumps(v, sort_keys=True) for v in found.values())) == 1

                # every scratch volume gone: at the endpoint and on the host
                assert drill_volumes(ec2) == []
                assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
                assert mapping(ec2, scratch.instance_id) == scratch_own
                assert under(root) == []
                # the source untouched
                assert source_state(ec2, source) == before
                assert touches(ec2, set([source.instance_id] + source.volume_ids)) == []
                assert all(checksum(p) == s for p, s in sums.items())

                report = raw["global_custom_stats"]["stillpoint_drills"]["localhost"]
                assert report["result"] == "pass" and report["rto_s"] == found[taken["snapshot_ids"][0]]["rto_s"]
                assert sorted(report["removed"]) == sorted(v["volume_id"] for v in task(res, CREATE)["volumes"])
                TIMINGS.append(("first drill", report, wall))
                lines = task(res, "Report the drill")["msg"]
                assert lines[0].endswith(": PASS") and lines[1].startswith("RTO ")
                print("\n".join(lines))

                # the catalog answers: the verdict, the newest verified set
                got = info(ec2, tmp_path, set_id=taken["set_id"], newest_verified=True, verified_only=True)
                assert got["sets"][0]["drill"]["result"] == "pass" and got["sets"][0]["drill"]["members_agree"] is True
                assert [n["set_id"] for n in got["newest_verified"]] == [taken["set_id"]]
            finally:
                unmount_under(root)


def test_drill_refusals(ec2, tmp_path):
    root = tmp_path / "drill"
    with EmulatedInstance(ec2, n=2, local=True) as source:
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as scratch:
            # the source instance named as the scratch instance
            ec2.clear_calls()
            rc, res, _raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"],
                                  restore_drill_instance_id=source.instance_id)
            assert rc != 0
            msg = task(res, "Refuse the set's source instance as the scratch instance (a drill never touches the source)")["msg"]
            assert "is the instance set %s was taken from" % taken["set_id"] in msg, msg
            assert changing_calls(ec2) == []

            # the play host is the source instance (its metadata says so)
            ec2.set_imds(instance_id=source.instance_id, az=source.info["az"])
            ec2.clear_calls()
            rc, res, _raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"])
            assert rc != 0
            msg = task(res, "Refuse a play host that is not the scratch instance (nothing has changed yet)")["msg"]
            assert "the SOURCE instance of set %s" % taken["set_id"] in msg, msg
            assert changing_calls(ec2) == []
            ec2.set_imds(instance_id=scratch.instance_id, az=scratch.info["az"])

            # a partial set
            ec2.client().create_tags(Resources=[taken["snapshot_ids"][1]],
                                     Tags=[{"Key": "stillpoint:state", "Value": "partial"}])
            ec2.clear_calls()
            rc, res, _raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"])
            assert rc != 0
            assert "never part of one" in task(res, "Refuse anything but one complete set")["msg"]
            assert changing_calls(ec2) == []
            assert drill_volumes(ec2) == []


def test_drill_interrupted_then_rerun_removes_the_leftovers_first(ec2, tmp_path):
    """The state a drill killed after create, attach and mount leaves (made with the role's own modules), then
    drill.yml again: the leftovers are unmounted, detached and deleted first, the drill passes, nothing is left."""
    root = tmp_path / "drill"
    with EmulatedInstance(ec2, n=2, local=True) as source:
        sums = write_data(source.mountpoints)
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as scratch:
            try:
                before = source_state(ec2, source)
                aws = {"endpoint_url": ec2.url, "region": ec2.region}
                tasks = [
                    {"name": "create", "register": "scratch", "stillpoint.snapshots.drill_scratch": dict(
                        aws, state="present", set_id=taken["set_id"], instance_id=scratch.instance_id, root=str(root))},
                    {"name": "up", "stillpoint.snapshots.array_host": {
                        "state": "up", "layout": "{{ scratch.set.array }}", "import_clone": True,
                        "volume_ids": "{{ scratch.volumes | map(attribute='volume_id') }}",
                        "mountpoint_map": "{{ scratch.clone.mountpoint_map }}", "mount_options_extra": ["ro"],
                        "by_id_dir": scratch.by_id_dir, "device_timeout": 30}}]
                rc, res, _raw = run_playbook(write_playbook(tmp_path, tasks, name="interrupt.yml"), ec2)
                assert rc == 0, failed(res)
                left = sorted(v["volume_id"] for v in res["create"]["volumes"])
                assert len(under(root)) == 2 and len(drill_volumes(ec2, taken["set_id"])) == 2

                # check mode plans the removal and changes nothing
                ec2.clear_calls()
                rc, res, _raw = drill(ec2, scratch, root, check=True, restore_drill_set_id=taken["set_id"])
                assert rc == 0, failed(res)
                assert changing_calls(ec2) == [] and len(under(root)) == 2
                plan = task(res, "Report the drill")["msg"]
                assert "first remove the leftovers %s" % ", ".join(left) in plan, plan

                ec2.clear_calls()
                rc, res, raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"])
                assert rc == 0, failed(res)
                assert sorted(task(res, LEFTOVERS)["removed"]) == left
                calls = [c["action"] for c in ec2.calls()]
                first_create = calls.index("CreateVolume")
                assert calls[:first_create].count("DeleteVolume") == 2  # the leftovers went first
                new = sorted(v["volume_id"] for v in task(res, CREATE)["volumes"])
                assert not set(new) & set(left)
                assert sorted(task(res, REMOVE)["removed"]) == new
                assert all(v["result"] == "pass" for v in verdicts(ec2, taken["snapshot_ids"]).values())
                assert drill_volumes(ec2) == []
                assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
                assert under(root) == []
                assert source_state(ec2, source) == before
                assert all(checksum(p) == s for p, s in sums.items())
                report = raw["global_custom_stats"]["stillpoint_drills"]["localhost"]
                assert sorted(report["leftovers_removed"]) == left
                TIMINGS.append(("re-run after interruption", report, None))
                print("\n".join(task(res, "Report the drill")["msg"]))
            finally:
                unmount_under(root)


def test_drill_killed_after_attach_then_rerun_leaves_nothing(ec2, tmp_path):
    """ansible-playbook SIGKILLed (its whole process group) once both AttachVolume calls were made (the
    endpoint's DescribeVolumes made slow so the run is still waiting for the attachments): the re-run removes
    the two attached leftovers first, passes, and leaves nothing."""
    root = tmp_path / "drill"
    with EmulatedInstance(ec2, n=2, local=True) as source:
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as scratch:
            try:
                variables = {"drill_hosts": "localhost", "drill_become": False,
                             "restore_drill_instance_id": scratch.instance_id, "restore_drill_set_id": taken["set_id"],
                             "restore_drill_by_id_dir": scratch.by_id_dir, "restore_drill_root": str(root),
                             "restore_drill_aws_endpoint_url": ec2.url, "restore_drill_aws_region": ec2.region}
                cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c",
                       "local", "-e", "ansible_python_interpreter=%s" % sys.executable, DRILL, "-e", json.dumps(variables)]
                ec2.clear_calls()
                ec2.latency("DescribeVolumes", 400)
                proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(ec2), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                try:
                    deadline = time.monotonic() + 120
                    while [c["action"] for c in ec2.calls()].count("AttachVolume") < 2:
                        assert proc.poll() is None, "the drill ended before it attached"
                        assert time.monotonic() < deadline, "no two AttachVolume calls within 120 s"
                        time.sleep(0.05)
                    os.killpg(proc.pid, signal.SIGKILL)
                finally:
                    proc.wait(timeout=30)
                    ec2.latency("DescribeVolumes", 0)
                left = sorted(v["VolumeId"] for v in drill_volumes(ec2, taken["set_id"]))
                assert len(left) == 2
                assert "DeleteVolume" not in [c["action"] for c in ec2.calls()]

                ec2.clear_calls()
                rc, res, raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"])
                assert rc == 0, failed(res)
                assert sorted(task(res, LEFTOVERS)["removed"]) == left
                assert all(v["result"] == "pass" for v in verdicts(ec2, taken["snapshot_ids"]).values())
                assert drill_volumes(ec2) == [] and under(root) == []
                assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
                TIMINGS.append(("re-run after SIGKILL", raw["global_custom_stats"]["stillpoint_drills"]["localhost"], None))
            finally:
                unmount_under(root)


def test_a_failed_check_records_fail_and_still_removes_everything(ec2, tmp_path):
    """A sentinel that the copy lacks fails the drill after the volumes were attached and mounted: the verdict
    says fail (where it failed, no RTO), the copy is taken down, every scratch volume removed, the job fails."""
    root = tmp_path / "drill"
    with EmulatedInstance(ec2, n=2, local=True) as source:
        taken = backup(ec2, source)
        with EmulatedInstance(ec2, n=1, local=True) as scratch:
            try:
                ec2.clear_calls()
                rc, res, raw = drill(ec2, scratch, root, restore_drill_set_id=taken["set_id"],
                                     restore_drill_sentinel="no-such-file")
                assert rc != 0
                assert "Sentinel missing" in task(res, UP)["msg"]
                for value in verdicts(ec2, taken["snapshot_ids"]).values():
                    assert value["result"] == "fail" and value["rto_s"] is None
                    assert value["checks"]["failed_at"] == UP
                assert len(task(res, REMOVE)["removed"]) == 2
                assert drill_volumes(ec2) == [] and under(root) == []
                assert [d["volume_id"] for d in ec2.local_devices(instance_id=scratch.instance_id)] == scratch.volume_ids
                assert task(res, "Fail the job when the set did not pass its drill (the verdict is recorded)")["failed"]
                got = info(ec2, tmp_path, set_id=taken["set_id"], newest_verified=True)
                assert got["sets"][0]["drill"]["result"] == "fail" and got["newest_verified"] == []
            finally:
                unmount_under(root)


DEST = "eu-central-1"


def catalog_set(ec2, n=2):
    """A complete set made as ebs_snapshot_set makes it (no filesystem needed: the catalog side only)."""
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog

    client = ec2.client()
    world = ec2.create_instance(volumes=[{"size": 1, "device": "/dev/sd%s" % "fg"[i]} for i in range(n)])
    set_id = catalog.new_set_id()
    shared = catalog.set_tags(set_id, "drill-catalog", n, world["instance_id"], world["az"], "db1", "filesystem")
    items = client.create_snapshots(
        InstanceSpecification={"InstanceId": world["instance_id"], "ExcludeBootVolume": True},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared)}])["Snapshots"]
    by_volume = dict((it["VolumeId"], it["SnapshotId"]) for it in items)
    ids = [by_volume[vol["volume_id"]] for vol in world["volumes"]]
    map_tags, _per_member = catalog.member_catalog_tags([(index, vol["device"], vol["volume_id"], ["/srv/data"])
                                                         for index, vol in enumerate(world["volumes"])])
    client.create_tags(Resources=ids, Tags=catalog.to_tag_list(map_tags))
    ec2.pending(0, snapshot_ids=ids)
    client.create_tags(Resources=ids, Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])
    return set_id, ids, world


def test_verdict_module_copies_and_newest_verified_in_two_regions(ec2, monkeypatch):
    """backup_set_verdict (check mode writes nothing; a shorter verdict removes the stale chunk of a longer
    one), then backup_set_copy to a second region: backup_set_info lists the copy under copy_regions, counts the
    verdict on the source only (the copy does not carry the source's verdict), newest_verified per region."""
    from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_copy
    from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_info
    from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_verdict
    from tests.unit.utils import run_module

    set_id, ids, world = catalog_set(ec2)
    aws = dict(endpoint_url=ec2.url, access_key="testing", secret_key="testing", region=ec2.region)
    ec2.clear_calls()
    args = dict(aws, set_id=set_id, result="pass", rto_s=3.0, scratch_instance_id="i-scratch")
    res = run_module(monkeypatch, backup_set_verdict.main, args, check_mode=True)
    assert res["changed"] is True and changing_calls(ec2) == []
    long = run_module(monkeypatch, backup_set_verdict.main, dict(
        aws, set_id=set_id, result="fail", checks={"failed_at": "x" * 300}, scratch_instance_id="i-scratch"))
    assert sorted(long["tags"]) == ["stillpoint:drill", "stillpoint:drill.1"]
    short = run_module(monkeypatch, backup_set_verdict.main, dict(args, checks={"filesystems": "pass"}))
    assert short["removed_keys"] == ["stillpoint:drill.1"] and sorted(short["snapshot_ids"]) == sorted(ids)
    assert all(v["result"] == "pass" for v in verdicts(ec2, ids).values())

    copy_args = dict(aws, set_id=set_id, destination_region=DEST, poll_interval=0.1, wait_timeout=30)
    copied = run_module(monkeypatch, backup_set_copy.main, copy_args)
    assert not copied.get("failed"), copied
    copy_id = copied["set_id"]
    assert copy_id != set_id
    here = run_module(monkeypatch, backup_set_info.main, dict(aws, set_id=set_id, copy_regions=[DEST, ec2.region],
                                                              newest_verified=True))
    assert here["sets"][0]["drill"]["result"] == "pass"
    assert [(c["set_id"], c["region"]) for c in here["sets"][0]["copies"]] == [(copy_id, DEST)]
    assert here["sets"][0]["copies"][0]["marked"] == ["complete"]
    assert [n["set_id"] for n in here["newest_verified"]] == [set_id]
    there = run_module(monkeypatch, backup_set_info.main, dict(aws, region=DEST, instance_id=world["instance_id"],
                                                               newest_verified=True))
    assert [s["set_id"] for s in there["sets"]] == [copy_id]
    assert there["sets"][0]["drill"] is None and there["newest_verified"] == []
    carried = ec2.client(region=DEST).describe_snapshots(SnapshotIds=there["sets"][0]["snapshot_ids"])["Snapshots"]
    assert not any(t["Key"].startswith("stillpoint:drill") for c in carried for t in c["Tags"])  # not copied


CHECK_MANIFEST = """import hashlib, os, sys
bad = []
for top in sys.argv[1:]:
    with open(os.path.join(top, "MANIFEST.sha256")) as handle:
        for line in handle:
            digest, name = line.split()
            with open(os.path.join(top, name), "rb") as data:
                if hashlib.sha256(data.read()).hexdigest() != digest:
                    bad.append(os.path.join(top, name))
print("checked", sys.argv[1:], "bad", bad)
sys.exit(1 if bad else 0)
"""


def test_drill_of_the_off_site_copy_in_its_region_with_a_manifest(ec2, tmp_path, monkeypatch):
    """The set copied to eu-central-1 (backup_set_copy), drilled there (restore_drill_aws_region) onto a local
    scratch instance of that region; the checksum command checks the manifest the data kept; the verdict is
    on the copy's members, the source set has none."""
    import shutil
    import tempfile
    import types

    from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_copy
    from tests.unit.utils import run_module

    root = tmp_path / "drill"
    script = tmp_path / "check_manifest.py"
    script.write_text(CHECK_MANIFEST)
    with EmulatedInstance(ec2, n=2, local=True) as source:
        sums = write_data(source.mountpoints)
        for mp in source.mountpoints:
            with open(os.path.join(mp, "MANIFEST.sha256"), "w") as handle:
                handle.write("".join("%s  %s\n" % (s, os.path.basename(p)) for p, s in sums.items()
                                     if os.path.dirname(p) == mp))
        os.sync()
        taken = backup(ec2, source)
        aws = dict(endpoint_url=ec2.url, access_key="testing", secret_key="testing", region=ec2.region)
        copy_args = dict(aws, set_id=taken["set_id"], destination_region=DEST, poll_interval=0.1, wait_timeout=60)
        copied = run_module(monkeypatch, backup_set_copy.main, copy_args)
        assert not copied.get("failed"), copied
        copy_id = copied["set_id"]
        by_id = tempfile.mkdtemp(prefix="stillpoint-by-id-")
        made = ec2.create_instance(region=DEST, volumes=[], local=True, by_id_dir=by_id)
        scratch = types.SimpleNamespace(instance_id=made["instance_id"], by_id_dir=by_id)
        ec2.set_imds(instance_id=made["instance_id"], az=made["az"], region=DEST)
        copies_at = [str(root) + "/" + copy_id + mp for mp in source.mountpoints]
        try:
            ec2.clear_calls()
            rc, res, raw = drill(ec2, scratch, root, restore_drill_set_id=copy_id, restore_drill_aws_region=DEST,
                                 restore_drill_checksum_command=[sys.executable, str(script)] + copies_at)
            assert rc == 0, failed(res)
            assert set(c["region"] for c in ec2.calls() if c["action"].startswith(CHANGING)) == {DEST}
            client = ec2.client(region=DEST)
            snaps = client.describe_snapshots(Filters=[{"Name": "tag:stillpoint:set-id", "Values": [copy_id]}])["Snapshots"]
            found = list(verdicts(ec2, [sn["SnapshotId"] for sn in snaps], region=DEST).values())
            assert len(found) == 2 and all(v["set"] == copy_id and v["result"] == "pass" for v in found)
            assert all(v["checks"]["manifest"].startswith("pass: ") for v in found)
            assert all(v["region"] == DEST for v in found)
            assert all(value is None for value in verdicts(ec2, taken["snapshot_ids"]).values())
            assert client.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["stillpoint:drill-of"]}])["Volumes"] == []
            assert ec2.local_devices(instance_id=made["instance_id"]) == [] and under(root) == []
            assert all(checksum(p) == s for p, s in sums.items())
            TIMINGS.append(("off-site copy in %s, manifest checked" % DEST,
                            raw["global_custom_stats"]["stillpoint_drills"]["localhost"], None))
        finally:
            unmount_under(root)
            client = ec2.client(region=DEST)
            for vol in client.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["stillpoint:drill-of"]}])["Volumes"]:
                if vol["Attachments"]:
                    client.detach_volume(VolumeId=vol["VolumeId"], Force=True)
            shutil.rmtree(by_id, ignore_errors=True)


def test_zz_timing_table():
    """Prints the drills' timing table (pytest -s); asserts only that the drills above recorded one."""
    if not TIMINGS:
        pytest.skip("no drill ran in this session")
    print("\n| drill | RTO s | create s | attach s | up+checks s | cleanup s |")
    print("|---|---|---|---|---|---|")
    for name, report, _wall in TIMINGS:
        ph = report["phases"]
        row = (name, report["rto_s"], ph.get("create_s"), ph.get("attach_s"), ph.get("up_s"), ph.get("cleanup_s"))
        print("| %s | %s | %s | %s | %s | %s |" % row)
        assert report["rto_s"] > 0


def failed(res):
    """The failed tasks of a run with their messages (for assertion messages)."""
    return dict((k, v.get("msg")) for k, v in res.items() if v.get("failed"))
