# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""iam/*.json: generated from tests/iam/policies.py, every action explained in docs/iam.md, parliament
finds nothing outside tests/iam/parliament-allow.json, and a real policy evaluator
(@cloud-copilot/iam-simulate, tests/iam/simulate.mjs) holds the tag conditions moto does not evaluate."""

from __future__ import annotations

import json
import os
import subprocess


from tests.iam import policies

HERE = os.path.dirname(os.path.abspath(__file__))
REGION, ACCOUNT = "eu-west-1", "123456789012"
SNAP = "arn:aws:ec2:%s::snapshot/snap-0123456789abcdef0" % REGION
NEW_SNAP = "arn:aws:ec2:%s::snapshot/*" % REGION  # the snapshot a create/copy call makes (no id yet)
VOL = "arn:aws:ec2:%s:%s:volume/vol-0123456789abcdef0" % (REGION, ACCOUNT)
INST = "arn:aws:ec2:%s:%s:instance/i-0123456789abcdef0" % (REGION, ACCOUNT)
KEY = "arn:aws:kms:%s:%s:key/1234abcd-12ab-34cd-56ef-1234567890ab" % (REGION, ACCOUNT)
# (with an account: the evaluator knows no resource type for the account-less ARN of an AWS-owned document)
VSS_DOC = "arn:aws:ssm:%s:%s:document/AWSEC2-CreateVssSnapshot" % (REGION, ACCOUNT)
OTHER_DOC = "arn:aws:ssm:%s:%s:document/AWS-RunPowerShellScript" % (REGION, ACCOUNT)
# AWS's default key policy: the account's IAM policies decide who may use the key (KMS Developer Guide, "Default key
# policy"); without a key policy that lets them, no IAM policy gives access to a KMS key
DEFAULT_KEY_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Sid": "Enable IAM User Permissions", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::%s:root" % ACCOUNT},
     "Action": "kms:*", "Resource": "*"}]}
MARKED = {"aws:ResourceTag/%s" % policies.CREATOR_KEY: policies.CREATOR}
FOREIGN = {"aws:ResourceTag/%s" % policies.CREATOR_KEY: "someone-else"}


def test_files_are_generated_from_the_source():
    assert policies.main(["--check"]) == 0
    assert sorted(f[:-5] for f in os.listdir(policies.IAM_DIR) if f.endswith(".json")) == policies.names()


def test_every_action_is_documented():
    with open(os.path.join(policies.ROOT, "docs", "iam.md"), encoding="utf-8") as f:
        doc = f.read()
    for name in policies.names():
        assert "`iam/%s.json`" % name in doc, name
        for action in policies.actions(policies.load(name)):
            assert "`%s`" % action in doc, (name, action)


def test_parliament_finds_nothing_unexplained(parliament_bin):
    with open(os.path.join(HERE, "parliament-allow.json"), encoding="utf-8") as f:
        allow = json.load(f)
    proc = subprocess.run([parliament_bin, "--directory", policies.IAM_DIR, "--include-community-auditors", "--json"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    findings = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    unexplained = []
    for f in findings:
        detail = f.get("detail") or []
        acts = [d.get("action") for d in detail if isinstance(d, dict)] or f["location"].get("actions") or []
        ok = f["issue"] in allow and acts and all(a in allow[f["issue"]]["actions"] for a in acts)
        if not ok:
            unexplained.append(f)
    assert proc.stderr.strip() == "", proc.stderr
    assert unexplained == [], unexplained


def simulate(node_dir, cases):
    proc = subprocess.run(["node", os.path.join(HERE, "simulate.mjs")], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ, IAM_NODE_DIR=node_dir))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    errors = [o for o in out if o["result"] == "error"]
    assert errors == [], errors
    return dict((o["id"], o["result"]) for o in out)


def test_tag_conditions_with_a_real_evaluator(iam_node_dir):
    cases, expect = [], {}

    def case(name, action, resource, context, result, resource_policy=None):
        cid = "%s|%s|%s|%s" % (name, action, resource, json.dumps(context, sort_keys=True))
        cases.append({"id": cid, "policy": policies.load(name), "action": action, "resource": resource,
                      "context": context, "resource_policy": resource_policy})
        expect[cid] = result

    for name in sorted(policies.POLICIES):
        acts = policies.actions(policies.load(name))
        for action, arn in (("ec2:DeleteSnapshot", SNAP), ("ec2:DeleteVolume", VOL)):
            if action in acts:  # deletes only what carries the creator marker
                case(name, action, arn, MARKED, "Allowed")
                case(name, action, arn, FOREIGN, "ImplicitlyDenied")
                case(name, action, arn, {}, "ImplicitlyDenied")
            else:
                case(name, action, arn, MARKED, "ImplicitlyDenied")
        if "ec2:CreateTags" in acts:  # nobody can put the marker on a resource it did not create
            for arn in (SNAP, VOL):
                case(name, "ec2:CreateTags", arn, {"aws:RequestTag/%s" % policies.CREATOR_KEY: policies.CREATOR,
                                                   "aws:TagKeys": [policies.CREATOR_KEY]}, "ImplicitlyDenied")
        if "ec2:CreateSnapshots" in acts:
            tags = {"aws:RequestTag/%s" % policies.CREATOR_KEY: policies.CREATOR, "aws:TagKeys": [policies.CREATOR_KEY]}
            case(name, "ec2:CreateSnapshots", SNAP, tags, "Allowed")
            case(name, "ec2:CreateSnapshots", SNAP, {"aws:TagKeys": ["Name"], "aws:RequestTag/Name": "x"},
                 "ImplicitlyDenied")
            case(name, "ec2:CreateSnapshots", INST, {}, "Allowed")
            case(name, "ec2:CreateSnapshots", VOL, {}, "Allowed")
            case(name, "ec2:CreateTags", SNAP, {"ec2:CreateAction": "CreateSnapshots"}, "Allowed")
            case(name, "ec2:CreateTags", SNAP, dict(MARKED, **{"aws:TagKeys": ["stillpoint:state"]}), "Allowed")
            case(name, "ec2:CreateTags", SNAP, {"aws:TagKeys": ["stillpoint:state"]}, "ImplicitlyDenied")
        if "ec2:DeleteTags" in acts:  # the drill's verdict: only on our own snapshots
            case(name, "ec2:DeleteTags", SNAP, MARKED, "Allowed")
            case(name, "ec2:DeleteTags", SNAP, FOREIGN, "ImplicitlyDenied")
            case(name, "ec2:DetachVolume", VOL, MARKED, "Allowed")
            case(name, "ec2:DetachVolume", VOL, FOREIGN, "ImplicitlyDenied")
            case(name, "ec2:CreateTags", VOL, {"aws:TagKeys": [policies.REPLACED_BY_KEY]}, "ImplicitlyDenied")
            marked_on_create = {"aws:RequestTag/%s" % policies.CREATOR_KEY: policies.CREATOR,
                                "aws:TagKeys": [policies.CREATOR_KEY]}
            case(name, "ec2:CreateVolume", VOL, marked_on_create, "Allowed")
            case(name, "ec2:CreateVolume", VOL, {}, "ImplicitlyDenied")
            case(name, "ec2:CreateVolume", SNAP, MARKED, "Allowed")
            case(name, "ec2:CreateVolume", SNAP, FOREIGN, "ImplicitlyDenied")
        if "ec2:CreateVolume" in acts and name != "restore_drill":
            tags = {"aws:RequestTag/%s" % policies.CREATOR_KEY: policies.CREATOR, "aws:TagKeys": [policies.CREATOR_KEY]}
            case(name, "ec2:CreateVolume", VOL, tags, "Allowed")
            case(name, "ec2:CreateVolume", VOL, {}, "ImplicitlyDenied")
            case(name, "ec2:CreateVolume", SNAP, MARKED, "Allowed")
            case(name, "ec2:CreateVolume", SNAP, FOREIGN, "ImplicitlyDenied")
            case(name, "ec2:CreateTags", VOL, {"ec2:CreateAction": "CreateVolume"}, "Allowed")
            case(name, "ec2:CreateTags", VOL, {"aws:TagKeys": [policies.REPLACED_BY_KEY]}, "Allowed")
            case(name, "ec2:CreateTags", VOL, {"aws:TagKeys": ["Name"]}, "ImplicitlyDenied")
            case(name, "ec2:AttachVolume", VOL, MARKED, "Allowed")
            case(name, "ec2:AttachVolume", VOL, FOREIGN, "ImplicitlyDenied")
            case(name, "ec2:AttachVolume", INST, {}, "Allowed")
            case(name, "ec2:DetachVolume", VOL, {}, "Allowed")
            case(name, "ec2:EnableFastSnapshotRestores", SNAP, MARKED, "Allowed")
            case(name, "ec2:EnableFastSnapshotRestores", SNAP, FOREIGN, "ImplicitlyDenied")
        if "ec2:CopySnapshot" in acts:  # any source snapshot; the new one only with the marker on create
            tags = {"aws:RequestTag/%s" % policies.CREATOR_KEY: policies.CREATOR, "aws:TagKeys": [policies.CREATOR_KEY]}
            case(name, "ec2:CopySnapshot", SNAP, {}, "Allowed")
            case(name, "ec2:CopySnapshot", NEW_SNAP, tags, "Allowed")
            # (not checkable here: NEW_SNAP without the tag. The simulator matches the request's literal "*" as a
            # wildcard, so the source statement's snapshot/snap-* answers for it; EC2 compares it literally)
            case(name, "ec2:CreateTags", SNAP, {"ec2:CreateAction": "CopySnapshot"}, "Allowed")
            case(name, "ec2:CreateTags", SNAP, {"aws:TagKeys": ["stillpoint:state"]}, "ImplicitlyDenied")
        if "kms:DescribeKey" in acts:  # a cross-account copy's KMS preflight reads keys, nothing else of KMS
            case(name, "kms:DescribeKey", KEY, {}, "Allowed", DEFAULT_KEY_POLICY)
            case(name, "kms:Decrypt", KEY, {}, "ImplicitlyDenied", DEFAULT_KEY_POLICY)
            case(name, "kms:CreateGrant", KEY, {}, "ImplicitlyDenied", DEFAULT_KEY_POLICY)
        if "ssm:SendCommand" in acts:  # AWS's VSS document on instances, no other document
            case(name, "ssm:SendCommand", VSS_DOC, {}, "Allowed")
            case(name, "ssm:SendCommand", INST, {}, "Allowed")
            case(name, "ssm:SendCommand", OTHER_DOC, {}, "ImplicitlyDenied")
            case(name, "ssm:GetCommandInvocation", "*", {}, "Allowed")
        else:
            case(name, "ssm:SendCommand", VSS_DOC, {}, "ImplicitlyDenied")
        if "kms:ListAliases" in acts:
            case(name, "kms:ListAliases", "*", {}, "Allowed")
        for action in ("ec2:ModifySnapshotAttribute", "ec2:DescribeSnapshotAttribute", "ec2:LockSnapshot"):
            if action in acts:  # shares, share reads and locks only of our own snapshots
                case(name, action, SNAP, MARKED, "Allowed")
                case(name, action, SNAP, FOREIGN, "ImplicitlyDenied")
        # unrelated actions are implicitly denied
        for action, arn in (("ec2:TerminateInstances", INST), ("ec2:ModifySnapshotAttribute", SNAP),
                            ("ec2:CopySnapshot", SNAP), ("ec2:RunInstances", INST), ("iam:CreateUser", "*"),
                            ("ec2:UnlockSnapshot", SNAP)):
            if action not in acts:
                case(name, action, arn, {}, "ImplicitlyDenied")
    got = simulate(iam_node_dir, cases)
    wrong = dict((cid, (got.get(cid), want)) for cid, want in expect.items() if got.get(cid) != want)
    assert wrong == {}, wrong
    assert len(expect) > 100
