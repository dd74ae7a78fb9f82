# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KMS DescribeKey across accounts, as KMS does it (moto 5.2.5 looks a key ARN up in the caller's own account only).

AWS KMS Developer Guide, "Allowing users in other accounts to use a KMS key": a principal of another account can use
a KMS key when the key policy allows that account (or a principal in it) and, in the other account, an IAM policy
allows the principal; it must name the key by its key ARN (or alias ARN), in the key's Region; DescribeKey is one of
the operations usable across accounts. Without such a key policy statement KMS answers ``AccessDeniedException``.
The IAM half is the IAM tier's business (tests/iam); here only the key policy is read.

``describe_key`` (moto's KmsResponse.describe_key, patched by ``install()``), when KeyId is a key ARN of another
account than the caller's:

* the key is looked up in that account's backend for the caller's Region (a key of another Region is not found, as
  a regional KMS endpoint cannot see it): ``NotFoundException``;
* the key policy is evaluated for the caller's account and ``kms:DescribeKey``: an applicable ``Deny`` wins, else an
  ``Allow`` whose principal is the caller's account (``arn:aws:iam::<account>:root``, the bare account id, or a
  principal under ``arn:aws:iam::<account>:``) or ``*``, whose action matches (``kms:*``, ``kms:Describe*``, ...), whose
  resource is ``*`` or the key ARN; an ``Allow`` with a ``Condition`` is not counted (conditions are not evaluated
  here, so the endpoint errs towards refusing); none: ``AccessDeniedException``.

Anything else goes to moto unchanged (its own account, aliases, key ids).
"""

from __future__ import annotations

import fnmatch
import json

_ORIG = {}


def key_arn_parts(key_id):
    """``(region, account, key id)`` of a key ARN, else None."""
    parts = (key_id or "").split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[2] == "kms" and parts[5].startswith("key/"):
        return parts[3], parts[4], parts[5][len("key/"):]
    return None


def _listed(value):
    return value if isinstance(value, list) else [value]


def _principal_matches(principal, account):
    if principal == "*":
        return True
    if not isinstance(principal, dict):
        return False
    for p in _listed(principal.get("AWS", [])):
        if p in ("*", account) or p == "arn:aws:iam::%s:root" % account or p.startswith("arn:aws:iam::%s:" % account):
            return True
    return False


def _action_matches(actions, action):
    return any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _listed(actions))


def _resource_matches(resources, arn):
    return any(r == "*" or fnmatch.fnmatchcase(arn, r) for r in _listed(resources))


def policy_allows(policy_text, account, action, arn):
    """Whether a key policy lets ``account`` do ``action`` on the key ``arn`` (module docstring)."""
    try:
        policy = json.loads(policy_text or "{}")
    except ValueError:
        return False
    allowed = False
    for st in _listed(policy.get("Statement", [])):
        if not (_principal_matches(st.get("Principal"), account) and _action_matches(st.get("Action", []), action)
                and _resource_matches(st.get("Resource", "*"), arn)):
            continue
        if st.get("Effect") == "Deny":
            return False
        if st.get("Effect") == "Allow" and not st.get("Condition"):
            allowed = True
    return allowed


def _describe_key(self):
    from moto.kms.exceptions import AccessDeniedException, NotFoundException
    from moto.kms.models import kms_backends

    key_id = self._get_param("KeyId")
    parts = key_arn_parts(key_id)
    if not parts or parts[1] == self.current_account:
        return _ORIG["describe_key"](self)
    region, owner, raw = parts
    key = None
    if region == self.region and owner in kms_backends and region in kms_backends[owner]:
        key = kms_backends[owner][region].keys.get(raw)
    if key is None:
        raise NotFoundException("Key '%s' does not exist" % key_id)
    if not policy_allows(key.policy, self.current_account, "kms:DescribeKey", key.arn):
        raise AccessDeniedException(
            "User: arn:aws:iam::%s:root is not authorized to perform: kms:DescribeKey on resource: %s because no "
            "resource-based policy allows the kms:DescribeKey action" % (self.current_account, key.arn))
    return json.dumps(key.to_dict())


def install():
    """Patch moto's KMS DescribeKey (idempotent)."""
    if _ORIG:
        return
    from moto.kms.responses import KmsResponse

    _ORIG["describe_key"] = KmsResponse.describe_key
    KmsResponse.describe_key = _describe_key
