# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The EC2 layer: EBS snapshot sets (one CreateSnapshots call per instance, all or nothing), the
catalog's reads and deletions, and the volume look-ups the restore and the swap share.

Every EC2 call's failure, botocore's own included, leaves here as a StillpointError that names the
call and what to check (:func:`aws_error`), never as a traceback.

The freeze is not done here: :class:`SnapshotSetRun` takes a *quiescer* (an object with
``freeze()`` and ``thaw()``) so that host mode (the guardian in this process's host) and
controller mode (the guardian on a remote host, driven by the action plugin) share one procedure.
"""

from __future__ import annotations

import random
import time

try:
    import botocore
    import botocore.parsers
except ImportError:
    pass  # the modules check HAS_BOTO3 through AnsibleAWSModule

from ansible_collections.amazon.aws.plugins.module_utils.retries import AWSRetry

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _catalog as catalog
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import lower_level

# Throttling. RequestLimitExceeded comes from the per-account token buckets; botocore and
# AWSRetry retry it. SnapshotCreationPerVolumeRateExceeded needs >= 15 s and no SDK retries it.
THROTTLE_CODES = ("RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException")
RATE_CODE = "SnapshotCreationPerVolumeRateExceeded"
RATE_BACKOFF = 15.0
TRANSIENT_CODES = ("InternalError", "InternalFailure", "Unavailable", "ServiceUnavailable")  # retried outside a freeze

# How many freeze-call-thaw cycles the set took (catalog tag, docs/catalog.md; docs/throttling.md).
K_FREEZE_CYCLES = "stillpoint:freeze-cycles"
REFILL_INTERVAL = 0.2  # one token of CreateSnapshots' documented refill (5 a second): the rest after a throttled probe
THROTTLE_HELP = ("EC2 throttles CreateSnapshots per account and Region (a bucket of 100 requests refilled at 5 a second, "
                 "shared by every client of the account; one snapshot per volume every ~15 s): run it again later, "
                 "spread the hosts' runs, or allow another freeze cycle with max_freeze_cycles (docs/throttling.md)")

# Calls made outside any freeze window retry the way amazon.aws modules do.
RETRY = AWSRetry.jittered_backoff(retries=10, delay=1, max_delay=30)


def no_retry_config():
    """botocore config for the CreateSnapshots call: botocore must not retry (and sleep) while frozen;
    a throttled call thaws first and the next cycle retries (CycleBackoff)."""
    return botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})


def error_code(exc):
    try:
        return exc.response["Error"]["Code"]
    except (AttributeError, KeyError, TypeError):
        return None


AWS_CHECK = "check endpoint_url, the credentials and the region"


def aws_errors():
    """Every exception an EC2 call can raise through botocore: the service's answer (ClientError),
    no answer at all (BotoCoreError: no network, a bad endpoint, no credentials) and an answer that
    is not EC2's (ResponseParserError)."""
    return (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError)


def aws_error(msg, exc):
    """A StillpointError for a failed EC2 call. ``msg`` names the call and what it was for; an
    error without a service answer (botocore's own) also says what to check."""
    code = error_code(exc)
    if code is None:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return StillpointError("%s: %s: %s (%s)" % (msg, type(exc).__name__, first, AWS_CHECK))
    return StillpointError("%s: %s" % (msg, exc), error_code=code)


class CycleBackoff:
    """Delays between freeze-call-thaw cycles when CreateSnapshots is throttled.

    We never sleep while frozen: a throttled call thaws first, then waits here, then freezes again.
    RequestLimitExceeded: exponential with equal jitter (half fixed, half random), from ``base``.
    SnapshotCreationPerVolumeRateExceeded: at least 15 s plus up to 5 s of jitter.
    """

    def __init__(self, base=0.5, cap=20.0, rate_backoff=RATE_BACKOFF, rng=None):
        self.base = base
        self.cap = cap
        self.rate_backoff = rate_backoff
        self.rng = rng or random.Random()
        self.attempt = 0

    def delay(self, code):
        self.attempt += 1
        if code == RATE_CODE:
            return self.rate_backoff + self.rng.uniform(0.0, 5.0)
        step = min(self.cap, self.base * (2 ** (self.attempt - 1)))
        return step / 2.0 + self.rng.uniform(0.0, step / 2.0)


# --------------------------------------------------------------------------- planning

def describe_instance(client, instance_id):
    try:
        res = client.describe_instances(InstanceIds=[instance_id], aws_retry=True)
    except aws_errors() as e:
        raise aws_error("DescribeInstances %s (check instance_id and region)" % instance_id, e)
    for reservation in res.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            return inst
    raise StillpointError("instance %s not found in this region" % instance_id)


def instance_for_volumes(client, volume_ids):
    """The one instance the given volumes are attached to (controller mode finds it this way)."""
    try:
        vols = client.describe_volumes(VolumeIds=list(volume_ids), aws_retry=True)["Volumes"]
    except aws_errors() as e:
        raise aws_error("DescribeVolumes %s (the instance they are attached to)" % ", ".join(volume_ids), e)
    instances = set()
    for vol in vols:
        for att in vol.get("Attachments", []):
            instances.add(att["InstanceId"])
    if len(instances) != 1:
        raise StillpointError(
            "volumes %s are attached to %s; a set is taken from exactly one instance"
            % (", ".join(volume_ids), ", ".join(sorted(instances)) or "no instance"))
    return instances.pop()


def plan_members(instance, include_volume_ids=None, exclude_volume_ids=(), exclude_boot_volume=True,
                 member_order=None):
    """Choose the members of a set among the instance's attached EBS volumes.

    ``include_volume_ids``: only these (all must be attached to the instance); ``None`` means all
    data volumes. The boot volume is excluded unless ``exclude_boot_volume`` is false (or it is
    explicitly included). Members are ordered by ``member_order`` (volume ids, e.g. an md array's
    order) when given, else by device name. Returns the plan dict used by :func:`create_call`.
    """
    root_name = instance.get("RootDeviceName")
    attached = []
    for bdm in instance.get("BlockDeviceMappings", []):
        ebs = bdm.get("Ebs") or {}
        if ebs.get("VolumeId"):
            attached.append({"volume_id": ebs["VolumeId"], "device": bdm.get("DeviceName"),
                             "boot": bdm.get("DeviceName") == root_name})
    by_id = dict((a["volume_id"], a) for a in attached)
    problems = []
    exclude = set(exclude_volume_ids or ())
    for vid in exclude:
        if vid not in by_id:
            problems.append("excluded volume %s is not attached to %s" % (vid, instance["InstanceId"]))
    if include_volume_ids is not None:
        chosen = []
        for vid in include_volume_ids:
            if vid not in by_id:
                problems.append("volume %s is not attached to %s" % (vid, instance["InstanceId"]))
            elif vid not in exclude and by_id[vid] not in chosen:
                chosen.append(by_id[vid])
    else:
        chosen = [a for a in attached if a["volume_id"] not in exclude and not (a["boot"] and exclude_boot_volume)]
    if problems:
        raise StillpointError("; ".join(problems) + ". Name volumes that are attached to this instance.")
    if not chosen:
        raise StillpointError("no volume left to snapshot on %s (boot volume excluded: %s, excluded: %s)"
                              % (instance["InstanceId"], exclude_boot_volume, ", ".join(sorted(exclude)) or "none"))
    if member_order:
        rank = dict((vid, i) for i, vid in enumerate(member_order))
        chosen.sort(key=lambda a: (rank.get(a["volume_id"], len(rank)), a["device"] or ""))
    else:
        chosen.sort(key=lambda a: a["device"] or "")
    chosen_ids = set(a["volume_id"] for a in chosen)
    boot = [a for a in attached if a["boot"]]
    include_boot = bool(boot) and boot[0]["volume_id"] in chosen_ids
    return {
        "instance_id": instance["InstanceId"],
        "availability_zone": (instance.get("Placement") or {}).get("AvailabilityZone"),
        "members": [{"index": i, "volume_id": a["volume_id"], "device": a["device"]} for i, a in enumerate(chosen)],
        "exclude_boot_volume": not include_boot,
        "exclude_data_volume_ids": sorted(a["volume_id"] for a in attached
                                          if not a["boot"] and a["volume_id"] not in chosen_ids),
    }


# --------------------------------------------------------------------------- the call

def create_call(client, plan, shared_tags, description=None, copy_tags_from_source=False, dry_run=False):
    """Exactly one CreateSnapshots call, no retry here (the caller thaws before any backoff)."""
    kwargs = {
        "DryRun": True if dry_run else None,
        "InstanceSpecification": {
            "InstanceId": plan["instance_id"],
            "ExcludeBootVolume": plan["exclude_boot_volume"],
        },
        "TagSpecifications": [{"ResourceType": "snapshot", "Tags": catalog.to_tag_list(shared_tags)}],
        "CopyTagsFromSource": "volume" if copy_tags_from_source else None,
        "Description": description,
    }
    if plan["exclude_data_volume_ids"]:
        kwargs["InstanceSpecification"]["ExcludeDataVolumeIds"] = plan["exclude_data_volume_ids"]
    kwargs = dict((k, v) for k, v in kwargs.items() if v is not None)
    return client.create_snapshots(**kwargs)["Snapshots"]


def match_members(plan, items):
    """Pair the call's snapshots with the planned members. Returns (members, unexpected_ids)."""
    by_volume = dict((it["VolumeId"], it) for it in items)
    members, missing = [], []
    for m in plan["members"]:
        it = by_volume.pop(m["volume_id"], None)
        if it is None:
            missing.append(m["volume_id"])
            continue
        members.append(dict(m, snapshot_id=it["SnapshotId"], state=it.get("State")))
    return members, missing, [it["SnapshotId"] for it in by_volume.values()]


# --------------------------------------------------------------------------- after the call

def tag(client, resource_ids, tags):
    try:
        client.create_tags(Resources=list(resource_ids), Tags=catalog.to_tag_list(tags), aws_retry=True)
    except aws_errors() as e:
        raise aws_error("CreateTags %s (%s)" % (", ".join(resource_ids), ", ".join(sorted(tags))), e)


def tag_members(client, members, per_member):
    """The members' own tags, one CreateTags each (only when the set's member map did not fit)."""
    for m in members:
        if m["index"] in per_member:
            tag(client, [m["snapshot_id"]], per_member[m["index"]])


def describe_snapshots(client, snapshot_ids=None, filters=None):
    """Our account's snapshots (OwnerIds=self), paginated."""
    kwargs = {"OwnerIds": ["self"]}
    if snapshot_ids:
        kwargs["SnapshotIds"] = list(snapshot_ids)
    if filters:
        kwargs["Filters"] = filters
    try:
        return paginate(client, "describe_snapshots", "Snapshots", **kwargs)
    except aws_errors() as e:
        what = "snapshots %s" % ", ".join(snapshot_ids) if snapshot_ids else "the backup catalog"
        raise aws_error("DescribeSnapshots (%s)" % what, e)


@RETRY
def paginate(client, operation, key, **kwargs):
    """Every item of a paginated Describe call (``key``: the list in its answer), with AWSRetry's retries."""
    return client.get_paginator(operation).paginate(**kwargs).build_full_result().get(key, [])


def catalog_snapshots(client, set_id=None, name=None, instance_id=None, group_id=None):
    """Snapshots of the catalog, narrowed server-side by tag filters where possible."""
    filters = [{"Name": "tag:%s" % catalog.K_CREATOR, "Values": [catalog.CREATOR]}]
    for key, value in ((catalog.K_SET_ID, set_id), (catalog.K_SET_NAME, name), (catalog.K_INSTANCE, instance_id),
                       (catalog.K_GROUP_ID, group_id)):
        if value:
            filters.append({"Name": "tag:%s" % key, "Values": [value]})
    return describe_snapshots(client, filters=filters)


def catalog_sets(client, set_id=None, name=None, instance_id=None, group_id=None):
    """The catalog's set records (:func:`_catalog.group_sets`), newest first, narrowed like :func:`catalog_snapshots`."""
    return catalog.select_sets(catalog.group_sets(catalog_snapshots(client, set_id=set_id, name=name,
                                                                    instance_id=instance_id, group_id=group_id)),
                               set_id=set_id)


# --------------------------------------------------------------------------- volumes

FILTER_CHUNK = 100  # values per DescribeVolumes filter (EC2 allows 200)


def describe_volumes(client, filters=None, volume_ids=None):
    """DescribeVolumes items (paginated). ``volume_ids`` go in ``volume-id`` filters (in chunks), so that a
    missing id is simply absent instead of failing the call with InvalidVolume.NotFound."""
    filters = list(filters or [])
    if volume_ids is None:
        chunks, what = [filters], "volumes by tag"
    else:
        ids = sorted(set(v for v in volume_ids if v))
        chunks = [filters + [{"Name": "volume-id", "Values": ids[i:i + FILTER_CHUNK]}]
                  for i in range(0, len(ids), FILTER_CHUNK)]
        what = ", ".join(ids)
    out = {}
    try:
        for chunk in chunks:
            for vol in paginate(client, "describe_volumes", "Volumes", Filters=chunk):
                out[vol["VolumeId"]] = vol
    except aws_errors() as e:
        raise aws_error("DescribeVolumes (%s)" % what, e)
    return list(out.values())


def wait_volumes(client, volume_ids, check, timeout, interval=1.0, sleep=time.sleep, clock=time.monotonic):
    """Poll DescribeVolumes every ``interval`` seconds until ``check({volume_id: volume or None})`` answers
    something other than None; returns ``(answer, view)``, or ``(None, view)`` once ``timeout`` has passed.

    We poll ourselves instead of amazon.aws's or botocore's VolumeAvailable/VolumeInUse waiters: those
    sleep 15 s between checks (every wait would add up to 15 s of downtime), and VolumeInUse is satisfied
    by ``in-use`` while the attachment is still ``attaching``. ``check`` may raise to stop early.
    """
    start = clock()
    ids = list(dict.fromkeys(volume_ids))
    while True:
        found = dict((v["VolumeId"], v) for v in describe_volumes(client, volume_ids=ids))
        view = dict((vid, found.get(vid)) for vid in ids)
        answer = check(view)
        if answer is not None:
            return answer, view
        remaining = timeout - (clock() - start)
        if remaining <= 0:
            return None, view
        sleep(min(interval, remaining))


def poll(client, snapshot_ids):
    """Current state of the given snapshots; ids that no longer exist are simply absent.

    A ``snapshot-id`` filter rather than ``SnapshotIds``: the latter fails the whole call with
    InvalidSnapshot.NotFound as soon as one of the ids is gone.
    """
    snaps = describe_snapshots(client, filters=[{"Name": "snapshot-id", "Values": list(snapshot_ids)}])
    return dict((s["SnapshotId"], s) for s in snaps)


def wait_for(client, snapshot_ids, timeout, interval=15.0, on_progress=None, sleep=time.sleep, clock=time.monotonic):
    """Poll until every snapshot is ``completed``; stop at the first ``error``.

    Returns ``(status, samples)`` with status ``completed``, ``error`` or ``timeout`` and
    ``samples`` = ``[{"elapsed_s", "progress": {snapshot_id: "NN%"}, "states": {...}}]``.
    """
    start = clock()
    samples = []
    while True:
        snaps = poll(client, snapshot_ids)
        missing = [sid for sid in snapshot_ids if sid not in snaps]
        states = dict((sid, snaps[sid]["State"]) for sid in snapshot_ids if sid in snaps)
        for sid in missing:
            states[sid] = "missing"
        sample = {
            "elapsed_s": round(clock() - start, 1),
            "progress": dict((sid, snaps[sid].get("Progress") or "") for sid in snapshot_ids if sid in snaps),
            "states": states,
        }
        samples.append(sample)
        if on_progress:
            on_progress(sample)
        if any(s in ("error", "missing") for s in states.values()):
            return "error", samples
        if all(s == "completed" for s in states.values()):
            return "completed", samples
        remaining = timeout - (clock() - start)
        if remaining <= 0:
            return "timeout", samples
        sleep(min(interval, remaining))


def delete_ours(client, snapshot_ids):
    """Delete snapshots, but only those carrying our creator marker. Returns (deleted, failed)."""
    deleted, failed = [], []
    if not snapshot_ids:
        return deleted, failed
    snaps = poll(client, snapshot_ids)
    for sid in snapshot_ids:
        snap = snaps.get(sid)
        if snap is None:
            continue  # already gone
        if not catalog.is_ours(snap):
            failed.append({"snapshot_id": sid, "error": "not created by stillpoint.snapshots: refused"})
            continue
        try:
            client.delete_snapshot(SnapshotId=sid, aws_retry=True)
            deleted.append(sid)
        except aws_errors() as e:
            if error_code(e) != "InvalidSnapshot.NotFound":  # gone meanwhile: nothing left to delete
                failed.append({"snapshot_id": sid, "error": str(e) if error_code(e) else aws_error("DeleteSnapshot", e).msg})
    return deleted, failed


def rollback(client, snapshot_ids):
    """All or nothing: delete the set; whatever cannot be deleted is tagged ``partial``."""
    deleted, failed = delete_ours(client, snapshot_ids)
    leftover = [f["snapshot_id"] for f in failed]
    if leftover:
        try:
            client.create_tags(Resources=leftover, Tags=[{"Key": catalog.K_STATE, "Value": "partial"}], aws_retry=True)
        except aws_errors():
            pass  # reported as left_partial all the same; the catalog derives partial from the members
    return {"deleted": deleted, "left_partial": leftover, "errors": failed}


# --------------------------------------------------------------------------- the procedure

class NoQuiesce:
    """Nothing to freeze: crash-consistent, unless the data was quiesced before (``level``)."""

    def __init__(self, level="crash"):
        self.level = level

    def freeze(self):
        return {"mounts": []}

    def thaw(self):
        return {"mounts": [], "window_ms": 0.0, "deadline_thawed": False}


class SnapshotSetRun:
    """Freeze -> one CreateSnapshots -> thaw -> tag -> (wait -> mark complete), all or nothing.

    ``quiescer``: object with ``level`` (what a successful freeze gives: filesystem or
    application), ``freeze()`` and ``thaw()`` (see _freeze.Guardian). ``hooks``: object with
    ``pre()`` (returns True when the application is quiesced) and ``post()``; may be None.
    """

    def __init__(self, client, plan, set_id, name=None, host=None, description=None, copy_tags_from_source=False,
                 procedure="ebs_snapshot_set", array=None, mountpoints_by_volume=None, extra_tags=None,
                 max_cycles=1, backoff=None, sleep=time.sleep, log=None, call_client=None, throttle_wait=60.0,
                 clock=time.monotonic):
        self.client = client
        self.call_client = call_client or client
        self.plan = plan
        self.set_id = set_id
        self.name = name
        self.host = host
        self.description = description or "stillpoint.snapshots set %s" % set_id
        self.copy_tags_from_source = copy_tags_from_source
        self.procedure = procedure
        self.array = array
        self.mountpoints_by_volume = mountpoints_by_volume or {}
        self.extra_tags = extra_tags or {}
        self.max_cycles = max(1, int(max_cycles or 1))
        self.throttle_wait = max(0.0, float(throttle_wait or 0.0))
        self.clock = clock
        self.probes = []  # each DryRun before a freeze: {"cycle", "attempts", "throttled", "waited_s"}
        self.backoff = backoff or CycleBackoff()
        self.sleep = sleep
        self.log = log or (lambda msg: None)
        self.create_calls = 0
        self.call_ms = None
        self.cycles = []

    def _shared_tags(self, level, freeze_ms=None, state="pending"):
        """The tags every member gets at its creation (CreateSnapshots' TagSpecifications, sent inside the freeze).

        The array descriptor is not among them (:meth:`array_tags`): it names every member, so in the call it
        would be sent, stored and answered once per member, and the call inside the freeze would grow with the
        square of the member count (16 filesystems: 7 tags of 1.7 KB on each of 16 snapshots)."""
        tags = dict(self.extra_tags)
        tags.update(catalog.set_tags(
            self.set_id, self.name, len(self.plan["members"]), self.plan["instance_id"],
            self.plan["availability_zone"], self.host, level, state=state, freeze_ms=freeze_ms,
            procedure=self.procedure))
        return tags

    def array_tags(self):
        """The array descriptor's tags, written once for all members by the CreateTags after the thaw that also
        rewrites the level, before the members' own tags (a set whose run died before them is never complete)."""
        return catalog.encode_json(catalog.K_ARRAY, self.array) if self.array else {}

    def member_tag_sets(self):
        """``(map_tags, per_member)``: the set's member map, written with the level after the thaw (one CreateTags
        for all members), and no per-member tags; or, when the map would not fit the catalog, no map and one tag
        set per member index (one CreateTags each). Refuses oversized values before anything is frozen."""
        return catalog.member_catalog_tags([(m["index"], m["device"], m["volume_id"],
                                            self.mountpoints_by_volume.get(m["volume_id"], ())) for m in self.plan["members"]])

    def preflight(self, shared, cycle=1):
        """CreateSnapshots with DryRun, before anything is frozen: the probe before each freeze.

        EC2 checks permissions and parameters and answers DryRunOperation; a refusal
        (UnauthorizedOperation, a bad parameter) surfaces now, with nothing frozen. It also readies the
        client (connection, operation model, serializer), so the real call inside the window costs
        one round trip and nothing more. A throttled DryRun (RequestLimitExceeded: no token in the
        account's CreateSnapshots bucket right now) is retried here, outside any freeze, with jittered
        back-off for at most ``throttle_wait`` seconds; then the run refuses with nothing frozen.
        Whether EC2 charges DryRun requests to the bucket is not documented: where it does not, the probe
        only checks permissions (docs/throttling.md).
        """
        start = self.clock()
        probe = {"cycle": cycle, "attempts": 0, "throttled": 0, "waited_s": 0.0}
        self.probes.append(probe)
        backoff = CycleBackoff(base=0.25, cap=4.0, rng=getattr(self.backoff, "rng", None))
        while True:
            probe["attempts"] += 1
            try:
                create_call(self.call_client, self.plan, shared, self.description, self.copy_tags_from_source,
                            dry_run=True)
            except aws_errors() as e:
                code = error_code(e)
                if code == "DryRunOperation":
                    if probe["throttled"]:  # the bucket was empty: the probe may have taken the token it saw
                        self.sleep(max(0.0, min(REFILL_INTERVAL, self.throttle_wait - (self.clock() - start))))
                    probe["waited_s"] = round(self.clock() - start, 3)
                    return
                if code is None:
                    raise aws_error("CreateSnapshots with DryRun (the check before the freeze) got no answer; nothing "
                                    "was frozen or created", e)
                if code not in THROTTLE_CODES + TRANSIENT_CODES and code != RATE_CODE:
                    raise aws_error("CreateSnapshots would be refused (checked with DryRun; nothing was frozen or "
                                    "created)", e)
                probe["throttled"] += 1
                remaining = self.throttle_wait - (self.clock() - start)
                if remaining <= 0:
                    err = aws_error("CreateSnapshots with DryRun still throttled (%s) after waiting %.1f s "
                                    "(throttle_wait) before freezing; nothing was frozen or created. %s"
                                    % (code, self.clock() - start, THROTTLE_HELP), e)
                    err.details.update(self.throttle_details())
                    raise err
                self.sleep(min(remaining, backoff.delay(code)))
                continue
            raise StillpointError("CreateSnapshots with DryRun did not answer DryRunOperation; this endpoint does not "
                                  "honour DryRun, refusing to go on (it may have created snapshots: check the catalog)")

    def take(self, quiescer, intended_level, preflight=True, max_cycles=None, held=False):
        """Run freeze-call-thaw cycles until one call succeeds; returns the result record.

        A throttled call is never retried while frozen: the run thaws, and refuses (nothing created) unless
        ``max_cycles`` allows another cycle; then it backs off, probes with DryRun (:meth:`preflight`) until
        a request gets through, all outside the freeze, and freezes again. Any other failure thaws and raises;
        nothing was created by a failed call. With ``held`` (an application quiescer holds its lock around
        this call) a throttled call is not retried: the application is never held through a back-off.
        """
        max_cycles = 1 if held else (max_cycles or self.max_cycles)
        last_error = None
        shared = self._shared_tags(intended_level)  # built (and checked) before anything is frozen
        if preflight:
            self.preflight(shared)
        for cycle in range(1, max_cycles + 1):
            if cycle > 1:
                self.preflight(shared, cycle)  # a token now? (outside the freeze)
            shared = dict(shared, **{K_FREEZE_CYCLES: str(cycle)})  # the cycle the call is made in
            froze = quiescer.freeze()
            items, err = None, None
            t_call = time.monotonic()
            try:
                items = create_call(self.call_client, self.plan, shared, self.description,
                                    self.copy_tags_from_source)
            except aws_errors() as e:
                err = e
            finally:
                self.call_ms = round((time.monotonic() - t_call) * 1000.0, 3)
                self.create_calls += 1
                if hasattr(quiescer, "called"):  # a group member holds its freeze only after a call that worked
                    quiescer.called(err is None)
                thawed = quiescer.thaw()
            self.cycles.append({"cycle": cycle, "freeze": froze, "thaw": thawed, "call_ms": self.call_ms,
                                "error": error_code(err) if err is not None else None})
            if err is None:
                return items, froze, thawed
            code = error_code(err)
            last_error = err
            if code is None:  # no answer: the request may or may not have reached EC2
                raise aws_error("CreateSnapshots for %s got no answer (filesystems thawed); if the request reached EC2, "
                                "its snapshots carry stillpoint:set-id=%s (backup_set_info shows them, "
                                "backup_set_prune deletes them)" % (self.plan["instance_id"], self.set_id), err)
            if code not in THROTTLE_CODES and code != RATE_CODE:
                raise aws_error("CreateSnapshots failed for %s (filesystems thawed, nothing created)"
                                % self.plan["instance_id"], err)
            if held:
                error = aws_error("CreateSnapshots throttled (%s) while the application was held; not retried, so "
                                  "that the application is not held through a back-off (filesystems thawed, the "
                                  "application released, nothing created): run it again later" % code, err)
                error.details.update(self.throttle_details())
                raise error
            if cycle >= max_cycles:
                break
            delay = self.backoff.delay(code)
            self.log("CreateSnapshots throttled (%s), thawed; freezing again after %.1f s and a DryRun probe"
                     % (code, delay))
            self.sleep(delay)
        error = aws_error("CreateSnapshots throttled (%s) in freeze cycle %d of %d (max_freeze_cycles): not retried "
                          "while frozen; filesystems thawed, nothing created. %s"
                          % (error_code(last_error), len(self.cycles), max_cycles, THROTTLE_HELP), last_error)
        error.details.update(self.throttle_details())
        raise error

    def freeze_intervals(self):
        """Each cycle's frozen interval (the quiescer's ``frozen_at``/``thawed_at``, CLOCK_MONOTONIC when a
        guardian froze) and how its call ended."""
        return [{"cycle": c["cycle"], "frozen_at": (c["thaw"] or {}).get("frozen_at", (c["freeze"] or {}).get("frozen_at")),
                 "thawed_at": (c["thaw"] or {}).get("thawed_at"), "window_ms": (c["thaw"] or {}).get("window_ms"),
                 "call_ms": c["call_ms"], "error": c["error"]} for c in self.cycles]

    def throttle_details(self):
        return {"freeze_cycles": len(self.cycles), "freeze_intervals": self.freeze_intervals(), "probes": self.probes,
                "create_calls": self.create_calls}

    def run(self, quiescer, hooks=None, wait=True, wait_timeout=14400, poll_interval=15.0, on_progress=None):
        result = {"set_id": self.set_id, "instance_id": self.plan["instance_id"], "warnings": []}
        level = quiescer.level
        map_tags, member_tags = self.member_tag_sets()  # refuse oversized tags before anything is frozen
        array_tags = self.array_tags()
        actions = []  # the hooks, in the Recorder's shape (_common.Recorder) with their output
        held = getattr(hooks, "held", False)  # an application quiescer holding its lock (_app_quiesce)
        pre_ok = True
        # a held quiescer's intended level is claimed only once it confirmed its lock (retagged below)
        intended = lower_level(level, "filesystem") if held else level
        self.preflight(self._shared_tags(intended))  # before the application is held, not while
        if hooks is not None:
            pre_ok, report = hooks.pre()
            if report:
                actions.append(report if held else dict(report, what="pre-freeze hook", planned=False))
            if not pre_ok:
                level = lower_level(level, "filesystem")
                result["warnings"].append("%s failed; the set is recorded at level %s"
                                          % ("the application's lock" if held else "pre-freeze hook", level))
        try:
            items, froze, thawed = self.take(quiescer, intended if held else level, preflight=False,
                                             held=held and pre_ok)
        finally:
            if hooks is not None:
                okp, report = hooks.post()
                if report:
                    actions.append(report if held else dict(report, what="post-thaw hook", planned=False))
                if not okp and not held:
                    result["warnings"].append("post-thaw hook failed: check the application")
        app_tags = {}
        if held:
            result["application"] = hooks.summary()
            if pre_ok and not hooks.confirmed:
                why = "the application's lock was not confirmed held through the call: %s" % hooks.problem
                if hooks.on_failure == "abort":
                    members, missing, unexpected = match_members(self.plan, items)
                    rb = rollback(self.client, [m["snapshot_id"] for m in members] + unexpected)
                    raise StillpointError("%s; the set was rolled back (on_quiesce_failure=abort)" % why,
                                          rollback=rb, application=result["application"], actions=actions)
                level = lower_level(level, "filesystem")
                result["warnings"].append("%s; the set is recorded at level %s" % (why, level))
            app_tags = catalog.encode_json(catalog.K_APP, hooks.catalog_record(), what="application record")
        if thawed.get("deadline_thawed"):
            level = "crash"
            result["warnings"].append(
                "the freeze outlived its deadline and the guardian thawed before the call returned; "
                "the set is recorded as crash-consistent")
        members, missing, unexpected = match_members(self.plan, items)
        all_ids = [m["snapshot_id"] for m in members] + unexpected
        if missing or unexpected:
            rb = rollback(self.client, all_ids)
            raise StillpointError(
                "CreateSnapshots returned a different set than planned (missing volumes: %s, unexpected "
                "snapshots: %s); the set was rolled back" % (", ".join(missing) or "none", ", ".join(unexpected) or "none"),
                rollback=rb)
        freeze_ms = thawed.get("window_ms", 0.0)
        try:
            # one CreateTags for every member: the level reached, the array descriptor and the member map together.
            # Until it lands the members have no index, and such a set is never complete (catalog._evaluate), so no
            # set is complete without its descriptor. A group member's own record (_group.GroupQuiescer) rides on
            # it too. Only a map too large for the catalog falls back to the members' own tags, after it.
            after = dict(app_tags, **(quiescer.catalog_tags() if hasattr(quiescer, "catalog_tags") else {}))
            after.update(array_tags)
            after.update(map_tags)
            tag(self.client, all_ids, dict(after, **{catalog.K_LEVEL: level, catalog.K_FREEZE_MS: "%.3f" % freeze_ms}))
            tag_members(self.client, members, member_tags)
        except StillpointError as e:
            e.details["rollback"] = rollback(self.client, all_ids)
            e.msg += "; the set was rolled back"
            raise
        result.update({
            "level": level, "freeze": froze, "thaw": thawed, "freeze_window_ms": freeze_ms,
            "members": members, "snapshot_ids": all_ids, "create_calls": self.create_calls,
            "call_ms": self.call_ms,
            "cycles": len(self.cycles), "freeze_cycles": len(self.cycles), "probes": self.probes,
            "freeze_intervals": self.freeze_intervals(),
            "actions": actions, "state": "pending",
        })
        if wait:
            result.update(finish(self.client, all_ids, wait_timeout, poll_interval, on_progress, self.sleep))
        return result


def finish(client, snapshot_ids, wait_timeout, poll_interval=15.0, on_progress=None, sleep=time.sleep):
    """Wait for the members, then mark the set complete; on error roll back (all or nothing)."""
    status, samples = wait_for(client, snapshot_ids, wait_timeout, poll_interval, on_progress, sleep)
    out = {"progress": samples}
    if status == "completed":
        tag(client, snapshot_ids, {catalog.K_STATE: "complete"})
        out["state"] = "complete"
        return out
    if status == "timeout":
        out["state"] = "pending"
        out["timed_out"] = True
        return out
    failed = dict((sid, st) for sid, st in samples[-1]["states"].items() if st != "completed")
    raise failed_set(client, snapshot_ids, ", ".join("%s is %s" % kv for kv in sorted(failed.items())),
                     progress=samples)


def failed_set(client, snapshot_ids, why, **details):
    """All or nothing: roll the set back and return the error that says so."""
    rb = rollback(client, snapshot_ids)
    return StillpointError(
        "snapshot set failed: %s; the whole set was %s" % (
            why, "deleted" if not rb["left_partial"] else "deleted except %s, tagged partial" % ", ".join(rb["left_partial"])),
        rollback=rb, **details)


def existing_set(client, set_id, check_mode=False, wait=True, wait_timeout=14400, poll_interval=15.0,
                 on_progress=None):
    """A re-run naming a known set id: report it, or keep waiting for it. None if it does not exist."""
    records = catalog_sets(client, set_id=set_id)
    if not records:
        return None
    rec = records[0]
    out = dict(changed=False, set_id=set_id, state=rec["state"], level=rec["level"], instance_id=rec["instance_id"],
               members=rec["members"], snapshot_ids=rec["snapshot_ids"], actions=[])
    if rec["state"] == "complete":
        out["msg"] = "set %s already exists and is complete" % set_id
        return out
    if rec["state"] == "partial" and "partial" not in rec["marked"] and wait and not check_mode:
        # A set still marked pending whose members failed (a run waiting on it, or a run that died
        # while waiting): all or nothing, as when the failure is seen during the wait itself.
        raise failed_set(client, rec["snapshot_ids"], "%s (set %s)" % ("; ".join(rec["problems"]), set_id))
    if rec["state"] == "partial":
        raise StillpointError("set %s exists and is partial (%s); it is not a valid backup. Take a new set "
                              "(omit set_id) and prune the partial one" % (set_id, "; ".join(rec["problems"])),
                              set=rec)
    if check_mode or not wait:
        return out
    out.update(finish(client, rec["snapshot_ids"], wait_timeout, poll_interval, on_progress))
    out["changed"] = out["state"] == "complete"
    return out
