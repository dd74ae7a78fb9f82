# -*- coding: utf-8 -*-
"""playbooks/backup.yml (role array_backup) end to end on an emulated instance whose data is one
btrfs filesystem striped over three volumes: check mode, a real run (listed by playbooks/catalog.yml),
retention on the next run."""

import json
import os

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import run_playbook
from tests.support.world import task

pytestmark = pytest.mark.skipif(missing_requirements("btrfs") is not None, reason=str(missing_requirements("btrfs")))

PLAYBOOK = os.path.join(ROOT, "playbooks", "backup.yml")
CATALOG = os.path.join(ROOT, "playbooks", "catalog.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
PRUNE = "Apply retention to this series"


def catalog(ec2, name):
    snaps = ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
        {"Name": "tag:stillpoint:set-name", "Values": [name]}])["Snapshots"]
    sets = {}
    for snap in snaps:
        tags = {t["Key"]: t["Value"] for t in snap["Tags"]}
        sets.setdefault(tags["stillpoint:set-id"], []).append(tags)
    return sets


def variables(ec2, inst, name, **extra):
    out = {
        "backup_hosts": "localhost", "backup_become": False,
        "array_backup_mountpoints": ",".join(inst.mountpoints),  # as an AWX survey gives it
        "array_backup_by_id_dir": inst.by_id_dir, "array_backup_name": name,
        "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
        "array_backup_poll_interval": 0.2, "array_backup_keep_last": 1,
    }
    out.update(extra)
    return out


@pytest.mark.parametrize("mode", ["host", "controller"])
def test_backup_playbook_check_then_real_then_retention(ec2, mode):
    name = "pb-%s" % mode
    with EmulatedInstance(ec2, n=3, layout="array") as inst:
        rc, res, _raw = run_playbook(PLAYBOOK, ec2, variables(ec2, inst, name, array_backup_mode=mode), check=True)
        assert rc == 0, res
        plan = task(res, TAKE)
        assert plan["plan"]["freeze"] == inst.mountpoints
        assert [m["volume_id"] for m in plan["plan"]["members"]] == inst.volume_ids
        assert plan["plan"]["level"] == "filesystem"
        assert catalog(ec2, name) == {}
        assert [c for c in ec2.calls() if not c["action"].startswith("Describe")] == []

        rc, res, raw = run_playbook(PLAYBOOK, ec2, variables(ec2, inst, name, array_backup_mode=mode))
        assert rc == 0, res
        first = task(res, TAKE)
        assert first["state"] == "complete" and first["level"] == "filesystem"
        assert len(first["members"]) == 3
        sets = catalog(ec2, name)
        assert list(sets) == [first["set_id"]]
        maps = [json.loads(t["stillpoint:member-map"]) for t in sets[first["set_id"]]]  # schema 2: one map on all
        assert len(maps) == 3 and all(m == maps[0] for m in maps)
        assert [entry[0] for entry in maps[0]] == [m["volume_id"] for m in first["members"]]
        assert all(t["stillpoint:procedure"] == "array_backup" for t in sets[first["set_id"]])
        assert raw["global_custom_stats"]["stillpoint_backup_sets"] == {"localhost": first["set_id"]}

        # playbooks/catalog.yml lists it (its AWS connection reaches the module through the play's module_defaults)
        rc, res, _raw = run_playbook(CATALOG, ec2, {"catalog_name": name, "catalog_aws_endpoint_url": ec2.url,
                                                    "catalog_aws_region": ec2.region})
        assert rc == 0, res
        assert [s["set"] for s in task(res, "Read the catalog")["result"]] == [first["set_id"]]

        rc, res, raw = run_playbook(PLAYBOOK, ec2, variables(ec2, inst, name, array_backup_mode=mode))
        assert rc == 0, res
        second = task(res, TAKE)
        prune = task(res, PRUNE)
        assert [d["set_id"] for d in prune["deleted"]] == [first["set_id"]]
        # the job's artifact: the set id, and a summary with what retention removed
        summary = raw["global_custom_stats"]["stillpoint_backup_summary"]["localhost"]
        assert summary == {"set_id": second["set_id"], "instance_id": inst.instance_id,
                           "members": inst.volume_ids, "level": "filesystem", "state": "complete",
                           "freeze_window_ms": second["freeze_window_ms"], "pruned": [first["set_id"]]}
        assert list(catalog(ec2, name)) == [second["set_id"]]
        assert not probe_frozen(inst.mountpoints[0])
