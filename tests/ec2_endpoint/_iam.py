# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opt-in IAM enforcement for the strict endpoint (``server --iam``, ``Endpoint.start(iam=True)``).

moto enforces identity policies once ``settings.INITIAL_NO_AUTH_ACTION_COUNT`` requests were served
(``moto.core.authorization``): it finds the IAM user of the request's access key, checks the SigV4
signature and evaluates the user's policies with ``moto.iam.access_control`` (actions, NotAction,
Resource patterns, Allow/Deny; no condition of an identity policy). For EC2 it asks about resource
``*`` only, so a statement scoped to ``arn:aws:ec2:...:snapshot/*`` never matches and a least-privilege
policy is refused whole. This module keeps moto's evaluator and feeds it what EC2 authorizes: the
ARN of every resource an action acts on (the Service Authorization Reference's resource types, one
check per ARN, as EC2 does), and answers a refusal the way EC2 does (HTTP 403
``UnauthorizedOperation`` naming the user, the action and the resource). It also treats:

* the endpoint's own requests (the internal token) and the key ``testing`` as the account's root
  user (never checked), so the harness, fixtures and assertions keep working while enforcing;
* everything not EC2 (IAM to create the test users, STS) with moto's own check, unchanged.

``World.op_iam(enforce=None)`` (control ``iam``) turns enforcement on/off and reports it. Without
``--iam`` nothing here is installed and moto behaves as before.
"""

from __future__ import annotations

import re

from werkzeug.exceptions import HTTPException

from . import _world

ROOT_ACCESS_KEYS = frozenset(["testing"])
_KEY = re.compile(r"Credential=([^/,\s]+)/")

# Wire-parameter prefixes of the ids an action acts on, by the resource type EC2 authorizes. Actions
# not listed (Describe*) support no resource-level permissions: EC2 checks them against "*".
_CREATES = {  # the new resource of a creating call (its id is not known yet)
    "CreateSnapshots": ["snapshot"],
    "CreateSnapshot": ["snapshot"],
    "CopySnapshot": ["snapshot"],
    "CreateVolume": ["volume"],
}
_ID_PARAMS = {
    "CreateSnapshots": ["InstanceSpecification.InstanceId"],
    "CreateSnapshot": ["VolumeId"],
    "CreateVolume": ["SnapshotId"],
    "CopySnapshot": ["SourceSnapshotId"],
    "DeleteSnapshot": ["SnapshotId"],
    "DeleteVolume": ["VolumeId"],
    "AttachVolume": ["InstanceId", "VolumeId"],
    "DetachVolume": ["InstanceId", "VolumeId"],
    "CreateTags": ["ResourceId."],
    "DeleteTags": ["ResourceId."],
    "StartInstances": ["InstanceId."],
    "StopInstances": ["InstanceId."],
    "RebootInstances": ["InstanceId."],
    "TerminateInstances": ["InstanceId."],
    "EnableFastSnapshotRestores": ["SourceSnapshotId."],
    "DisableFastSnapshotRestores": ["SourceSnapshotId."],
    "ModifySnapshotAttribute": ["SnapshotId"],
    "LockSnapshot": ["SnapshotId"],
    "DescribeSnapshotAttribute": ["SnapshotId"],
    "UnlockSnapshot": ["SnapshotId"],
    "ModifyVolume": ["VolumeId"],
}
_TYPES = (("snap-", "snapshot"), ("vol-", "volume"), ("i-", "instance"), ("ami-", "image"))


def resource_arn(kind, resource_id, region, account):
    """An EC2 resource ARN; snapshots (and images) carry no account, as in EC2."""
    owner = "" if kind in ("snapshot", "image") else account
    return "arn:aws:ec2:%s:%s:%s/%s" % (region, owner, kind, resource_id)


def resource_arns(action, params, region, account):
    """The ARNs EC2 authorizes ``action`` against for a request with wire ``params``; ``["*"]`` for
    actions without resource-level permissions."""
    arns = []
    for prefix in _ID_PARAMS.get(action, ()):
        if prefix.endswith("."):
            values = [v for k, v in sorted(params.items()) if k.startswith(prefix) and k[len(prefix):].isdigit()]
        else:
            values = [params[prefix]] if params.get(prefix) else []
        for value in values:
            kind = next((t for p, t in _TYPES if value.startswith(p)), None)
            if kind:
                arns.append(resource_arn(kind, value, region, account))
    if action == "CreateSnapshots":  # the instance's volumes are resources of the call too
        arns.append(resource_arn("volume", "*", region, account))
    for kind in _CREATES.get(action, ()):
        arns.append(resource_arn(kind, "*", region, account))
    return arns or ["*"]


class UnauthorizedOperation(HTTPException):
    """EC2's refusal (HTTP 403), in EC2's error document."""

    code = 403

    def __init__(self, user_arn, action, arn):
        from ._wsgi import ec2_error

        message = ("You are not authorized to perform this operation. User: %s is not authorized to perform: %s "
                   "on resource: %s because no identity-based policy allows the %s action" % (user_arn, action, arn, action))
        super().__init__(description=ec2_error("UnauthorizedOperation", message).decode("utf-8"))
        self.message = message

    def get_headers(self, environ=None, scope=None):
        return [("Content-Type", "text/xml;charset=UTF-8")]


def enforcing():
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    return ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT


def set_enforcing(on):
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if on else float("inf")
    ActionAuthenticatorMixin.request_count = 0


def install(world, enforce=True):
    """Patch moto's authorization hook (this process only) and add the ``iam`` control operation."""
    from moto.core.responses import BaseResponse
    from moto.iam.access_control import IAMRequest

    original = BaseResponse._authenticate_and_authorize_normal_action

    def authorize(self, resource="*"):
        if not enforcing():
            return original(self, resource)
        if _world._ctx("internal", False):
            return None
        key = _KEY.search(self.headers.get("Authorization") or "")
        if key is not None and key.group(1) in ROOT_ACCESS_KEYS:
            return None
        if getattr(self, "service_name", None) != "ec2":
            return original(self, resource)
        action = self._get_action()
        request = IAMRequest(account_id=self.current_account, method=self.method, path=self.raw_path, data=self.data,
                             body=self.raw_body, headers=self.headers, action=action)
        request.check_signature()
        params = _world._ctx("params") or {}
        for arn in resource_arns(action, params, self.region, self.current_account):
            try:
                request.check_action_permitted(arn)
            except HTTPException:
                raise UnauthorizedOperation(request._access_key.arn, "ec2:%s" % action, arn) from None
        return None

    BaseResponse._authenticate_and_authorize_normal_action = authorize

    def op_iam(enforce=None):
        if enforce is not None:
            set_enforcing(bool(enforce))
        return {"enforce": enforcing(), "root_access_keys": sorted(ROOT_ACCESS_KEYS)}

    world.op_iam = op_iam
    set_enforcing(enforce)
    return world
