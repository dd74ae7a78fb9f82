# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test endpoint's key policy reading for DescribeKey across accounts (tests/ec2_endpoint/_kms.py), on policies
shaped as the AWS KMS Developer Guide's examples ("Allowing users in other accounts to use a KMS key")."""

import json

from tests.ec2_endpoint import _kms

ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OWNER, OTHER = "123456789012", "210987654321"


def policy(*statements):
    own = {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
           "Principal": {"AWS": "arn:aws:iam::%s:root" % OWNER}, "Action": "kms:*", "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [own] + list(statements)})


def allow(principal, actions, **extra):
    return dict({"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions, "Resource": "*"}, **extra)


def test_default_policy_lets_only_the_owner_in():
    assert _kms.policy_allows(policy(), OWNER, "kms:DescribeKey", ARN)
    assert not _kms.policy_allows(policy(), OTHER, "kms:DescribeKey", ARN)


def test_external_account_by_root_id_or_principal_under_it():
    for principal in ("arn:aws:iam::%s:root" % OTHER, OTHER, ["arn:aws:iam::%s:role/dr" % OTHER]):
        assert _kms.policy_allows(policy(allow(principal, ["kms:DescribeKey", "kms:Decrypt"])), OTHER,
                                  "kms:DescribeKey", ARN), principal


def test_action_wildcards_and_case():
    assert _kms.policy_allows(policy(allow(OTHER, "kms:Describe*")), OTHER, "kms:DescribeKey", ARN)
    assert _kms.policy_allows(policy(allow(OTHER, "KMS:describekey")), OTHER, "kms:DescribeKey", ARN)
    assert not _kms.policy_allows(policy(allow(OTHER, ["kms:Decrypt", "kms:ReEncrypt*"])), OTHER, "kms:DescribeKey",
                                  ARN)


def test_deny_wins_and_conditions_do_not_count():
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"}
    assert not _kms.policy_allows(policy(allow(OTHER, "kms:*"), deny), OTHER, "kms:DescribeKey", ARN)
    cond = allow(OTHER, "kms:DescribeKey", Condition={"StringEquals": {"kms:CallerAccount": OTHER}})
    assert not _kms.policy_allows(policy(cond), OTHER, "kms:DescribeKey", ARN)


def test_resource_must_match_the_key_and_bad_policy_refuses():
    st = allow(OTHER, "kms:DescribeKey")
    st["Resource"] = ARN.replace("1234abcd", "ffffffff")
    assert not _kms.policy_allows(policy(st), OTHER, "kms:DescribeKey", ARN)
    assert not _kms.policy_allows("not json", OTHER, "kms:DescribeKey", ARN)
    assert _kms.key_arn_parts(ARN) == ("eu-west-1", OWNER, "1234abcd-12ab-34cd-56ef-1234567890ab")
    assert _kms.key_arn_parts("alias/aws/ebs") is None
    assert _kms.key_arn_parts("arn:aws:kms:eu-west-1:%s:alias/dr" % OWNER) is None
