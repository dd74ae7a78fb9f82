# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the restore drill (plugins/module_utils/_drill.py) and of the catalog's drill/copy
reading (the end of _catalog.py): clone maps, free device names, the removal plan, the verdict and its tags,
verdicts read back from member snapshots, copies, the newest verified set."""

import json

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _drill as drill
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import CREATOR
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

SET = "bs-20240302T020000Z-d4e5f6"
LAYOUT = {"filesystems": [{"mountpoint": "/srv/pg", "fstype": "xfs", "members": [0, 1], "device": "/dev/data/pg"},
                          {"mountpoint": "/", "fstype": "ext4", "members": [2]}],
          "md": [{"device": "/dev/md0", "uuid": "a:b:c:d", "level": "raid0", "members": [0, 1]}],
          "lvm": [{"vg": "data", "uuid": "x", "pvs": ["/dev/md0"], "lvs": ["pg"]}]}


def test_clone_maps_put_everything_under_the_root_with_drill_names():
    maps = drill.clone_maps(LAYOUT, SET, "/mnt/stillpoint-drill/")
    assert maps["mountpoint_map"] == {"/srv/pg": "/mnt/stillpoint-drill/%s/srv/pg" % SET,
                                      "/": "/mnt/stillpoint-drill/%s" % SET}
    assert maps["vg_map"] == {"data": "data_drill"}
    assert maps["md_map"] == {"/dev/md0": "/dev/md/md0_drill"}
    assert drill.clone_maps({}, SET)["mountpoint_map"] == {}


@pytest.mark.parametrize("root,set_id", [("/", SET), ("relative", SET), ("/mnt/x", "bs-nope")])
def test_clone_maps_refuse_a_bad_root_or_set_id(root, set_id):
    with pytest.raises(StillpointError):
        drill.clone_maps(LAYOUT, set_id, root)


def test_free_devices_skip_names_in_use_and_their_aliases():
    inst = {"InstanceId": "i-1", "RootDeviceName": "/dev/xvda",
            "BlockDeviceMappings": [{"DeviceName": "/dev/xvda"}, {"DeviceName": "/dev/sdf"}]}
    vols = [{"Attachments": [{"InstanceId": "i-1", "Device": "/dev/xvdg", "State": "attaching"}]},
            {"Attachments": [{"InstanceId": "i-2", "Device": "/dev/sdh", "State": "attached"}]}]
    used = drill.used_devices(inst, vols)
    assert {"/dev/sdf", "/dev/xvdf", "/dev/sdg", "/dev/xvdg", "/dev/xvda", "/dev/sda"} <= used
    assert "/dev/sdh" not in used  # another instance's attachment is no name of this one
    assert drill.free_devices(used, 2) == ["/dev/sdh", "/dev/sdi"]


def test_free_devices_refuse_when_too_few_are_free():
    with pytest.raises(StillpointError, match="never detaches anything of the scratch instance"):
        drill.free_devices({"/dev/sdf"}, 2, candidates=("/dev/sdf", "/dev/sdg"))


def vol(vid, state="available", attachments=(), set_id=SET):
    return {"VolumeId": vid, "State": state, "Attachments": list(attachments),
            "Tags": [{"Key": drill.K_DRILL_OF, "Value": set_id}, {"Key": catalog.K_CREATOR, "Value": CREATOR}]}


def test_plan_removal_detaches_from_the_scratch_instance_only():
    plan = drill.plan_removal([
        vol("vol-4", "in-use", [{"InstanceId": "i-source", "Device": "/dev/sdg", "State": "attached"}]),
        vol("vol-1", "in-use", [{"InstanceId": "i-scratch", "Device": "/dev/sdg", "State": "attached"}]),
        vol("vol-2"), vol("vol-3", "creating"),
    ], "i-scratch")
    assert [(e["volume_id"], e["action"]) for e in plan] == [
        ("vol-1", "detach"), ("vol-2", "delete"), ("vol-3", "wait"), ("vol-4", "refuse")]
    assert plan[0]["device"] == "/dev/sdg" and plan[3]["attached_to"] == "i-source"
    assert all(e["set_id"] == SET for e in plan)


def test_verdict_and_its_tags():
    value = drill.verdict(SET, "pass", 41.234, {"filesystems": "pass"}, "i-scratch", region="eu-west-1",
                          verified_at="2024-03-03T02:10:00Z", phases={"create_s": 1.04, "up_s": None})
    assert value == {"set": SET, "result": "pass", "verified_at": "2024-03-03T02:10:00Z", "rto_s": 41.2,
                     "checks": {"filesystems": "pass"}, "instance": "i-scratch", "region": "eu-west-1",
                     "phases": {"create_s": 1.04}}
    tags = drill.verdict_tags(value)
    assert list(tags) == [drill.K_DRILL] and json.loads(tags[drill.K_DRILL]) == value
    long = drill.verdict(SET, "fail", None, {"failed_at": "x" * 300}, "i-scratch")
    chunks = drill.verdict_tags(long)
    assert sorted(chunks) == [drill.K_DRILL, drill.K_DRILL + ".1"]
    assert all(len(v) <= catalog.TAG_VALUE_MAX for v in chunks.values())
    assert catalog.decode_json(chunks, drill.K_DRILL) == long
    # a shorter verdict after a longer one removes the stale chunk
    assert drill.stale_chunks(dict(chunks, Name="x"), tags) == [drill.K_DRILL + ".1"]


@pytest.mark.parametrize("args", [(SET, "maybe"), ("bs-x", "pass")])
def test_verdict_refuses_bad_values(args):
    with pytest.raises(StillpointError):
        drill.verdict(args[0], args[1], 1.0, {}, "i-1")


def test_drill_restore_id_is_stable_and_not_a_restore_id():
    rid = drill.drill_restore_id(SET, "eu-west-1a", "i-1")
    assert rid == drill.drill_restore_id(SET, "eu-west-1a", "i-1") and rid.startswith("dr-") and len(rid) == 15
    assert rid != drill.drill_restore_id(SET, "eu-west-1a", "i-2")


def snap(sid, set_id, index, extra=None):
    tags = {catalog.K_SET_ID: set_id, catalog.K_MEMBER: str(index), catalog.K_CREATOR: CREATOR}
    tags.update(extra or {})
    return {"SnapshotId": sid, "Tags": catalog.to_tag_list(tags)}


def test_drill_of_reads_the_verdict_and_ignores_one_a_copy_inherited():
    v = drill.verdict(SET, "pass", 12.0, {}, "i-s", verified_at="2024-03-03T02:10:00Z")
    tags = drill.verdict_tags(v)
    snaps = [snap("snap-1", SET, 0, tags), snap("snap-2", SET, 1, tags)]
    got = catalog.drill_of(snaps, SET)
    assert got["result"] == "pass" and got["members_agree"] is True
    assert catalog.drill_of([snap("snap-1", SET, 0, tags), snap("snap-2", SET, 1)], SET)["members_agree"] is False
    copy = "bs-20240302T020000Z-9f3e1a"
    assert catalog.drill_of([snap("snap-3", copy, 0, tags)], copy) is None  # the source's verdict, carried
    assert catalog.drill_of(snaps, copy) is None


def test_copies_of_match_the_copy_of_tag():
    copy = "bs-20240302T020000Z-9f3e1a"
    snaps = [snap("snap-3", copy, 0, {catalog.K_COPY_OF_KEY: "123456789012:eu-west-1:" + SET,
                                      catalog.K_STATE: "complete"}),
             snap("snap-4", "bs-20240302T020000Z-000000", 0, {catalog.K_COPY_OF_KEY: "1:eu-west-2:" + SET})]
    assert catalog.copies_of(snaps, SET, "eu-central-1", source_region="eu-west-1") == [
        {"set_id": copy, "region": "eu-central-1", "marked": ["complete"]}]
    assert len(catalog.copies_of(snaps, SET, "eu-central-1")) == 2
    assert catalog.K_COPY_OF_KEY == __import__(
        "ansible_collections.stillpoint.snapshots.plugins.module_utils._copy", fromlist=["K_COPY_OF"]).K_COPY_OF


def rec(set_id, instance, result=None, state="complete", agree=True, name="pg"):
    drill_value = {"result": result, "verified_at": "t", "rto_s": 3.0, "members_agree": agree} if result else None
    return {"set_id": set_id, "instance_id": instance, "host": "h-" + instance, "name": name, "state": state,
            "created": set_id, "drill": drill_value}


def test_newest_verified_per_instance_and_name():
    records = [rec("bs-5", "i-1", "fail"), rec("bs-4", "i-1", "pass", agree=False), rec("bs-3", "i-1", "pass"),
               rec("bs-2", "i-1", "pass"), rec("bs-6", "i-2", "pass", state="partial"), rec("bs-1", "i-2", "pass"),
               rec("bs-0", "i-3")]
    got = catalog.newest_verified(records, "eu-west-1")
    assert [(r["instance_id"], r["set_id"]) for r in got] == [("i-1", "bs-3"), ("i-2", "bs-1")]
    assert got[0]["region"] == "eu-west-1" and got[0]["rto_s"] == 3.0
    assert catalog.verified(records[2]) and not catalog.verified(records[0]) and not catalog.verified(records[1])


def _verified_task():
    """The role's task that ends the recovery time and sums up the checks (roles/restore_drill/tasks/main.yml)."""
    import os

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "roles", "restore_drill", "tasks", "main.yml")) as handle:
        todo = list(yaml.safe_load(handle))
    while todo:
        entry = todo.pop(0)
        for key in ("block", "rescue", "always"):
            todo.extend(entry.get(key) or [])
        if entry.get("name", "").startswith("Verified"):
            return entry
    raise AssertionError("no Verified task in the role")


def _role_vars():
    import os

    import yaml

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "roles", "restore_drill", "vars", "main.yml")) as handle:
        return yaml.safe_load(handle)


def _checks(up, verify=True, sentinel="", checksum_command=(), recorded=None, application="auto", app=None):
    """The role's ``__restore_drill_checks`` rendered by ansible's own templating from an array_host ``up`` result
    (and, for a set that records an application, the app_recover result ``app`` of the drill's private server)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.template import trust_as_template

    def trusted(value):
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, dict):
            return dict((k, trusted(v)) for k, v in value.items())
        return value
    task = _verified_task()
    variables = dict((k, trusted(v)) for k, v in list(task["vars"].items()) + list(_role_vars().items()))
    variables.update(__restore_drill_up=up, __restore_drill_set={"application": recorded},
                     __restore_drill_in={"verify": verify, "sentinel": sentinel, "checksum_command": list(checksum_command),
                                         "application": application})
    if app is not None:
        variables["__restore_drill_app"] = app
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(trusted(task["ansible.builtin.set_fact"]["__restore_drill_checks"]))


def fixture_up(name):
    import os

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "drill", name)) as handle:
        return json.load(handle)


def test_the_checks_of_an_md_lvm_xfs_drill_with_a_sentinel_and_a_log_replay():
    """array_host's real answer in the lab (md RAID0 + LVM + XFS brought up as a clone on a second VM): the XFS of a
    frozen copy is checked, its log replayed, checked again; the sentinel note (no command) is no filesystem check.
    Before the fix, the sentinel note broke the summary (``first`` of its empty command) and failed a passed drill."""
    up = fixture_up("lab-up-md-lvm-xfs.json")
    checks = _checks(up, sentinel="payload2", checksum_command=["sha256sum", "--quiet", "-c", "/root/m.sha256"])
    assert checks["filesystems"] == ("pass: 1 filesystem(s) checked read-only before mounting (xfs_repair), 1 log(s) "
                                     "replayed on the scratch copy first, then checked again, mounted read-only")
    assert checks["sentinel"] == "present: payload2" and checks["mounted"] == "1 of 1"
    assert checks["manifest"] == "pass: the checksum command (sha256sum --quiet ...) exited 0"
    assert checks["application"] == "none recorded (stillpoint:app)"


def test_the_checks_of_two_filesystems_without_a_replay():
    up = fixture_up("lab-up-md-lvm-xfs.json")
    check = [a for a in up["actions"] if a["what"].startswith("check xfs ") and "again" not in a["what"]][0]
    second = dict(check, what=check["what"].replace("/srv/data", "/srv/logs"))
    up = dict(up, actions=[check, second], mounts=up["mounts"] * 2)
    checks = _checks(up)
    assert checks["filesystems"] == "pass: 2 filesystem(s) checked read-only before mounting (xfs_repair), mounted read-only"
    assert checks["sentinel"] == "none asked" and checks["mounted"] == "2 of 2"
    assert _checks(up, verify=False)["filesystems"] == "not checked (restore_drill_verify=false); mounted read-only"


def test_the_application_line_of_the_checks():
    """What the verdict says of a set's recorded application: the private server's summary when it ran (auto and a
    kind the drill starts), else why it did not run."""
    up = fixture_up("lab-up-md-lvm-xfs.json")
    pg = {"kind": "postgresql", "checkpoint_lsn": "0/1A1FDA0"}
    summary = "passed: private postgresql server on the scratch copy, ready in 914.6 ms; stopped PID 22907 (SIGINT)"
    assert _checks(up, recorded=pg, app={"summary": summary})["application"] == summary
    assert _checks(up, recorded=pg, application="skip")["application"] == (
        "not run: restore_drill_application=skip (the set records postgresql)")
    # a MariaDB set taken before the quiescer recorded the server's paths: not run, with the reason
    assert _checks(up, recorded={"kind": "mariadb"})["application"].startswith(
        "not run: the set records mariadb without the paths of the server (paths.data_directory")
    maria = {"kind": "mariadb", "paths": {"data_directory": "/srv/db/mysql"}, "server_version": "10.11.19-MariaDB"}
    summary = "passed: private mariadb server on the scratch copy, ready in 812.0 ms; stopped PID 4242 (SIGTERM)"
    assert _checks(up, recorded=maria, app={"summary": summary})["application"] == summary
    assert _checks(up, recorded={"kind": "held_hook"})["application"].startswith(
        "not run: the set records held_hook; the drill starts a private server for postgresql, mariadb and mysql only")
    assert _checks(up)["application"] == "none recorded (stillpoint:app)"
