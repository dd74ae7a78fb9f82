# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EC2's API token buckets, for the strict endpoint (off until the control op ``buckets`` turns them on).

Source: "Request throttling for the Amazon EC2 API", Amazon EC2 developer guide,
https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html (also published as
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html). What it says and what is modelled:

* Throttling is per AWS account and per Region: every client of one account in one Region draws from the
  same buckets. Here a bucket is keyed by (account, region, action[, kind]); the account is the one moto
  maps the request's access key to (``moto.iam.models.get_account_id_from``), the Region the SigV4 scope's.
* Request rate limiting: each API action has its own bucket; a request takes one token. Buckets refill at
  a set rate up to their maximum capacity. Sizes/refill rates by category (the page's tables):
  non-mutating (``Describe*``, ``List*``, ``Search*``, ``Get*``) 100/20; unfiltered and unpaginated
  non-mutating (a subset, listed in ``UNFILTERED``, when called with neither a filter nor pagination:
  a smaller, separate bucket) 50/10; mutating (everything else) 50/5; resource-intensive (the page's list)
  50/5; uncategorized actions have their own numbers (``UNCATEGORIZED``: only those a test of this
  collection can meet). CreateSnapshot and CreateSnapshots are uncategorized, 100/5; CopySnapshot,
  AttachVolume, DetachVolume, StopInstances are plain mutating actions, 50/5.
* Resource rate limiting (``RESOURCE``): RunInstances 1000/2, TerminateInstances 1000/20, StartInstances
  1000/2, StopInstances 1000/20, a token per instance the request acts on, in addition to the request bucket.
* A request over any limit fails with ``RequestLimitExceeded`` (HTTP 503, the same document as the
  ``throttle`` fault) and takes no token from any bucket.

Choices where the page says nothing (README.md, "Token buckets"):

* refill is continuous (fractional tokens accrue with the clock) rather than whole tokens once a second;
* DryRun requests: the page does not say whether they take tokens; ``dry_run_consumes`` (default True)
  decides. With it, a DryRun can itself be answered RequestLimitExceeded (what a probe before freezing
  relies on);
* the filter/pagination test for the unfiltered bucket: any ``Filter.*``, ``MaxResults`` or ``NextToken``
  parameter (ids such as ``VolumeId.1`` are not filters);
* ``SnapshotCreationPerVolumeRateExceeded``: EC2's error-code reference says only to wait at least 15 s
  between concurrent snapshots of one volume, no rate. Modelled as at most one accepted CreateSnapshot(s)
  per volume per ``per_volume_interval`` seconds (default 15.0, 0 turns it off); HTTP 400.

The clock is ``time.monotonic`` plus an offset the control op can advance (``advance``), or any callable
given to :class:`Buckets` (unit tests).
"""

from __future__ import annotations

import re
import threading
import time

NON_MUTATING = (100, 20.0)
UNFILTERED_SIZE = (50, 10.0)
MUTATING = (50, 5.0)
RESOURCE_INTENSIVE_SIZE = (50, 5.0)

UNFILTERED = frozenset(["DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
                        "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
                        "DescribeVolumes"])
RESOURCE_INTENSIVE = frozenset(["AcceptVpcPeeringConnection", "AuthorizeSecurityGroupIngress",
                                "CancelSpotInstanceRequests", "CreateKeyPair", "CreateVpcPeeringConnection",
                                "DeleteVpcPeeringConnection", "RejectVpcPeeringConnection",
                                "RevokeSecurityGroupIngress", "RequestSpotInstances"])
# The page's "Uncategorized actions" table, the entries an EBS/instance workflow meets.
UNCATEGORIZED = {
    "CopyImage": (100, 1.0),
    "CreateSnapshot": (100, 5.0),
    "CreateSnapshots": (100, 5.0),
    "CreateTags": (100, 10.0),
    "CreateVolume": (100, 5.0),
    "DeleteSnapshot": (100, 5.0),
    "DeleteTags": (100, 10.0),
    "DeleteVolume": (100, 5.0),
    "DeregisterImage": (100, 5.0),
    "ModifySnapshotAttribute": (100, 5.0),
    "RunInstances": (5, 2.0),
    "StartInstances": (5, 2.0),
    "TerminateInstances": (100, 5.0),
}
# Resource token buckets: (size, refill) and how many resources a request acts on.
RESOURCE = {
    "RunInstances": (1000, 2.0),
    "TerminateInstances": (1000, 20.0),
    "StartInstances": (1000, 2.0),
    "StopInstances": (1000, 20.0),
}
SNAPSHOT_CREATING = frozenset(["CreateSnapshot", "CreateSnapshots"])
PER_VOLUME_INTERVAL = 15.0

REQUEST_LIMIT = ("RequestLimitExceeded", 503, "Request limit exceeded.")
PER_VOLUME = ("SnapshotCreationPerVolumeRateExceeded", 400,
              "The maximum per volume CreateSnapshot request rate has been exceeded. Use an increasing or variable "
              "sleep interval between requests.")
_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")


def category(action, params=None):
    """``(category, size, refill)`` of the request bucket that ``action`` (with ``params``) draws from."""
    params = params or {}
    if action in UNCATEGORIZED:
        return ("uncategorized",) + UNCATEGORIZED[action]
    if action in RESOURCE_INTENSIVE:
        return ("resource-intensive",) + RESOURCE_INTENSIVE_SIZE
    if action.startswith(("Describe", "List", "Search", "Get")):
        if action in UNFILTERED and not any(k.startswith("Filter.") or k in ("MaxResults", "NextToken")
                                            for k in params):
            return ("unfiltered-non-mutating",) + UNFILTERED_SIZE
        return ("non-mutating",) + NON_MUTATING
    return ("mutating",) + MUTATING


def resource_count(action, params):
    """How many resource tokens a request of ``action`` takes (0: no resource bucket)."""
    if action not in RESOURCE:
        return 0
    if action == "RunInstances":
        try:
            return max(1, int(params.get("MaxCount") or params.get("MinCount") or 1))
        except ValueError:
            return 1
    return max(1, sum(1 for k in params if k.startswith("InstanceId.")))


class Bucket:
    def __init__(self, size, refill, now):
        self.size = float(size)
        self.refill = float(refill)
        self.level = float(size)
        self.t = now

    def update(self, now):
        if now > self.t:
            self.level = min(self.size, self.level + (now - self.t) * self.refill)
        self.t = max(self.t, now)
        return self.level


class Buckets:
    """Every bucket of every (account, region). ``take`` is the WSGI hook; ``op`` the control operation."""

    def __init__(self, clock=None, account_of=None, volumes_of=None, default_account="123456789012",
                 default_region="eu-west-1"):
        self._clock = clock or time.monotonic
        self._account_of = account_of or _moto_account
        self._volumes_of = volumes_of or (lambda account, region, action, params: [])
        self.default_account = default_account
        self.default_region = default_region
        self._mu = threading.Lock()
        self.reset()

    def reset(self):
        with getattr(self, "_mu", threading.Lock()):
            self.on = False
            self.scale = 1.0
            self.overrides = {}
            self.dry_run_consumes = True
            self.per_volume_interval = PER_VOLUME_INTERVAL
            self.offset = 0.0
            self.buckets = {}
            self.last_snapshot = {}  # (account, region, volume) -> clock of the last accepted snapshot
            self.throttled = {}  # "action code" -> count

    def now(self):
        return self._clock() + self.offset

    def _spec(self, action, params, kind):
        if kind == "resource":
            size, refill = RESOURCE[action]
            name = "resource"
        else:
            name, size, refill = category(action, params)
        over = self.overrides.get(action + ("/resource" if kind == "resource" else ""))
        if over is None and kind == "request" and name == "unfiltered-non-mutating":
            over = self.overrides.get(action + "/unfiltered")
        if over is not None:
            return name, float(over[0]), float(over[1])
        return name, max(1.0, round(size * self.scale)), refill * self.scale

    def _bucket(self, account, region, action, params, kind, now):
        name, size, refill = self._spec(action, params, kind)
        key = (account, region, action, "unfiltered" if name == "unfiltered-non-mutating" else kind)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = Bucket(size, refill, now)
        b.size, b.refill = size, refill  # a changed scale/override applies from now on
        b.update(now)
        return key, b

    def take(self, environ, action, region, params, dry_run):
        """None if the request may go on (its tokens taken), else ``{"kind", "code", "status", "message"}``."""
        if not self.on or (dry_run and not self.dry_run_consumes) or not action:
            return None
        account = self._account_of(environ)
        volumes = []
        if action in SNAPSHOT_CREATING and not dry_run and self.per_volume_interval > 0:
            volumes = list(self._volumes_of(account, region, action, params))
        with self._mu:
            now = self.now()
            needs = [(self._bucket(account, region, action, params, "request", now)[1], 1.0)]
            count = resource_count(action, params)
            if count:
                needs.append((self._bucket(account, region, action, params, "resource", now)[1], float(count)))
            fault = None
            if any(b.level < n for b, n in needs):
                fault = REQUEST_LIMIT
            elif any(now - self.last_snapshot.get((account, region, v), -1e18) < self.per_volume_interval
                     for v in volumes):
                fault = PER_VOLUME
            if fault is not None:
                key = "%s %s" % (action, fault[0])
                self.throttled[key] = self.throttled.get(key, 0) + 1
                return {"kind": "bucket", "code": fault[0], "status": fault[1], "message": fault[2]}
            for b, n in needs:
                b.level -= n
            for v in volumes:
                self.last_snapshot[(account, region, v)] = now
        return None

    def op(self, on=None, scale=None, overrides=None, dry_run_consumes=None, per_volume_interval=None,
           levels=None, advance=None, region=None, account_id=None, reset=False):
        """The control op ``buckets``: change what is given, answer the state. ``overrides``:
        ``{action: [size, refill]}`` (``"<action>/resource"``, ``"<action>/unfiltered"`` for those buckets);
        ``levels``: ``{action: tokens}`` sets the current level of those request buckets of ``account_id``/``region``
        (default: the endpoint's), e.g. 0 to drain one; ``advance``: seconds added to the buckets' clock."""
        if reset:
            self.reset()
        with self._mu:
            if on is not None:
                self.on = bool(on)
            if scale is not None:
                if float(scale) <= 0:
                    raise ValueError("scale must be > 0")
                self.scale = float(scale)
            if overrides is not None:
                self.overrides = dict((k, (float(v[0]), float(v[1]))) for k, v in dict(overrides).items())
            if dry_run_consumes is not None:
                self.dry_run_consumes = bool(dry_run_consumes)
            if per_volume_interval is not None:
                self.per_volume_interval = max(0.0, float(per_volume_interval))
            if advance:
                self.offset += float(advance)
            now = self.now()
            for action, level in dict(levels or {}).items():
                kind = "resource" if action.endswith("/resource") else "request"
                name = action.split("/", 1)[0]
                params = {} if action.endswith("/unfiltered") else {"MaxResults": "5"}
                _key, b = self._bucket(account_id or self.default_account, region or self.default_region, name,
                                       params, kind, now)
                b.level = max(0.0, min(b.size, float(level)))
            return self.state(now)

    def state(self, now=None):
        now = self.now() if now is None else now
        levels = []
        for (account, region, action, kind), b in sorted(self.buckets.items()):
            levels.append({"account_id": account, "region": region, "action": action, "kind": kind,
                           "level": round(b.update(now), 3), "size": b.size, "refill": b.refill})
        return {"on": self.on, "scale": self.scale, "overrides": dict((k, list(v)) for k, v in self.overrides.items()),
                "dry_run_consumes": self.dry_run_consumes, "per_volume_interval": self.per_volume_interval,
                "clock": now, "levels": levels, "throttled": dict(self.throttled)}


def _moto_account(environ):
    m = _ACCESS_KEY.search(environ.get("HTTP_AUTHORIZATION", "") or "")
    if m is None:
        return "123456789012"
    from moto.iam.models import get_account_id_from
    return get_account_id_from(m.group(1))


def install(world):
    """Give ``world`` its buckets (``world.buckets``, off) and the control op ``buckets``."""
    def volumes_of(account, region, action, params):
        from moto.ec2.models import ec2_backends
        if action == "CreateSnapshot":
            return [params.get("VolumeId")] if params.get("VolumeId") else []
        with world.lock:
            try:
                instance = ec2_backends[account][region].get_instance(params.get("InstanceSpecification.InstanceId"))
            except Exception:  # unknown instance: moto answers the error itself
                return []
            exclude_boot = params.get("InstanceSpecification.ExcludeBootVolume", "").lower() == "true"
            excluded = set(v for k, v in params.items() if k.startswith("InstanceSpecification.ExcludeDataVolumeId"))
            out = []
            for device, bdm in instance.get_block_device_mapping:
                if (device == instance.root_device_name and exclude_boot) or bdm.volume_id in excluded:
                    continue
                out.append(bdm.volume_id)
            return out

    world.buckets = Buckets(account_of=_moto_account, volumes_of=volumes_of, default_account=world.account_id,
                            default_region=world.region)

    def op_buckets(**args):
        try:
            return world.buckets.op(**args)
        except ValueError as e:
            from ._world import ControlError
            raise ControlError("buckets: %s" % e)

    world.op_buckets = op_buckets
