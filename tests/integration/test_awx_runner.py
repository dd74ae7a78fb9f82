# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The entry playbooks as AWX runs them: through ansible-runner (a private data directory, extra variables
from ``env/extravars``, events), against the strict EC2 endpoint and an emulated instance whose data is one
btrfs filesystem over three volumes.

- Survey-shaped variables (text lists, booleans and numbers as text, ``""`` and ``null`` for blank fields) and
  typed ones give the same set: state, level, members, and the same catalog record (the mountpoints recorded
  are the typed list, never the survey's text).
- Each invalid value is refused with a message naming the variable, before any change: no mutating EC2 call in
  the endpoint's log (dry runs excluded), no snapshot, the filesystems neither frozen nor unmounted.
- The same survey-shaped run on the oldest ansible-core the collection declares (meta/runtime.yml), where a
  text ``"false"`` used to be silently true, and on the newest installed here (.venv).

The oldest ansible-core lives in .build/core-oldest (``make integration`` builds it from
tests/integration/requirements-oldest-core.txt); without it this module's oldest-core test is skipped, except under CI."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.mounts import mounts
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import ansible_env

ansible_runner = pytest.importorskip("ansible_runner")

pytestmark = pytest.mark.skipif(missing_requirements("btrfs") is not None, reason=str(missing_requirements("btrfs")))

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
INPUTS_TASK = "Check the role's inputs (survey text typed, defaults applied; nothing changes before this passes)"
NOT_INPUTS = ("changed", "failed", "invocation", "msg", "warnings", "deprecations")
CREATE = "Create the volumes from the set in the instance's zone (before any downtime)"
NEWEST = os.path.dirname(sys.executable)
OLDEST = os.path.join(ROOT, ".build", "core-oldest", "bin")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
MUTATING = ("Create", "Delete", "Attach", "Detach", "Modify", "Enable", "Disable", "Copy", "Lock", "Start", "Stop")


def core_version(bindir):
    out = subprocess.run([os.path.join(bindir, "python"), "-c", "import ansible.release as r; print(r.__version__)"],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    return out.strip()


def declared_oldest():
    spec = yaml.safe_load(open(os.path.join(ROOT, "meta", "runtime.yml")))["requires_ansible"]
    return spec.replace(">=", "").strip()


def run(ec2, tmp_path, extravars, bindir=NEWEST, check=False, playbook=BACKUP):
    """One ansible-runner job of ``playbook`` on localhost: (rc, {task: result}, artifacts, failures)."""
    env = ansible_env(ec2)
    for key in ("ANSIBLE_STDOUT_CALLBACK", "ANSIBLE_CALLBACK_RESULT_FORMAT"):
        env.pop(key, None)  # ansible-runner brings its own event callback, as in AWX
    collections = [env["ANSIBLE_COLLECTIONS_PATH"]]
    if bindir != NEWEST:
        # amazon.aws and ansible.posix as the ansible package ships them, for the other ansible-core
        from ansible_collections.amazon import aws
        collections.append(os.path.dirname(os.path.dirname(os.path.dirname(list(aws.__path__)[0]))))
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(collections)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    private = tmp_path / ("job-%d" % len(list(tmp_path.iterdir())))
    private.mkdir()
    # the playbook on the command line: with ``binary`` (the ansible-core under test) ansible-runner runs it raw
    cmdline = os.path.basename(playbook) + (" --check" if check else "")
    result = ansible_runner.run(
        private_data_dir=str(private), project_dir=os.path.dirname(playbook), extravars=extravars, envvars=env,
        quiet=True, inventory="localhost ansible_connection=local ansible_python_interpreter=%s" % sys.executable,
        binary=os.path.join(bindir, "ansible-playbook"), cmdline=cmdline, timeout=600)
    tasks, artifacts, failures = {}, {}, []
    for event in result.events:
        data = event.get("event_data", {})
        if event["event"] in ("runner_on_ok", "runner_on_failed"):
            name = data.get("task", "")
            tasks[name] = data.get("res", {})
            if event["event"] == "runner_on_failed":
                failures.append((name, data.get("res", {}).get("msg", "")))
        elif event["event"] == "playbook_on_stats":
            artifacts = data.get("artifact_data") or {}
    return result.rc, tasks, artifacts, failures


def typed(ec2, inst, name):
    return {
        "backup_hosts": "localhost", "backup_become": False, "array_backup_name": name,
        "array_backup_mountpoints": list(inst.mountpoints), "array_backup_by_id_dir": inst.by_id_dir,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_wait": True, "array_backup_poll_interval": 0.2, "array_backup_keep_last": 0,
        "array_backup_delete_partial": False, "array_backup_exclude_boot_volume": True,
        "array_backup_hook_timeout": 30, "array_backup_tags": {}, "array_backup_pre_hook": [],
        "array_backup_instance_id": "", "array_backup_mode": "host",
    }


def survey(ec2, inst, name):
    """What an AWX survey sends for the same choices: text everywhere, null and "" for blank optional fields."""
    return {
        "backup_hosts": "localhost", "backup_become": "false", "array_backup_name": name,
        "array_backup_mountpoints": ", ".join(inst.mountpoints), "array_backup_by_id_dir": inst.by_id_dir,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_wait": "true", "array_backup_poll_interval": "0.2", "array_backup_keep_last": "0",
        "array_backup_delete_partial": "false", "array_backup_exclude_boot_volume": "yes",
        "array_backup_hook_timeout": "30", "array_backup_tags": None, "array_backup_pre_hook": "",
        "array_backup_instance_id": None, "array_backup_mode": "host",
    }


def recorded(ec2, set_id):
    """The set's catalog as the snapshots' tags say it, without what differs between two sets by nature."""
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-id", "Values": [set_id]}])["Snapshots"]
    out = []
    for snap in sorted(snaps, key=lambda s: s["VolumeId"]):
        tags = dict((t["Key"], t["Value"]) for t in snap["Tags"])
        for key in list(tags):
            if key in ("Name", "stillpoint:set-id", "stillpoint:set-name", "stillpoint:created", "stillpoint:freeze-ms") or "time" in key:
                tags.pop(key)
        out.append((snap["VolumeId"], tags))
    return out


def outcome(res):
    return {"state": res["state"], "level": res["level"], "members": [m["volume_id"] for m in res["members"]]}


def changes(ec2):
    return [c["action"] for c in ec2.calls() if c["action"].startswith(MUTATING)]


def test_survey_shaped_and_typed_runs_give_the_same_set(ec2, tmp_path):
    with EmulatedInstance(ec2, n=3, layout="array") as inst:
        rc, res, stats_typed, failures = run(ec2, tmp_path, typed(ec2, inst, "awx-typed"))
        assert rc == 0, failures
        first = res[TAKE]
        rc, res, stats_survey, failures = run(ec2, tmp_path, survey(ec2, inst, "awx-survey"))
        assert rc == 0, failures
        second = res[TAKE]
        expected = {"state": "complete", "level": "filesystem", "members": inst.volume_ids}
        assert outcome(first) == outcome(second) == expected
        a, b = recorded(ec2, first["set_id"]), recorded(ec2, second["set_id"])
        assert [sorted(set(x[1].items()) ^ set(y[1].items())) for x, y in zip(a, b)] == [[]] * 3
        assert a == b
        # the artifact an AWX workflow passes on
        assert stats_typed["stillpoint_backup_sets"] == {"localhost": first["set_id"]}
        assert stats_survey["stillpoint_backup_sets"] == {"localhost": second["set_id"]}
        assert stats_survey["stillpoint_backup_summary"]["localhost"]["members"] == inst.volume_ids
        assert not probe_frozen(inst.mountpoints[0])


# (variable, survey value, the check that refuses it: ansible-core's argument check of the role's typed spec,
# which runs before the role's first task, or the role's first task, stillpoint.snapshots.role_inputs)
CORE = "Validating arguments against arg spec"
INPUTS = "Check the role's inputs"
INVALID = [
    ("array_backup_keep_last", "seven", CORE),
    ("array_backup_wait", "maybe", CORE),
    ("array_backup_older_than_days", "soon", CORE),
    ("array_backup_mode", "sideways", CORE),
    ("array_backup_delete_partial", "", CORE),  # "" is no boolean for ansible-core
    ("array_backup_mountpoints", '["/data"', INPUTS),  # a broken JSON list (ansible-core would split it)
    ("array_backup_name", ["a", "b"], INPUTS),  # ansible-core would make it the text "['a', 'b']"
    ("array_backup_keep_last", 2.5, CORE),
]


def test_each_invalid_value_is_refused_before_any_change(ec2, tmp_path):
    with EmulatedInstance(ec2, n=3, layout="array") as inst:
        before = [m for m in mounts() if m[1] in inst.mountpoints]
        assert len(before) == 1
        for name, value, check in INVALID:
            ec2.reset()
            extravars = survey(ec2, inst, "awx-bad")
            extravars[name] = value
            rc, res, _stats, failures = run(ec2, tmp_path, extravars)
            assert rc != 0, (name, value)
            assert TAKE not in res, "%s=%r reached the backup task" % (name, value)
            assert [(task.split(" : ")[-1][:len(check)], name in msg) for task, msg in failures] == [(check, True)], (
                name, value, failures)
            assert changes(ec2) == [], (name, value, changes(ec2))
            assert not probe_frozen(inst.mountpoints[0])
            assert [m for m in mounts() if m[1] in inst.mountpoints] == before
        snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "tag:stillpoint:set-name", "Values": ["awx-bad"]}])["Snapshots"]
        assert snaps == []


def test_the_oldest_declared_ansible_core_gives_the_same_set(ec2, tmp_path):
    if not os.path.exists(os.path.join(OLDEST, "ansible-playbook")):
        if os.environ.get("CI"):
            pytest.fail("no ansible-core in %s: make integration builds it (tests/integration/requirements-oldest-core.txt)" % OLDEST)
        pytest.skip("no ansible-core in %s (make integration builds it)" % OLDEST)
    assert core_version(OLDEST) .startswith(declared_oldest().rsplit(".", 1)[0] + ".")
    with EmulatedInstance(ec2, n=3, layout="array") as inst:
        # "false" used to be silently true on 2.17: retention must not run, the wait must not be skipped
        extravars = survey(ec2, inst, "awx-oldest")
        extravars["array_backup_delete_partial"] = "false"
        extravars["array_backup_keep_last"] = "0"
        rc, res, stats, failures = run(ec2, tmp_path, extravars, bindir=OLDEST)
        assert rc == 0, failures
        assert outcome(res[TAKE]) == {"state": "complete", "level": "filesystem", "members": inst.volume_ids}
        assert "Apply retention to this series" not in res
        assert changes(ec2).count("DeleteSnapshot") == 0
        assert stats["stillpoint_backup_sets"] == {"localhost": res[TAKE]["set_id"]}
        newest = run(ec2, tmp_path, extravars)
        assert newest[0] == 0, newest[3]
        assert outcome(newest[1][TAKE]) == outcome(res[TAKE])
        assert recorded(ec2, newest[1][TAKE]["set_id"]) == recorded(ec2, res[TAKE]["set_id"])
        assert json.dumps(core_version(NEWEST)) != json.dumps(core_version(OLDEST))


def restore_vars(ec2, inst, set_id, shaped):
    """restore.yml's variables typed, or as a survey sends the same choices."""
    out = {"restore_hosts": "localhost", "restore_become": False, "array_restore_set_id": set_id,
           "array_restore_by_id_dir": inst.by_id_dir, "array_restore_aws_endpoint_url": ec2.url,
           "array_restore_aws_region": ec2.region, "array_restore_device_timeout": 30, "array_restore_iops": 0,
           "array_restore_tags": {"drill": "awx"}, "array_restore_verify": True, "array_restore_stop_command": [],
           "array_restore_instance_id": ""}
    if shaped:
        out.update({"restore_become": "no", "array_restore_device_timeout": "30", "array_restore_iops": "0",
                    "array_restore_tags": "drill=awx", "array_restore_verify": "true", "array_restore_stop_command": "",
                    "array_restore_instance_id": None})
    return out


def test_restore_plans_the_same_from_survey_text_and_refuses_a_bad_value(ec2, tmp_path):
    cores = [NEWEST] + ([OLDEST] if os.path.exists(os.path.join(OLDEST, "ansible-playbook")) else [])
    if len(cores) == 1 and os.environ.get("CI"):
        pytest.fail("no ansible-core in %s: make integration builds it" % OLDEST)
    with EmulatedInstance(ec2, n=3, layout="array", local=True) as inst:
        rc, res, _stats, failures = run(ec2, tmp_path, dict(typed(ec2, inst, "awx-restore")))
        assert rc == 0, failures
        set_id = res[TAKE]["set_id"]
        plans = []
        # typed on the newest ansible-core, survey-shaped on the newest and on the oldest declared one
        for shaped, bindir in [(False, NEWEST)] + [(True, core) for core in cores]:
            ec2.reset()
            rc, res, _stats, failures = run(ec2, tmp_path, restore_vars(ec2, inst, set_id, shaped), check=True,
                                            playbook=RESTORE, bindir=bindir)
            assert rc == 0, failures
            plan = res[CREATE]
            inputs = dict((k, v) for k, v in res[INPUTS_TASK].items() if not k.startswith("_") and k not in NOT_INPUTS)
            plans.append((inputs, sorted((v["snapshot_id"], v["device"], v["volume_type"], v["size"])
                                         for v in plan.get("volumes_to_create", []))))
            assert changes(ec2) == []
        # the role typed the survey's text into the same inputs, and planned the same volumes, on every core
        assert all(plan == plans[0] for plan in plans) and len(plans[0][1]) == 3 and len(plans) == 1 + len(cores)
        assert plans[1][0]["tags"] == {"drill": "awx"} and plans[1][0]["verify"] is True
        ec2.reset()
        bad = restore_vars(ec2, inst, set_id, True)
        bad["array_restore_tags"] = "drill"
        rc, res, _stats, failures = run(ec2, tmp_path, bad, playbook=RESTORE)
        assert rc != 0 and CREATE not in res
        assert any("array_restore_tags" in msg for _task, msg in failures), failures
        assert changes(ec2) == []
        assert [m for m in mounts() if m[1] in inst.mountpoints]
