#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: backup_set_copy
short_description: Copy a complete backup set to another region or account, every member or none
version_added: 0.2.0
description:
  - Copies every member snapshot of a V(complete) backup set of the catalog (C(docs/catalog.md)) with EC2
    C(CopySnapshot), one call per member, to O(destination_region) and/or another account, and records the copies
    as a backup set of their own there, so that M(stillpoint.snapshots.backup_set_info),
    M(stillpoint.snapshots.backup_set_prune) and the restore work on it in the destination. See C(docs/copies.md).
  - The copies carry the source's catalog tags, their own set id (derived from the source set, the source and the
    destination, so every run names the same copy set), the state V(pending) until every member is C(completed)
    and then V(complete), the creator marker, and C(stillpoint:copy-of), C(stillpoint:source-set-id),
    C(stillpoint:source-region), C(stillpoint:source-account), C(stillpoint:source-snapshot),
    C(stillpoint:kms-key-id), C(stillpoint:completion-minutes) and C(stillpoint:copied).
  - Every member or none. A failed C(CopySnapshot) call deletes the copies this run made; a copy that ends in
    C(error) deletes the whole copy set in the destination. What cannot be deleted is tagged V(partial), so the
    copy set never looks complete.
  - A re-run finds the copies by C(stillpoint:copy-of) and the member index, waits for pending ones, copies only
    the members that are missing (copies in C(error) and duplicates are deleted first), and reports no change once
    the copy set is complete.
  - Cross-account, with destination credentials (O(destination_profile) or O(destination_access_key)), the source
    snapshots are shared with the destination account (C(createVolumePermission), source credentials), copied with
    the destination credentials, and the share is removed once the copy set is complete.
  - Cross-account copies of encrypted snapshots are checked before any change (KMS C(DescribeKey) and
    C(ListAliases) of the members' keys with the source credentials; with the destination's, C(DescribeKey) of
    each member's key by its ARN and of O(kms_key_id)). EC2 shares only snapshots encrypted with a customer managed key, and the destination account
    needs that key shared with it by its key policy or a grant (AWS, Amazon EBS User Guide, "Share an Amazon EBS
    snapshot" and "Share the KMS key used to encrypt a shared Amazon EBS snapshot"; "Copy an Amazon EBS snapshot").
    So a set encrypted with the AWS managed key (C(aws/ebs)) is refused (re-encrypt it with a customer managed key
    first, for example by a copy to another region of the source account with O(kms_key_id)), and so is a copy of
    encrypted snapshots without O(kms_key_id), which must be an enabled key of the destination account in
    O(destination_region), and so is a member's key the destination credentials cannot describe (not shared with
    the destination account). Sharing the source key is not done here; a key shared for C(DescribeKey) but not
    for the copy's other actions fails the C(CopySnapshot), which rolls the copy set back.
  - Refused, with nothing changed, are a set that does not exist, a V(pending) or V(partial) set, a destination
    that is the source region and account itself, and the encrypted cross-account cases above.
author:
  - stillpoint.snapshots maintainers (@stillpoint)
options:
  set_id:
    description: The source set (in O(region), the account of the module's credentials). It must be V(complete).
    type: str
    required: true
  destination_region:
    description:
      - Where the copies are made (the C(CopySnapshot) calls go to this region, with C(SourceRegion) = O(region)).
      - Defaults to O(region) (a copy to another account in the same region).
    type: str
  destination_account_id:
    description:
      - The destination account, when O(destination_profile) or O(destination_access_key) are given. Without it the
        account is read with STS C(GetCallerIdentity) using the destination credentials.
    type: str
  destination_profile:
    description: Profile of the destination account's credentials.
    type: str
  destination_access_key:
    description: Access key id of the destination account's credentials.
    type: str
  destination_secret_key:
    description: Secret access key of the destination account's credentials.
    type: str
  destination_session_token:
    description: Session token of the destination account's (temporary) credentials.
    type: str
  destination_endpoint_url:
    description:
      - EC2 (and STS) endpoint URL for the destination. Defaults to O(endpoint_url); set it when that endpoint does
        not serve O(destination_region).
    type: str
  kms_key_id:
    description:
      - Re-key the copies with this KMS key of the destination (C(Encrypted=true) and C(KmsKeyId) on
        C(CopySnapshot)); recorded as C(stillpoint:kms-key-id). Copies that already exist with another key are
        refused, nothing changed.
      - Required for a cross-account copy of encrypted snapshots; there it must be an enabled key of the destination
        account in O(destination_region) (checked with C(DescribeKey) and the destination credentials).
    type: str
  completion_duration_minutes:
    description:
      - Time-based copy (C(CompletionDurationMinutes)), 15 to 2880 in steps of 15. Recorded as
        C(stillpoint:completion-minutes).
    type: int
  wait:
    description: Wait for every copy to be C(completed), then mark the copy set V(complete) (and remove the share).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait. Cross-region copies of large volumes take hours.
    type: int
    default: 14400
  poll_interval:
    description: Seconds between progress polls while waiting.
    type: float
    default: 15.0
  on_wait_timeout:
    description: V(fail) fails when O(wait_timeout) passes; V(return) returns the progress with the copy set still
      V(pending). Either way a re-run keeps waiting for the same copies.
    type: str
    choices: [fail, return]
    default: fail
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
  - stillpoint.snapshots.attributes
  - stillpoint.snapshots.attributes.actiongroup_aws
attributes:
  check_mode:
    support: full
    details: Reads the source set, the copies already in the destination and the shares (Describe calls, STS
      GetCallerIdentity), and returns what would be copied, deleted, shared and unshared; changes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A re-run finds the copies by their tags and makes no new copy; C(changed=false) once the copy set is
      complete and the share removed.
notes:
  - "IAM, source account: ec2:DescribeSnapshots; cross-account also ec2:DescribeSnapshotAttribute and
    ec2:ModifySnapshotAttribute, and for encrypted members kms:DescribeKey on their keys and kms:ListAliases."
  - "IAM, destination account: ec2:DescribeSnapshots, ec2:CopySnapshot, ec2:CreateTags (copies are tagged at
    creation and marked complete), ec2:DeleteSnapshot (roll-back, stale copies); with O(kms_key_id) or an encrypted
    source kms:CreateGrant, kms:Decrypt, kms:GenerateDataKeyWithoutPlaintext, kms:ReEncrypt* and kms:DescribeKey on
    the keys; with destination credentials and without O(destination_account_id) sts:GetCallerIdentity."
"""

EXAMPLES = r"""
- name: Copy last night's set to the disaster-recovery region
  stillpoint.snapshots.backup_set_copy:
    region: eu-west-1
    set_id: bs-20240301T020000Z-a1b2c3
    destination_region: eu-central-1
    kms_key_id: alias/dr-backups

- name: Copy a set to the backup account (credentials of that account from a profile)
  stillpoint.snapshots.backup_set_copy:
    region: eu-west-1
    set_id: "{{ set.set_id }}"
    destination_region: eu-central-1
    destination_profile: backup-account
    completion_duration_minutes: 120

- name: Show what would be copied
  stillpoint.snapshots.backup_set_copy:
    set_id: bs-20240301T020000Z-a1b2c3
    destination_region: eu-central-1
  check_mode: true
  register: plan
"""

RETURN = r"""
set_id:
  description: The copy set's id in the destination.
  returned: always
  type: str
  sample: bs-20240301T020000Z-9f3e1a
source_set_id:
  description: The source set.
  returned: always
  type: str
source_region:
  description: The source region.
  returned: always
  type: str
source_account:
  description: The source account (owner of the source snapshots).
  returned: always
  type: str
destination_region:
  description: The destination region.
  returned: always
  type: str
destination_account:
  description: The destination account.
  returned: always
  type: str
cross_account:
  description: Whether the copy goes to another account (share, copy, unshare).
  returned: always
  type: bool
state:
  description: The copy set's state, V(pending) or V(complete) (in check mode, as it is now).
  returned: success
  type: str
  sample: complete
members:
  description: One entry per member, in member order.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: Member index.
      type: int
    source_snapshot_id:
      description: The source member snapshot.
      type: str
    snapshot_id:
      description: Its copy in the destination (None when none exists yet, in check mode).
      type: str
    state:
      description: The copy's EC2 state.
      type: str
    progress:
      description: The copy's progress.
      type: str
    action:
      description: What this run found for the member, V(keep) (a completed copy), V(wait) (a pending copy) or
        V(copy) (no usable copy, copied now).
      type: str
snapshot_ids:
  description: The copies, in member order.
  returned: success
  type: list
  elements: str
copy_calls:
  description: C(CopySnapshot) calls made by this run.
  returned: always
  type: int
deleted:
  description: Stale copies deleted before copying (in C(error), duplicates).
  returned: always
  type: list
  elements: str
shared:
  description: Source snapshots shared with the destination account by this run.
  returned: always
  type: list
  elements: str
unshared:
  description: Source snapshots whose share was removed by this run.
  returned: always
  type: list
  elements: str
progress:
  description: Progress samples of the wait, C({elapsed_s, progress, states}).
  returned: always
  type: list
  elements: dict
planned:
  description: In check mode, what a real run would do.
  returned: check mode
  type: dict
  contains:
    copy:
      description: Members to copy, C({index, source_snapshot_id}).
      type: list
      elements: dict
    wait:
      description: Pending copies a run would wait for.
      type: list
      elements: str
    delete:
      description: Stale copies a run would delete.
      type: list
      elements: str
    share:
      description: Source snapshots a run would share.
      type: list
      elements: str
    unshare:
      description: Source snapshots whose share a run would remove.
      type: list
      elements: str
    mark_complete:
      description: Whether the copy set still has to be marked complete.
      type: bool
encryption:
  description:
    - For a cross-account copy, what the KMS preflight found (None for a copy within the account). Also returned
      with its refusal.
  returned: always
  type: dict
  contains:
    encrypted:
      description: The encrypted source members.
      type: list
      elements: str
    source_keys:
      description: The members' keys, C({key_id, key_manager, aliases, snapshot_ids}).
      type: list
      elements: dict
    destination_key:
      description: The ARN of O(kms_key_id) in the destination account.
      type: str
rollback:
  description: On a failure, the copies deleted and those tagged partial.
  returned: failure
  type: dict
"""

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._copy import copy_set

ARGUMENT_SPEC = dict(
    set_id=dict(type="str", required=True),
    destination_region=dict(type="str"),
    destination_account_id=dict(type="str"),
    destination_profile=dict(type="str"),
    destination_access_key=dict(type="str", no_log=False),
    destination_secret_key=dict(type="str", no_log=True),
    destination_session_token=dict(type="str", no_log=True),
    destination_endpoint_url=dict(type="str"),
    kms_key_id=dict(type="str"),
    completion_duration_minutes=dict(type="int"),
    wait=dict(type="bool", default=True),
    wait_timeout=dict(type="int", default=14400),
    poll_interval=dict(type="float", default=15.0),
    on_wait_timeout=dict(type="str", choices=["fail", "return"], default="fail"),
)


def main():
    module = AnsibleAWSModule(
        argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
        mutually_exclusive=[("destination_profile", "destination_access_key"),
                            ("destination_profile", "destination_secret_key"),
                            ("destination_profile", "destination_session_token")],
        required_together=[("destination_access_key", "destination_secret_key")])
    try:
        result = copy_set(module, module.params, check_mode=module.check_mode, log=module.log)
    except StillpointError as e:
        module.fail_json(**dict(dict(changed=False), **e.fail_kwargs()))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
