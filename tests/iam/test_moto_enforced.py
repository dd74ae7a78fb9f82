# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""iam/*.json against the strict endpoint with IAM enforced (moto's evaluator, per resource ARN).

1. The procedures that run on this host run green with exactly their policy's credentials: backup.yml
   in host and controller mode, backup_set_prune, restore.yml (a local instance: real loop devices).
   Every action a run called is in its policy (else it was refused), and every action of the policy was
   called or is listed in ``policies.UNTAKEN`` with the path that needs it.
2. backup.yml with ec2:CreateSnapshots taken out of the policy fails before anything is frozen or created,
   with a message naming the permission.
3. Every action of every policy (DRBD, CLUSTERPRO and win_vss_snapshot_set included): with the policy the call is authorized,
   with the policy minus that one action it is refused (UnauthorizedOperation) and the library function
   that makes the call (a boto3 call for the amazon.aws modules' actions) reports ``ec2:<Action>``.
"""

from __future__ import annotations

import os

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
import pytest

from tests.iam import policies
from tests.support.loopfs import missing_requirements
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import checksum
from tests.support.world import destroy
from tests.support.world import run_playbook
from tests.support.world import task
from tests.support.world import write_data
from tests.support.world import write_playbook

from ansible_collections.amazon.aws.plugins.module_utils.retries import RetryingBotoClientWrapper
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _copy as copy
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _retention as retention
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _swap as swap
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _vss as vss
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

BACKUP = os.path.join(ROOT, "playbooks", "backup.yml")
RESTORE = os.path.join(ROOT, "playbooks", "restore.yml")
TAKE = "Take the backup set (discover, quiesce, freeze, one CreateSnapshots call, thaw, wait, mark complete)"
MARK = [{"Key": policies.CREATOR_KEY, "Value": policies.CREATOR}]


def called(endpoint):
    """The ec2:<Action> names the endpoint served since the last clear (DryRun included)."""
    return sorted(set("ec2:%s" % c["action"] for c in endpoint.calls(dry_run=True)))


def refused(endpoint):
    return [(c["action"], c["error_message"]) for c in endpoint.calls(dry_run=True)
            if c["error_code"] in ("UnauthorizedOperation", "AuthFailure")]


def backup_vars(ec2, inst, mode, name):
    return {"backup_hosts": "localhost", "backup_become": False, "array_backup_mode": mode,
            "array_backup_mountpoints": inst.mountpoints, "array_backup_by_id_dir": inst.by_id_dir,
            "array_backup_name": name, "array_backup_keep_last": 0,
            "array_backup_aws_endpoint_url": ec2.url, "array_backup_aws_region": ec2.region,
            "array_backup_poll_interval": 0.1}


def check_policy_size(name, seen):
    """Every action of the policy was called, or is documented as needed by a path the run did not take."""
    actions = set(policies.actions(policies.load(name)))
    assert set(seen) <= actions, (name, sorted(set(seen) - actions))
    assert actions - set(seen) == set(policies.UNTAKEN[name]), (name, sorted(actions - set(seen)))


@pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))
def test_procedures_run_with_exactly_their_policy(ec2i, make_user):
    ec2 = ec2i
    users = dict((n, make_user(policies.load(n), n)) for n in policies.UNTAKEN)
    with EmulatedInstance(ec2, n=2, size_mb=16, fstype="ext4", local=True) as inst:
        sums = write_data(inst.mountpoints)
        sets = {}
        for mode in ("host", "controller"):
            name = "array_backup-%s" % mode
            ec2.clear_calls()
            rc, res, _raw = run_playbook(BACKUP, ec2, backup_vars(ec2, inst, mode, "iam"), env=users[name])
            assert rc == 0, (name, res, refused(ec2))
            taken = task(res, TAKE)
            assert taken["state"] == "complete" and len(taken["members"]) == 2
            sets[mode] = taken["set_id"]
            assert refused(ec2) == []
            check_policy_size(name, called(ec2))

        # retention alone, with the prune policy: keep the newest set of the series
        ec2.clear_calls()
        aws = {"endpoint_url": ec2.url, "region": ec2.region}
        playbook = write_playbook(inst.workdir, [{"name": "prune", "register": "pruned",
                                                  "stillpoint.snapshots.backup_set_prune": dict(
                                                      aws, name="iam", instance_id=inst.instance_id, keep_last=1)}],
                                  name="prune.yml")
        rc, res, _raw = run_playbook(playbook, ec2, env=users["backup_set_prune"])
        assert rc == 0, (res, refused(ec2))
        assert res["prune"]["changed"] is True
        assert refused(ec2) == []
        check_policy_size("backup_set_prune", called(ec2))
        assert [c["params"]["SnapshotId"][:5] for c in ec2.calls("DeleteSnapshot")] == ["snap-", "snap-"]

        # an off-site copy of the newest set, with the copy policy (one account, another region)
        ec2.clear_calls()
        playbook = write_playbook(inst.workdir, [{"name": "copy", "register": "copied",
                                                  "stillpoint.snapshots.backup_set_copy": dict(
                                                      aws, set_id=sets["controller"], destination_region="us-east-1",
                                                      poll_interval=0.1)}],
                                  name="copy.yml")
        rc, res, _raw = run_playbook(playbook, ec2, env=users["backup_set_copy"])
        assert rc == 0, (res, refused(ec2))
        assert res["copy"]["changed"] is True and len(ec2.calls("CopySnapshot")) == 2
        assert refused(ec2) == []
        check_policy_size("backup_set_copy", called(ec2))

        # restore the newest set over the destroyed data, with the restore policy
        destroy(sums)
        ec2.clear_calls()
        rc, res, _raw = run_playbook(RESTORE, ec2, {
            "restore_hosts": "localhost", "restore_become": False, "array_restore_mode": "host",
            "array_restore_set_id": sets["controller"], "array_restore_by_id_dir": inst.by_id_dir,
            "array_restore_aws_endpoint_url": ec2.url, "array_restore_aws_region": ec2.region,
            "array_restore_device_timeout": 30}, env=users["array_restore"])
        assert rc == 0, (res, refused(ec2))
        assert all(checksum(p) == s for p, s in sums.items())
        assert refused(ec2) == []
        check_policy_size("array_restore", called(ec2))


@pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))
def test_backup_without_create_snapshots_fails_naming_the_permission(ec2i, make_user):
    ec2 = ec2i
    env = make_user(policies.without(policies.load("array_backup-host"), "ec2:CreateSnapshots"), "no-create")
    with EmulatedInstance(ec2, n=1, size_mb=16, fstype="ext4", local=True) as inst:
        ec2.clear_calls()
        rc, res, _raw = run_playbook(BACKUP, ec2, backup_vars(ec2, inst, "host", "iam-denied"), env=env)
        assert rc != 0
        msg = task(res, TAKE)["msg"]
        assert "ec2:CreateSnapshots" in msg and "UnauthorizedOperation" in msg, msg
        assert "checked with DryRun; nothing was frozen or created" in msg, msg
        # the DryRun was refused; no real CreateSnapshots was sent, nothing else mutated
        assert [(c["action"], c["dry_run"], c["error_code"]) for c in ec2.calls(dry_run=True)
                if not c["action"].startswith("Describe")] == [("CreateSnapshots", True, "UnauthorizedOperation")]
        assert ec2.client().describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "tag:stillpoint:set-name", "Values": ["iam-denied"]}])["Snapshots"] == []


# --------------------------------------------------------------------------- every action, one at a time

@pytest.fixture(scope="module")
def site(iam_endpoint):
    """An instance with one data volume, one snapshot and one available volume carrying the creator marker."""
    root = iam_endpoint.client()
    inst = iam_endpoint.create_instance(volumes=[{"size": 1, "device": "/dev/sdf"}])
    az = inst["az"]
    snap = root.create_snapshot(VolumeId=inst["volumes"][0]["volume_id"], TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": MARK}])["SnapshotId"]
    iam_endpoint.pending(0, snapshot_ids=[snap])
    key = iam_endpoint.client("kms").create_key(Description="iam probe")["KeyMetadata"]["Arn"]
    command = iam_endpoint.client("ssm").send_command(DocumentName=vss.SSM_DOCUMENT, InstanceIds=[inst["instance_id"]],
                                                      Parameters={"ExcludeBootVolume": ["True"]})["Command"]["CommandId"]
    return {"instance_id": inst["instance_id"], "az": az, "data_volume": inst["volumes"][0]["volume_id"],
            "snapshot": snap, "kms_key": key, "command_id": command}


def fresh_snapshot(endpoint, site):
    sid = endpoint.client().create_snapshot(VolumeId=site["data_volume"], TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": MARK}])["SnapshotId"]
    endpoint.pending(0, snapshot_ids=[sid])
    return sid


def fresh_volume(endpoint, site, tags=()):
    return endpoint.client().create_volume(AvailabilityZone=site["az"], Size=1, TagSpecifications=[
        {"ResourceType": "volume", "Tags": MARK + list(tags)}])["VolumeId"]


def _message(call):
    """Run ``call``; the error text it reports (raised or returned), or None."""
    try:
        out = call()
    except StillpointError as e:
        return e.msg
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError) as e:
        return str(e)
    if isinstance(out, tuple):  # delete_ours, delete_replaced_volumes: (done, [{..., "error"/"reason"}])
        return "; ".join(f.get("error") or f.get("reason") for f in out[1]) or None
    if isinstance(out, dict) and out.get("failed"):
        return "; ".join(f["error"] for f in out["failed"])
    return None


def probe(name, action, client, endpoint, site, kms=None, ssm=None):
    """Make the collection's call for ``action`` the way the code of policy ``name``'s procedure does (``kms``,
    ``ssm``: the KMS and SSM clients of the same identity); the error text or None."""
    iid, az = site["instance_id"], site["az"]

    def tagging():
        if name.endswith("_restore"):  # restores tag volumes: the one they detach gets stillpoint:replaced-by
            return ebs.tag(client, [site["data_volume"]], {policies.REPLACED_BY_KEY: "vol-0"})
        # backups tag their own snapshots after CreateSnapshots
        return ebs.tag(client, [site["snapshot"]], {"stillpoint:state": "complete"})
    calls = {
        "ec2:DescribeInstances": lambda: ebs.describe_instance(client, iid),
        "ec2:DescribeVolumes": lambda: ebs.instance_for_volumes(client, [site["data_volume"]]),
        "ec2:DescribeSnapshots": lambda: ebs.describe_snapshots(client),
        "ec2:DescribeAvailabilityZones": lambda: restore.resolve_availability_zone(client, availability_zone=az),
        "ec2:DescribeFastSnapshotRestores": lambda: restore.fast_snapshot_restore_states(client, [site["snapshot"]], az),
        "ec2:CreateSnapshots": lambda: ebs.create_call(
            client, {"instance_id": iid, "exclude_boot_volume": True, "exclude_data_volume_ids": []},
            {policies.CREATOR_KEY: policies.CREATOR}, dry_run=True),
        "ec2:CreateTags": tagging,
        "ec2:DeleteSnapshot": lambda: ebs.delete_ours(client, [fresh_snapshot(endpoint, site)]),
        "ec2:CreateVolume": lambda: client.create_volume(
            AvailabilityZone=az, SnapshotId=site["snapshot"], DryRun=True,
            TagSpecifications=[{"ResourceType": "volume", "Tags": MARK}]),
        "ec2:AttachVolume": lambda: client.attach_volume(VolumeId=fresh_volume(endpoint, site), InstanceId=iid,
                                                         Device="/dev/sdz", DryRun=True),
        "ec2:DetachVolume": lambda: client.detach_volume(VolumeId=site["data_volume"], InstanceId=iid,
                                                         Device="/dev/sdf", DryRun=True),
        "ec2:DeleteVolume": lambda: swap.delete_replaced_volumes(client, {}, [fresh_volume(endpoint, site)]),
        "ec2:EnableFastSnapshotRestores": lambda: client.enable_fast_snapshot_restores(
            AvailabilityZones=[az], SourceSnapshotIds=[site["snapshot"]]),
        "ec2:DisableFastSnapshotRestores": lambda: client.disable_fast_snapshot_restores(
            AvailabilityZones=[az], SourceSnapshotIds=[site["snapshot"]]),
        "ec2:DeleteTags": lambda: client.delete_tags(Resources=[site["snapshot"]], Tags=[{"Key": "stillpoint:drill-9"}]),
        "ec2:DescribeLockedSnapshots": lambda: retention.locked_snapshots(client),
        "ec2:LockSnapshot": lambda: retention._lock(client, {"SnapshotId": fresh_snapshot(endpoint, site),
                                                             "LockMode": "governance", "LockDuration": 1}),
        "ec2:ListSnapshotsInRecycleBin": lambda: retention.recycle_bin_members(client, "bs-none"),
        "ec2:CopySnapshot": lambda: copy.copy_call(client, site["snapshot"], endpoint.region, {
            policies.CREATOR_KEY: policies.CREATOR}, "iam probe"),
        "ec2:DescribeSnapshotAttribute": lambda: copy.shared_with(client, [site["snapshot"]], "210987654321"),
        "ec2:ModifySnapshotAttribute": lambda: copy.share(client, [site["snapshot"]], "210987654321"),
        "ec2:StopInstances": lambda: client.stop_instances(InstanceIds=[iid], DryRun=True),
        "ec2:StartInstances": lambda: client.start_instances(InstanceIds=[iid], DryRun=True),
        "kms:DescribeKey": lambda: copy.describe_key(kms, site["kms_key"], "iam probe"),
        "kms:ListAliases": lambda: copy.key_aliases(kms, site["kms_key"], "iam probe"),
        "ssm:SendCommand": lambda: vss.run_vss_command(ssm, iid, {"ExcludeBootVolume": ["True"]}, 30, poll=0.1),
        "ssm:GetCommandInvocation": lambda: vss.command_invocation(ssm, site["command_id"], iid, unknown_ok=False),
    }
    return _message(calls[action])


_SESSION = []


def client_for(endpoint, env, service="ec2"):
    if not _SESSION:  # one session: its loader caches the service model (a new one costs ~0.1 s)
        _SESSION.append(boto3.session.Session(region_name=endpoint.region))
    client = _SESSION[0].client(service, endpoint_url=endpoint.url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                config=botocore.config.Config(retries={"total_max_attempts": 1}))
    return RetryingBotoClientWrapper(client, ebs.RETRY)  # what module.client(retry_decorator=...) gives the library


# moto 5.2.5 has no fast snapshot restore: past the authorization its server answers HTTP 500
MOTO_UNIMPLEMENTED = ("ec2:DescribeFastSnapshotRestores", "ec2:EnableFastSnapshotRestores",
                      "ec2:DisableFastSnapshotRestores")


# moto evaluates KMS and SSM requests against the resource "*" (their responses name no resource), so a statement on
# key, document or instance ARNs never allows them there; tests/iam/test_policies.py shows them allowed on those
# ARNs with a real evaluator
MOTO_RESOURCE_STAR = ("kms:DescribeKey", "ssm:SendCommand")


@pytest.mark.parametrize("name", sorted(policies.POLICIES))
def test_every_action_is_needed_and_its_refusal_is_reported(iam_endpoint, make_user, site, name):
    document = policies.load(name)
    env = make_user(document, name)
    full, full_kms = client_for(iam_endpoint, env), client_for(iam_endpoint, env, "kms")
    full_ssm = client_for(iam_endpoint, env, "ssm")
    for action in policies.actions(document):
        assert action in policies.WHY, action
        iam_endpoint.clear_calls()
        allowed = probe(name, action, full, iam_endpoint, site, full_kms, full_ssm)
        if action.startswith(("kms:", "ssm:")):  # not logged by the EC2 endpoint: allowed means answered
            if action in MOTO_RESOURCE_STAR:  # moto refuses it; test_policies' real evaluator allows it
                assert allowed is not None and "AccessDenied" in allowed, (name, action, allowed)
            else:
                assert allowed is None, (name, action, allowed)
            less = make_user(policies.without(document, action), name)
            denied = probe(name, action, None, iam_endpoint, site, client_for(iam_endpoint, less, "kms"),
                           client_for(iam_endpoint, less, "ssm"))
            assert denied is not None and "AccessDenied" in denied and action in denied, (name, action, denied)
            continue
        served = iam_endpoint.calls(action[len("ec2:"):], dry_run=True)
        if action in MOTO_UNIMPLEMENTED:  # authorized, then moto fails (HTTP 500, not logged)
            assert allowed and "UnauthorizedOperation" not in allowed and (
                "500 Internal Server Error" in allowed or "no valid answer" in allowed), allowed
        else:
            assert served and all(c["error_code"] != "UnauthorizedOperation" for c in served), (name, action, allowed)
        less = client_for(iam_endpoint, make_user(policies.without(document, action), name))
        denied = probe(name, action, less, iam_endpoint, site)
        assert denied is not None and "UnauthorizedOperation" in denied and action in denied, (name, action, denied)
