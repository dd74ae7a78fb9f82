# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_set_copy's KMS preflight for cross-account copies, against the strict EC2 endpoint (moto's KMS behind it).

EC2 shares only snapshots encrypted with a customer managed key, never with the AWS managed key aws/ebs, and the
destination account needs the source key shared with it (Amazon EBS User Guide: "Share an Amazon EBS snapshot",
"Share the KMS key used to encrypt a shared Amazon EBS snapshot"; "Copy an Amazon EBS snapshot"). The module refuses,
before any change (also in check mode), a cross-account copy of members under the AWS managed key, of encrypted
members without ``kms_key_id``, and a ``kms_key_id`` that is not an enabled key of the destination account in the
destination region, and members whose key the destination account cannot describe (not shared with it by the key
policy); a copy under a customer managed key re-keyed with the destination's key goes through.

Encrypted sets are made the way EC2 makes them encrypted: the members of a plain set copied in the source region with
``Encrypted`` (and ``KmsKeyId`` of a customer managed key, or none: the account's aws/ebs key), tagged as a set.
What the endpoint cannot tell (README "Not emulated"): moto's KMS marks its aws/ebs key ``KeyManager: CUSTOMER``
(the module also knows it by its reserved ``alias/aws/`` name, as on AWS), and CopySnapshot checks no key access at
all; DescribeKey of another account's key by its ARN follows the key policy (the endpoint's ``_kms.py``); KMS calls are not in
the endpoint's call log (only EC2's are), so "nothing changed" is counted on the EC2 side.
"""

import json
import time
import uuid

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _copy
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_copy
from tests.integration.test_set_copy import DEST
from tests.integration.test_set_copy import Source
from tests.integration.test_set_copy import changing
from tests.integration.test_set_copy import copies
from tests.integration.test_set_copy import run

SOURCE_ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def source(ec2_endpoint):
    return Source(ec2_endpoint, n=2)


@pytest.fixture
def other(ec2):
    return ec2.account_credentials()


def cmk(ep, region=None, credentials=None, account=SOURCE_ACCOUNT, share_with=None):
    """A customer managed key (its ARN); ``share_with``: an account its key policy lets use it for EBS copies."""
    statements = [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:root" % account}, "Action": "kms:*",
                   "Resource": "*"}]
    if share_with:
        statements.append({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:root" % share_with},
                           "Action": list(_copy.SHARED_KEY_ACTIONS), "Resource": "*"})
    kms = ep.client("kms", region=region, credentials=credentials)
    return kms.create_key(Description="stillpoint test cmk",
                          Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))["KeyMetadata"]["Arn"]


def encrypted_set(ep, source, key_arn=None):
    """A complete set of encrypted members: a plain set's members copied in the source region with Encrypted and,
    when given, ``key_arn`` (else the account's aws/ebs key), carrying its tags under a set id of their own."""
    _plain, ids = source.take()
    set_id = catalog.new_set_id()
    made = []
    for sid in ids:
        tags = catalog.tag_dict(source.client.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["Tags"])
        tags.update({catalog.K_SET_ID: set_id, catalog.K_STATE: "pending"})
        kwargs = dict(Encrypted=True, KmsKeyId=key_arn) if key_arn else dict(Encrypted=True)
        made.append(source.client.copy_snapshot(
            SourceSnapshotId=sid, SourceRegion=ep.region, TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": catalog.to_tag_list(tags)}], **kwargs)["SnapshotId"])
    ep.pending(0, snapshot_ids=made)
    source.client.create_tags(Resources=made, Tags=[{"Key": catalog.K_STATE, "Value": "complete"}])
    snaps = source.client.describe_snapshots(SnapshotIds=made)["Snapshots"]
    assert all(s["Encrypted"] and s["KmsKeyId"] for s in snaps), snaps
    ep.clear_calls()
    return set_id, made, sorted(set(s["KmsKeyId"] for s in snaps))


def cross_args(source, set_id, other, **kw):
    return source.args(set_id, destination_access_key=other["AWS_ACCESS_KEY_ID"],
                       destination_secret_key=other["AWS_SECRET_ACCESS_KEY"],
                       destination_session_token=other["AWS_SESSION_TOKEN"], **kw)


def refused_changing_nothing(monkeypatch, ec2, args, words):
    """Refused in check mode and in a real run alike, with nothing changed: no EC2 changing call (no share, no
    copy) and no copy in the destination."""
    for check_mode in (True, False):
        res = run(monkeypatch, backup_set_copy, args, check_mode=check_mode)
        assert res.get("failed") and "nothing was copied" in res["msg"], res
        for w in words:
            assert w in res["msg"], (w, res["msg"])
    assert changing(ec2) == [] and ec2.calls("ModifySnapshotAttribute") == []
    return res


def test_aws_managed_key_refused_before_any_change(monkeypatch, ec2, source, other):
    set_id, ids, [key] = encrypted_set(ec2, source)  # aws/ebs of the source account
    dest_key = cmk(ec2, region=DEST, credentials=other, account=other["account_id"])
    args = cross_args(source, set_id, other, kms_key_id=dest_key)  # a destination key does not help
    res = refused_changing_nothing(monkeypatch, ec2, args, [
        "AWS managed key %s (alias/aws/ebs)" % key, "Share an Amazon EBS snapshot",
        "Re-encrypt with a customer managed key", "kms_key_id", ", ".join(sorted(ids))])
    assert res["encryption"]["source_keys"] == [dict(key_id=key, key_manager="CUSTOMER", aliases=["alias/aws/ebs"],
                                                     snapshot_ids=sorted(ids))], res["encryption"]
    key_shared = copies(ec2, _copy.copy_key(SOURCE_ACCOUNT, ec2.region, set_id), credentials=other)
    assert key_shared == []
    print("\nrefused (aws/ebs): %s" % res["msg"][:400])

    # within the account the same set copies to another region (re-encrypted there): no KMS preflight
    plain = run(monkeypatch, backup_set_copy, source.args(set_id))
    assert plain["state"] == "complete" and plain["encryption"] is None, plain
    assert all(s["Encrypted"] for s in copies(ec2, _copy.copy_key(SOURCE_ACCOUNT, ec2.region, set_id)))


def test_encrypted_members_without_kms_key_id_refused(monkeypatch, ec2, source, other):
    key = cmk(ec2, share_with=other["account_id"])
    set_id, ids, keys = encrypted_set(ec2, source, key)
    assert keys == [key]
    res = refused_changing_nothing(monkeypatch, ec2, cross_args(source, set_id, other), [
        "customer managed key %s of account %s" % (key, SOURCE_ACCOUNT), "names no kms_key_id",
        "Give kms_key_id, a customer managed key of account %s in %s" % (other["account_id"], DEST),
        "kms:CreateGrant", "Share the KMS key used to encrypt a shared Amazon EBS snapshot"])
    assert res["encryption"]["encrypted"] == sorted(ids) and res["encryption"]["source_keys"][0]["key_manager"] == \
        "CUSTOMER", res["encryption"]


def test_source_key_not_shared_with_the_destination_refused(monkeypatch, ec2, source, other):
    key = cmk(ec2)  # its key policy allows only the source account
    set_id, ids, _keys = encrypted_set(ec2, source, key)
    dest_key = cmk(ec2, region=DEST, credentials=other, account=other["account_id"])
    refused = refused_changing_nothing(monkeypatch, ec2, cross_args(source, set_id, other, kms_key_id=dest_key), [
        "account %s cannot use the key %s" % (other["account_id"], key), "AccessDeniedException",
        "kms:DescribeKey", "must share it with account %s" % other["account_id"], "kms:CreateGrant",
        "Share the KMS key used to encrypt a shared Amazon EBS snapshot"])
    assert refused["encryption"]["encrypted"] == sorted(ids), refused["encryption"]
    assert copies(ec2, _copy.copy_key(SOURCE_ACCOUNT, ec2.region, set_id), credentials=other) == []

    # the same key once its policy shares it with the destination account: the copy goes through
    kms = ec2.client("kms")
    policy = json.loads(kms.get_key_policy(KeyId=key.rsplit("/", 1)[1], PolicyName="default")["Policy"])
    policy["Statement"].append({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:root" % other["account_id"]},
                                "Action": list(_copy.SHARED_KEY_ACTIONS), "Resource": "*"})
    kms.put_key_policy(KeyId=key.rsplit("/", 1)[1], PolicyName="default", Policy=json.dumps(policy))
    res = run(monkeypatch, backup_set_copy, cross_args(source, set_id, other, kms_key_id=dest_key))
    assert res["state"] == "complete" and res["copy_calls"] == len(ids), res
    print("\nrefused (source key not shared): %s" % refused["msg"][:300])


def test_destination_key_must_be_an_enabled_key_of_the_destination(monkeypatch, ec2, source, other):
    key = cmk(ec2, share_with=other["account_id"])
    set_id, _ids, _keys = encrypted_set(ec2, source, key)
    dest_kms = ec2.client("kms", region=DEST, credentials=other)
    disabled = cmk(ec2, region=DEST, credentials=other, account=other["account_id"])
    dest_kms.disable_key(KeyId=disabled.rsplit("/", 1)[1])  # moto's DisableKey takes the key id (an ARN: HTTP 500)
    elsewhere = cmk(ec2, region=ec2.region, credentials=other, account=other["account_id"])  # not in DEST
    missing = "alias/stillpoint-missing-%s" % uuid.uuid4().hex[:6]
    cases = [
        (missing, ["KMS DescribeKey %s" % missing, "NotFoundException", "destination credentials"]),
        (disabled, ["is Disabled, not Enabled"]),
        (elsewhere, ["NotFoundException", "region %s" % DEST]),
        (key, ["NotFoundException", "give a key of account %s" % other["account_id"]]),  # the source's own key
    ]
    for kms_key_id, words in cases:
        refused_changing_nothing(monkeypatch, ec2, cross_args(source, set_id, other, kms_key_id=kms_key_id), words)


def test_customer_managed_key_copy_rekeyed_in_the_destination(monkeypatch, ec2, source, other):
    key = cmk(ec2, share_with=other["account_id"])
    set_id, ids, _keys = encrypted_set(ec2, source, key)
    dest_key = cmk(ec2, region=DEST, credentials=other, account=other["account_id"])
    alias = "alias/stillpoint-dr-%s" % uuid.uuid4().hex[:6]
    ec2.client("kms", region=DEST, credentials=other).create_alias(AliasName=alias, TargetKeyId=dest_key)
    args = cross_args(source, set_id, other, kms_key_id=alias)

    plan = run(monkeypatch, backup_set_copy, args, check_mode=True)
    assert plan["changed"] is True and plan["planned"]["share"] == sorted(ids) and changing(ec2) == [], plan
    assert plan["encryption"]["destination_key"] == dest_key, plan["encryption"]

    began = time.monotonic()
    res = run(monkeypatch, backup_set_copy, args)
    took = time.monotonic() - began
    assert res["state"] == "complete" and res["copy_calls"] == 2 and res["cross_account"] is True, res
    assert res["encryption"] == dict(encrypted=sorted(ids), destination_key=dest_key, source_keys=[dict(
        key_id=key, key_manager="CUSTOMER", aliases=[], snapshot_ids=sorted(ids))]), res["encryption"]
    for call in ec2.calls("CopySnapshot"):
        assert (call["region"], call["params"]["Encrypted"], call["params"]["KmsKeyId"]) == (DEST, "true", alias)
    assert sorted(res["shared"]) == sorted(ids) and sorted(res["unshared"]) == sorted(ids)
    made = copies(ec2, _copy.copy_key(SOURCE_ACCOUNT, ec2.region, set_id), credentials=other)
    assert len(made) == 2 and all(s["OwnerId"] == other["account_id"] and s["Encrypted"] for s in made)
    assert all(s["KmsKeyId"] == alias and catalog.tag_dict(s["Tags"])[_copy.K_KMS_KEY] == alias for s in made)

    ec2.clear_calls()
    again = run(monkeypatch, backup_set_copy, args)
    assert again["changed"] is False and again["copy_calls"] == 0 and changing(ec2) == [], again
    print("\ncross-account copy under a customer managed key, re-keyed with %s: %.2f s, %d CopySnapshot calls; "
          "re-run: no change" % (alias, took, res["copy_calls"]))
