# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source of iam/*.json: statement blocks, which policy has which, and why each action is there.

    python -m tests.iam.policies          # rewrite iam/*.json
    python -m tests.iam.policies --check  # exit 1 if a file differs (tests/iam/test_policies.py does this)

``WHY[action]`` names the library function (or amazon.aws module) that makes the call; ``UNTAKEN[policy]``
lists the actions the playbook runs of tests/iam/test_moto_enforced.py do not make, each with the path
that needs it. The tests hold the JSON files, this table and docs/iam.md to each other.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IAM_DIR = os.path.join(ROOT, "iam")

CREATOR_KEY = "stillpoint:creator"  # plugins/module_utils/_catalog.py K_CREATOR
CREATOR = "stillpoint.snapshots"  # plugins/module_utils/_common.py CREATOR
REPLACED_BY_KEY = "stillpoint:replaced-by"  # plugins/module_utils/_swap.py K_REPLACED_BY

SNAPSHOT = "arn:aws:ec2:*::snapshot/*"
VOLUME = "arn:aws:ec2:*:*:volume/*"
INSTANCE = "arn:aws:ec2:*:*:instance/*"
OURS = {"StringEquals": {"aws:ResourceTag/%s" % CREATOR_KEY: CREATOR}}
MARKED_ON_CREATE = {"StringEquals": {"aws:RequestTag/%s" % CREATOR_KEY: CREATOR}}


def stmt(sid, actions, resources, condition=None):
    out = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
           "Resource": resources if len(resources) > 1 else resources[0]}
    if condition:
        out["Condition"] = condition
    return out


# --------------------------------------------------------------------------- blocks

def read(*actions):
    return [stmt("ReadCatalogAndInstances", ["ec2:%s" % a for a in actions], ["*"])]


SNAPSHOT_SET = [
    # CreateSnapshots authorizes the instance, its volumes and each new snapshot (AWS's documented
    # split: the snapshot statement carries the request-tag condition, the source statement none).
    stmt("CreateSnapshotSetFromInstance", ["ec2:CreateSnapshots"], [INSTANCE, VOLUME]),
    stmt("CreateSnapshotSetMarked", ["ec2:CreateSnapshots"], [SNAPSHOT], MARKED_ON_CREATE),
    stmt("TagSnapshotsOnCreate", ["ec2:CreateTags"], [SNAPSHOT],
         {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}}),
    stmt("TagOwnSnapshots", ["ec2:CreateTags"], [SNAPSHOT], OURS),
]
DELETE_OWN_SNAPSHOTS = [stmt("DeleteOwnSnapshots", ["ec2:DeleteSnapshot"], [SNAPSHOT], OURS)]
# Retention: the locks are read before anything is deleted or locked; the kept sets' own snapshots locked
# (lock option); the Recycle Bin searched for a named set that is not there.
RETENTION_READ = ("DescribeSnapshots", "DescribeLockedSnapshots", "ListSnapshotsInRecycleBin")
LOCK_OWN_SNAPSHOTS = [stmt("LockOwnSnapshots", ["ec2:LockSnapshot"], [SNAPSHOT], OURS)]
RESTORE = [
    stmt("CreateVolumesMarked", ["ec2:CreateVolume"], [VOLUME], MARKED_ON_CREATE),
    stmt("CreateVolumesFromOwnSnapshots", ["ec2:CreateVolume"], [SNAPSHOT], OURS),
    stmt("TagVolumesOnCreate", ["ec2:CreateTags"], [VOLUME], {"StringEquals": {"ec2:CreateAction": "CreateVolume"}}),
    stmt("MarkReplacedVolumes", ["ec2:CreateTags"], [VOLUME],
         {"ForAllValues:StringEquals": {"aws:TagKeys": [REPLACED_BY_KEY]}}),
    stmt("FastSnapshotRestoreOnOwnSnapshots", ["ec2:DisableFastSnapshotRestores", "ec2:EnableFastSnapshotRestores"],
         [SNAPSHOT], OURS),
    stmt("AttachToInstances", ["ec2:AttachVolume"], [INSTANCE]),
    stmt("AttachOwnVolumes", ["ec2:AttachVolume"], [VOLUME], OURS),
    stmt("DetachVolumes", ["ec2:DetachVolume"], [INSTANCE, VOLUME]),
    stmt("DeleteOwnVolumes", ["ec2:DeleteVolume"], [VOLUME], OURS),
]
# CopySnapshot authorizes the source snapshot (snap-<id>, in its region) and the new one (snapshot/*, not
# known yet: the request-tag condition applies to it only). Tags at creation, the complete/partial marks
# on our own copies, and the roll-back of our own copies.
COPY = [
    stmt("CopyFromSourceSnapshots", ["ec2:CopySnapshot"], ["arn:aws:ec2:*::snapshot/snap-*"]),
    stmt("CopySnapshotsMarked", ["ec2:CopySnapshot"], [SNAPSHOT], MARKED_ON_CREATE),
    stmt("TagSnapshotsOnCopy", ["ec2:CreateTags"], [SNAPSHOT], {"StringEquals": {"ec2:CreateAction": "CopySnapshot"}}),
    stmt("TagOwnSnapshots", ["ec2:CreateTags"], [SNAPSHOT], OURS),
]
# Cross-account copies: the source account shares its own snapshots with the destination account, and
# removes the share when the copy set is complete.
SHARE = [stmt("ShareOwnSnapshots", ["ec2:DescribeSnapshotAttribute", "ec2:ModifySnapshotAttribute"], [SNAPSHOT], OURS)]
# The KMS preflight of a cross-account copy (read-only, before any change): the source account reads the keys of
# its encrypted members (an AWS managed key cannot be shared: refused), the destination account the key named by
# kms_key_id. Direct calls, not through EC2: no kms:ViaService condition. Any key ARN (the members' keys are
# whatever keys they were encrypted with; narrow it to your key ARNs); ListAliases has no resource-level permission.
KMS_KEY = "arn:aws:kms:*:*:key/*"
SOURCE_KEYS = [stmt("ReadSourceKeys", ["kms:DescribeKey"], [KMS_KEY]), stmt("ListKeyAliases", ["kms:ListAliases"], ["*"])]
DESTINATION_KEY = [stmt("ReadDestinationKey", ["kms:DescribeKey"], [KMS_KEY])]  # kms_key_id and the source keys
# A restore drill: the RESTORE statements that create, attach and delete its own volumes, a detach limited to
# volumes carrying the marker (it never detaches anything of the scratch instance it did not make), and the
# verdict written on (and its stale chunks removed from) the set's own snapshots.
DRILL_FROM_RESTORE = ("CreateVolumesMarked", "CreateVolumesFromOwnSnapshots", "TagVolumesOnCreate", "AttachToInstances",
                      "AttachOwnVolumes", "DeleteOwnVolumes")
DRILL = [s for s in RESTORE if s["Sid"] in DRILL_FROM_RESTORE] + [
    stmt("DetachFromInstances", ["ec2:DetachVolume"], [INSTANCE]),
    stmt("DetachOwnVolumes", ["ec2:DetachVolume"], [VOLUME], OURS),
    stmt("RecordVerdictOnOwnSnapshots", ["ec2:CreateTags", "ec2:DeleteTags"], [SNAPSHOT], OURS),
]
STOP_START = [stmt("StopStartClusterServers", ["ec2:StartInstances", "ec2:StopInstances"], [INSTANCE])]
# win_vss_snapshot_set's controller half: the AWS VSS components on the instance make the snapshots (with the
# instance profile, AWS's AWSEC2VssSnapshotPolicy; docs/windows-vss.md), started by SSM Run Command with AWS's own
# document (the account field ``*``: it also matches the empty account of an AWS-owned document's ARN, and the
# service's ARN format has one); the controller waits on the invocation, then proves,
# tags, completes or rolls back the snapshots, which carry the creator marker from their creation (the document's
# tags parameter).
VSS_DOCUMENT = "arn:aws:ssm:*:*:document/AWSEC2-CreateVssSnapshot"
VSS_RUN = [
    stmt("RunVssDocumentOnInstances", ["ssm:SendCommand"], [VSS_DOCUMENT, INSTANCE]),
    stmt("ReadCommandInvocations", ["ssm:GetCommandInvocation"], ["*"]),
    stmt("TagOwnSnapshots", ["ec2:CreateTags"], [SNAPSHOT], OURS),
]

BACKUP_READ = ("DescribeInstances", "DescribeVolumes", "DescribeSnapshots")
RESTORE_READ = ("DescribeInstances", "DescribeVolumes", "DescribeSnapshots", "DescribeAvailabilityZones",
                "DescribeFastSnapshotRestores")

POLICIES = {
    "array_backup-host": read(*(BACKUP_READ + RETENTION_READ[1:])) + SNAPSHOT_SET + DELETE_OWN_SNAPSHOTS
    + LOCK_OWN_SNAPSHOTS,
    "array_backup-controller": read(*(BACKUP_READ + RETENTION_READ[1:])) + SNAPSHOT_SET + DELETE_OWN_SNAPSHOTS
    + LOCK_OWN_SNAPSHOTS,
    "backup_set_prune": read(*RETENTION_READ) + DELETE_OWN_SNAPSHOTS + LOCK_OWN_SNAPSHOTS,
    "array_restore": read(*RESTORE_READ) + RESTORE,
    "drbd_mirror_backup": read(*BACKUP_READ) + SNAPSHOT_SET + DELETE_OWN_SNAPSHOTS,
    "drbd_mirror_restore": read(*RESTORE_READ) + RESTORE,
    "clusterpro_mirror_backup": read(*BACKUP_READ) + SNAPSHOT_SET + DELETE_OWN_SNAPSHOTS + STOP_START,
    "clusterpro_mirror_restore": read(*RESTORE_READ) + RESTORE,
    "backup_set_copy": read("DescribeSnapshots") + COPY + DELETE_OWN_SNAPSHOTS + DESTINATION_KEY,
    "restore_drill": read("DescribeInstances", "DescribeVolumes", "DescribeSnapshots", "ListSnapshotsInRecycleBin")
    + DRILL,
    "backup_set_copy-share": read("DescribeSnapshots") + SHARE + SOURCE_KEYS,
    "win_vss_snapshot_set": read(*BACKUP_READ) + VSS_RUN + DELETE_OWN_SNAPSHOTS,
}

# Only for volumes encrypted with a customer managed KMS key (attach beside the procedure's policy):
# EC2 uses the key on the caller's behalf when it creates a volume from an encrypted snapshot
# (CreateVolume), snapshots such a volume, or starts an instance whose volumes use it. kms:ViaService
# limits every use to requests EC2 makes; CreateGrant only for grants EC2 keeps for its own resources.
KMS = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "UseCustomerManagedKeyThroughEC2", "Effect": "Allow",
         "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom",
                    "kms:ReEncryptTo"],
         "Resource": "arn:aws:kms:*:*:key/*",
         "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}},
        {"Sid": "GrantsForEC2Resources", "Effect": "Allow", "Action": ["kms:CreateGrant"],
         "Resource": "arn:aws:kms:*:*:key/*",
         "Condition": {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"},
                       "Bool": {"kms:GrantIsForAWSResource": "true"}}},
    ],
}

WHY = {
    "ec2:DescribeInstances": "_ebs.describe_instance (plan: the instance's block device mappings; restore: its AZ; "
                             "swap: before and after); amazon.aws.ec2_instance_info / ec2_instance (CLUSTERPRO: "
                             "device names, and the stop/start waiters poll it)",
    "ec2:DescribeVolumes": "_ebs.describe_volumes / instance_for_volumes (controller mode with volume_ids, the swap's "
                           "waits, restore rollback checks, the same-snapshot proofs of DRBD/CLUSTERPRO); "
                           "amazon.aws.ec2_vol_info (drbd_mirror_restore)",
    "ec2:DescribeSnapshots": "_ebs.describe_snapshots / catalog_sets / poll (the catalog: re-run detection, the wait "
                             "for completed, prune, backup_set_info, restore's set lookup)",
    "ec2:DescribeAvailabilityZones": "_restore.resolve_availability_zone (only when availability_zone is given)",
    "ec2:DescribeFastSnapshotRestores": "_restore.fast_snapshot_restore_states (only with fast_snapshot_restore)",
    "ec2:CreateSnapshots": "_ebs.create_call: SnapshotSetRun.preflight (DryRun, before the freeze) and the one call "
                           "inside the freeze window",
    "ec2:CreateTags": "snapshots: the TagSpecifications of CreateSnapshots, then _ebs.tag (level and member map, "
                      "state=complete), _ebs.rollback (state=partial); volumes: CreateVolume's TagSpecifications "
                      "(_restore.create_missing) and _swap.execute's stillpoint:replaced-by on the volume it detaches",
    "ec2:DeleteSnapshot": "_ebs.delete_ours: the rollback of a failed set (backup) and the retention "
                          "(backup_set_prune); only snapshots carrying the creator marker",
    "ec2:CreateVolume": "_restore.create_missing (one volume per member, tagged on create; restore_drill's scratch "
                        "volumes through _drill.create_scratch)",
    "ec2:AttachVolume": "_swap._attach (the restored volumes at the recorded device names)",
    "ec2:DetachVolume": "_swap._detach (the instance's current volumes at those device names)",
    "ec2:DeleteVolume": "_restore.rollback (volumes of a failed restore run) and _swap.delete_replaced_volumes "
                        "(delete_replaced: replaced volumes this collection created)",
    "ec2:EnableFastSnapshotRestores": "_restore.enable_fast_snapshot_restore (fast_snapshot_restore: true)",
    "ec2:DisableFastSnapshotRestores": "_restore.enable_fast_snapshot_restore (undoes its own enables when EC2 "
                                       "refused part of them)",
    "ec2:DescribeLockedSnapshots": "_retention.locked_snapshots (backup_set_prune, and array_backup's retention: "
                                   "the locks read before anything is deleted or locked, so that a locked set is "
                                   "kept and never sent a DeleteSnapshot)",
    "ec2:LockSnapshot": "_retention._lock (backup_set_prune lock / array_backup_lock_mode: the kept complete sets' "
                        "snapshots locked before anything is deleted)",
    "ec2:ListSnapshotsInRecycleBin": "_retention.recycle_bin_members (backup_set_prune's refusal of a named set that is "
                                     "not there, backup_set_info with set_id: how to recover it from the Recycle Bin)",
    "ec2:DeleteTags": "_drill.record_verdict (restore_drill: the chunks of an earlier, longer verdict removed from "
                      "the set's own snapshots)",
    "ec2:CopySnapshot": "_copy.copy_call (backup_set_copy: one call per member still to copy, in the destination "
                        "region and account, tagged on create)",
    "ec2:DescribeSnapshotAttribute": "_copy.shared_with (backup_set_copy across accounts: which source snapshots "
                                     "are already shared with the destination account)",
    "ec2:ModifySnapshotAttribute": "_copy.share (backup_set_copy across accounts: createVolumePermission add "
                                   "before the copy, remove once the copy set is complete)",
    "kms:DescribeKey": "_copy.describe_key, _copy.source_key_access (backup_set_copy across accounts, before any "
                       "change: the members' keys with the source credentials; with the destination's, the members' "
                       "keys by ARN (are they shared with it?) and kms_key_id)",
    "kms:ListAliases": "_copy.key_aliases (backup_set_copy across accounts: an alias/aws/* name marks an AWS managed "
                       "key, which cannot be shared)",
    "ssm:SendCommand": "_vss.run_vss_command (win_vss_snapshot_set: AWSEC2-CreateVssSnapshot to the instance, once "
                       "per set)",
    "ssm:GetCommandInvocation": "_vss.command_invocation (win_vss_snapshot_set: the wait for the document's run to "
                                "end, and its output)",
    "ec2:StopInstances": "amazon.aws.ec2_instance state=stopped (clusterpro_mirror_backup step 2: the standby)",
    "ec2:StartInstances": "amazon.aws.ec2_instance state=running (clusterpro_mirror_backup step 4 and its rescue)",
}

# Actions of a policy that its playbook run in tests/iam/test_moto_enforced.py does not call, and why
# the procedure needs them anyway. Policies without a run here (DRBD, CLUSTERPRO) are proved per action.
UNTAKEN = {
    "array_backup-host": {"ec2:DeleteSnapshot": "rollback of a set whose member failed or could not be tagged",
                          "ec2:DescribeVolumes": "planning from volume_ids without instance_id",
                          "ec2:DescribeLockedSnapshots": "retention (array_backup_keep_*) that deletes or locks a set",
                          "ec2:LockSnapshot": "array_backup_lock_mode set",
                          "ec2:ListSnapshotsInRecycleBin": "retention naming a set that is not there"},
    "array_backup-controller": {"ec2:DeleteSnapshot": "rollback of a set whose member failed or could not be tagged",
                                "ec2:DescribeLockedSnapshots": "retention (array_backup_keep_*) that deletes or locks "
                                                               "a set",
                                "ec2:LockSnapshot": "array_backup_lock_mode set",
                                "ec2:ListSnapshotsInRecycleBin": "retention naming a set that is not there"},
    "backup_set_prune": {"ec2:LockSnapshot": "lock given",
                         "ec2:ListSnapshotsInRecycleBin": "set_ids naming a set that is not there"},
    "backup_set_copy": {"ec2:DeleteSnapshot": "a copy that failed (the copy set is removed whole), stale copies of "
                                              "an earlier run",
                        "kms:DescribeKey": "a cross-account copy with kms_key_id (tests/integration/test_set_copy_kms.py)"},
    "array_restore": {
        "ec2:DescribeAvailabilityZones": "array_restore_availability_zone given",
        "ec2:DescribeFastSnapshotRestores": "array_restore_fast_snapshot_restore: true",
        "ec2:EnableFastSnapshotRestores": "array_restore_fast_snapshot_restore: true",
        "ec2:DisableFastSnapshotRestores": "EC2 refused fast snapshot restore for part of the set",
        "ec2:DeleteVolume": "a failed restore run's rollback, or array_restore_delete_replaced: true",
    },
}


def document(name):
    if name == "kms_customer_managed_key":
        return KMS
    return {"Version": "2012-10-17", "Statement": POLICIES[name]}


def names():
    return sorted(list(POLICIES) + ["kms_customer_managed_key"])


def actions(policy):
    out = set()
    for s in policy["Statement"]:
        out.update([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    return sorted(out)


def without(policy, action):
    """``policy`` with ``action`` taken out of every statement (statements left empty dropped)."""
    statements = []
    for s in policy["Statement"]:
        acts = [a for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]) if a != action]
        if acts:
            statements.append(dict(s, Action=acts))
    return dict(policy, Statement=statements)


def path(name):
    return os.path.join(IAM_DIR, "%s.json" % name)


def render(name):
    return json.dumps(document(name), indent=2) + "\n"


def load(name):
    with open(path(name), encoding="utf-8") as f:
        return json.load(f)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    os.makedirs(IAM_DIR, exist_ok=True)
    for name in names():
        text = render(name)
        try:
            with open(path(name), encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != text:
            stale.append(name)
            if not check:
                with open(path(name), "w", encoding="utf-8") as f:
                    f.write(text)
    if check and stale:
        sys.stderr.write("iam/ differs from tests/iam/policies.py: %s\n" % ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
