# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_copy's KMS decision (_copy.check_encryption) on the recorded set members (fixtures/catalog/
describe_snapshots.json) made encrypted, with KeyMetadata shaped as AWS KMS answers DescribeKey. The cases moto's KMS
cannot produce are here: an AWS managed key known by ``KeyManager: AWS`` alone (moto says CUSTOMER for its aws/ebs
key), and a destination key of another account that the destination credentials can describe. The
rest runs against the strict endpoint in tests/integration/test_set_copy_kms.py."""

import copy
import json
import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _copy
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "catalog", "describe_snapshots.json")
NEW = "bs-20240302T020000Z-d4e5f6"
SRC, DST, REGION = "123456789012", "210987654321", "eu-central-1"
SRC_KEY = "arn:aws:kms:eu-west-1:%s:key/1234abcd-12ab-34cd-56ef-1234567890ab" % SRC
DST_KEY = "arn:aws:kms:%s:%s:key/0987dcba-09fe-87dc-65ba-ab0987654321" % (REGION, DST)


def meta(arn, manager="CUSTOMER", state="Enabled"):
    """DescribeKey's KeyMetadata as AWS KMS returns it (the fields the check reads, and their neighbours)."""
    return {"AWSAccountId": arn.split(":")[4], "KeyId": arn.rsplit("/", 1)[1], "Arn": arn, "Enabled": state == "Enabled",
            "KeyUsage": "ENCRYPT_DECRYPT", "KeyState": state, "Origin": "AWS_KMS", "KeyManager": manager,
            "KeySpec": "SYMMETRIC_DEFAULT"}


@pytest.fixture
def members():
    with open(FIXTURE) as f:
        items = json.load(f)["Snapshots"]
    rec = [r for r in catalog.group_sets(copy.deepcopy(items)) if r["set_id"] == NEW][0]
    out = [s for s in items if s["SnapshotId"] in rec["snapshot_ids"]]
    assert len(out) >= 2
    for s in out:
        s.update(Encrypted=True, KmsKeyId=SRC_KEY)
    return out


def check(members, source_keys, kms_key_id=DST_KEY, dest_key=None):
    return _copy.check_encryption(NEW, members, source_keys, kms_key_id, dest_key if dest_key is not None else
                                  (meta(DST_KEY) if kms_key_id else None), SRC, DST, REGION)


def test_unencrypted_members_pass_without_a_key(members):
    for s in members:
        s.update(Encrypted=False, KmsKeyId=None)
    out = check(members, {}, kms_key_id=None)
    assert out == dict(encrypted=[], source_keys=[], destination_key=None)


def test_aws_managed_key_by_key_manager_refused(members):
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY, manager="AWS"), [])})
    msg = info.value.msg
    assert "AWS managed key %s (AWS) of account %s" % (SRC_KEY, SRC) in msg and "nothing was copied" in msg, msg
    assert "Re-encrypt with a customer managed key" in msg and "Share an Amazon EBS snapshot" in msg
    assert info.value.details["encryption"]["source_keys"][0]["key_manager"] == "AWS"


def test_aws_managed_key_by_its_reserved_alias_refused(members):
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY), ["alias/aws/ebs"])})
    assert "(alias/aws/ebs)" in info.value.msg


def test_encrypted_members_without_kms_key_id_refused(members):
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY), ["alias/backups"])}, kms_key_id=None)
    assert "names no kms_key_id" in info.value.msg and "kms:ReEncrypt*" in info.value.msg


def test_encrypted_member_without_a_named_key_refused(members):
    members[0]["KmsKeyId"] = None
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY), [])})
    assert "names no KMS key" in info.value.msg and members[0]["SnapshotId"] in info.value.msg


def test_source_key_not_enabled_refused(members):
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY, state="PendingDeletion"), [])})
    assert "PendingDeletion, not Enabled" in info.value.msg


def test_destination_key_of_another_account_refused(members):
    # on AWS the destination credentials can describe the source's key once its policy shares it
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY), [])}, kms_key_id=SRC_KEY, dest_key=meta(SRC_KEY))
    assert "is key %s of account %s, not of the destination account %s" % (SRC_KEY, SRC, DST) in info.value.msg


def test_destination_key_disabled_refused(members):
    with pytest.raises(StillpointError) as info:
        check(members, {SRC_KEY: (meta(SRC_KEY), [])}, dest_key=meta(DST_KEY, state="Disabled"))
    assert "is Disabled, not Enabled" in info.value.msg


def test_customer_managed_key_with_a_destination_key_passes(members):
    out = check(members, {SRC_KEY: (meta(SRC_KEY), ["alias/backups"])}, kms_key_id="alias/dr")
    ids = sorted(s["SnapshotId"] for s in members)
    assert out == dict(encrypted=ids, destination_key=DST_KEY, source_keys=[dict(
        key_id=SRC_KEY, key_manager="CUSTOMER", aliases=["alias/backups"], snapshot_ids=ids)])
    assert _copy.arn_account(DST_KEY) == DST and _copy.arn_account("alias/dr") is None


def test_source_key_the_destination_cannot_describe_refused(members):
    denied = ("An error occurred (AccessDeniedException) when calling the DescribeKey operation: User: "
              "arn:aws:iam::%s:root is not authorized to perform: kms:DescribeKey on resource: %s" % (DST, SRC_KEY))
    with pytest.raises(StillpointError) as info:
        _copy.check_encryption(NEW, members, {SRC_KEY: (meta(SRC_KEY), [])}, DST_KEY, meta(DST_KEY), SRC, DST, REGION,
                               {SRC_KEY: denied})
    msg = info.value.msg
    assert "account %s cannot use the key %s" % (DST, SRC_KEY) in msg and denied in msg, msg
    assert "must share it with account %s" % DST in msg and "kms:GenerateDataKeyWithoutPlaintext" in msg
    assert info.value.details["encryption"]["destination_key"] is None  # refused before the destination key
    # the same key described by the destination: no refusal
    out = _copy.check_encryption(NEW, members, {SRC_KEY: (meta(SRC_KEY), [])}, DST_KEY, meta(DST_KEY), SRC, DST,
                                 REGION, {SRC_KEY: None})
    assert out["destination_key"] == DST_KEY
