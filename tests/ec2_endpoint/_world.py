# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the endpoint adds to moto, inside the server process.

``install()`` makes moto's EBS models stricter (each point below is a gap verified against
moto 5.2.5, see README.md):

* snapshots stay ``pending`` with a rising ``Progress`` for a configurable time, then turn
  ``completed`` (or ``error`` when marked to fail); the state is computed from the monotonic clock
  whenever it is read, so DescribeSnapshots and its ``status`` filter see it without any thread;
* CreateSnapshots honours ExcludeDataVolumeIds and CopyTagsFromSource, and its items carry State;
* AttachVolume refuses another AZ, a device name in use, a volume in use; DetachVolume refuses an
  InstanceId or Device that does not match; both pass through ``attaching``/``detaching``;
* DescribeSnapshots honours OwnerIds (``self``) and MaxResults/NextToken; DeleteSnapshot and
  CreateTags/DeleteTags refuse snapshots of other accounts; CreateVolume refuses a snapshot that is
  not ``completed``;
* CopySnapshot (called in the destination region) needs a ``completed`` source, finds another
  account's snapshot only when it is shared with the caller, checks KmsKeyId/Encrypted and
  CompletionDurationMinutes as EC2 does, and its copy is ``pending`` with progress (``fail_copy``);
* volumes can be backed by a host file; snapshots copy it (sparse) as of the call, volumes created
  from such a snapshot get their own copy;
* instances marked local (``op_make_local``) get their file-backed volumes as loop devices on this
  host, with the by-id link a Nitro instance would have (``_local.py``); a detach waits while the
  device is in use (attachment ``busy``) unless forced;
* instances made qemu instances (``op_make_qemu``) are real VMs of the lab (``_qemu.py``): volumes
  are hot-plugged as NVMe disks, snapshots of their disks are qemu backup jobs (point in time at
  the call, ``pending`` with the job's real progress), Stop/Start/TerminateInstances power the VM
  off, boot it, kill it, with ``stopping``/``pending``/``shutting-down`` while that happens.

``World`` holds the endpoint's own state (faults, latencies, the call log, the files) and the
control operations (``op_*``) that the WSGI layer exposes under ``/_stillpoint/``.

Everything that touches moto's models runs under ``World.lock`` (the WSGI layer holds it around
each EC2 request), so the models are never seen half-changed.
"""

from __future__ import annotations

import collections
import copy
import itertools
import os
import secrets
import shutil
import threading
import time

from moto.core.base_backend import BackendDict
from moto.core.model_instances import reset_model_data
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot, Volume, VolumeAttachment
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.models.tags import TagBackend
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix, random_snapshot_id, random_volume_id

from . import _buckets, _local, _qemu
from ._sparse import sparse_copy

ACCOUNT_ID = "123456789012"
FOREIGN_ACCOUNT_ID = "210987654321"
SNAPSHOT_ACTIONS = frozenset(["CreateSnapshot", "CreateSnapshots", "CopySnapshot"])

# HTTP status and message of the throttling errors, as EC2 sends them.
ERROR_STATUS = {"RequestLimitExceeded": 503, "SnapshotCreationPerVolumeRateExceeded": 400,
                "InternalError": 500, "Unavailable": 503, "ServiceUnavailable": 503}
ERROR_MESSAGES = {
    "RequestLimitExceeded": "Request limit exceeded.",
    "SnapshotCreationPerVolumeRateExceeded": "The maximum per volume CreateSnapshot request rate has been "
                                             "exceeded. Use an increasing or variable sleep interval between "
                                             "requests.",
    "InternalError": "An internal error has occurred.",
}
FAIL_MESSAGE = "Snapshot failed (injected by the stillpoint test endpoint)"

CTX = threading.local()  # action, internal, pending, params, backend of the EC2 request being served
WORLD = None  # the World of this process (the model patches need it)


class ControlError(Exception):
    """A control request that cannot be done; the message goes back to the caller (HTTP 400)."""


def _ctx(name, default=None):
    return getattr(CTX, name, default)


def _api_call(action):
    """True while serving a client's (not the endpoint's own) EC2 request for ``action``."""
    return _ctx("action") == action and not _ctx("internal")


def _err(code, message):
    return EC2ClientError(code, message)


# --------------------------------------------------------------------------- snapshot lifecycle

def _snap_status(self):
    d = self.__dict__
    job = d.get("_sp_qemu")
    if job is not None:  # copied by a qemu backup job: pending until it concluded
        if not job.done:
            return "pending"
        return "error" if job.error or d.get("_sp_fail") else "completed"
    t0 = d.get("_sp_t0")
    if t0 is None:
        return d.get("_sp_status", "completed")
    if time.monotonic() - t0 < d.get("_sp_pending", 0.0):
        return "pending"
    return "error" if d.get("_sp_fail") else "completed"


def _snap_set_status(self, value):
    self.__dict__["_sp_status"] = value


def _snap_progress(self):
    status = self.status
    if status == "completed":
        return "100%"
    d = self.__dict__
    if d.get("_sp_qemu") is not None:
        return "%d%%" % min(99, d["_sp_qemu"].progress())
    pending = d.get("_sp_pending") or 0.0
    if status == "pending" and pending > 0:
        pct = int(100 * (time.monotonic() - d["_sp_t0"]) / pending)
        return "%d%%" % max(0, min(99, pct))
    return "99%" if status == "error" else "0%"


def _snap_state_message(self):
    if self.status != "error":
        return None
    job = self.__dict__.get("_sp_qemu")
    return (job.error if job is not None else None) or self.__dict__.get("_sp_message") or FAIL_MESSAGE


def _snap_begin(snap, pending, fail=None, message=None):
    """(Re)start the pending period of ``snap`` now."""
    snap._sp_t0 = time.monotonic()
    snap._sp_pending = max(0.0, float(pending))
    if fail is not None:
        snap._sp_fail = bool(fail)
        snap._sp_message = message


# --------------------------------------------------------------------------- model patches

_ORIG = {}


def _snapshot_init(self, *args, **kwargs):
    _ORIG["Snapshot.__init__"](self, *args, **kwargs)
    if _ctx("action") in SNAPSHOT_ACTIONS:
        _snap_begin(self, _ctx("pending", 0.0))


def _create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
    snap = _ORIG["create_snapshot"](self, volume_id, description, owner_id=owner_id, from_ami=from_ami)
    source = getattr(snap.volume, "_sp_file", None)
    if source and WORLD.qemu.vms:
        q, disk = WORLD.qemu.backup_disk(snap.volume)
        if disk is not None:  # plugged into a running VM: a qemu backup job copies it
            snap._sp_qemu_disk = (q, disk)
            batch = _ctx("qemu_batch")
            if batch is not None:
                batch.append(snap)  # CreateSnapshots: one transaction for all members, at the end
            else:
                WORLD.start_qemu_backups([snap])
            return snap
    if source:
        try:
            snap._sp_file = WORLD.copy_in(source, "snapshots", snap.id)
        except OSError as e:
            self.snapshots.pop(snap.id, None)
            raise _err("InternalError", "stillpoint test endpoint: cannot copy %s, the backing file of %s: %s"
                       % (source, volume_id, e))
    return snap


def _create_snapshots(self, instance_spec, description, tags, copy_tags_from_source=None):
    instance = self.get_instance(instance_spec["InstanceId"])
    exclude_boot = str(instance_spec.get("ExcludeBootVolume", False)).lower() == "true"
    exclude_ids = list(instance_spec.get("ExcludeDataVolumeIds") or [])
    if len(exclude_ids) > 40:
        raise _err("InvalidParameterValue", "You can specify up to 40 volume IDs in ExcludeDataVolumeIds.")
    mappings = instance.get_block_device_mapping
    for volume_id in exclude_ids:
        self.get_volume(volume_id)  # InvalidVolume.NotFound
        for device, bdm in mappings:
            if bdm.volume_id == volume_id and device == instance.root_device_name:
                raise _err("InvalidParameterValue",
                           "The root volume %s cannot be excluded with ExcludeDataVolumeIds; use ExcludeBootVolume."
                           % volume_id)
    volume_ids = []
    for device, bdm in mappings:
        if device == instance.root_device_name:
            if exclude_boot:
                continue
        elif bdm.volume_id in exclude_ids:
            continue
        volume_ids.append(bdm.volume_id)
    batch = CTX.qemu_batch = []
    try:
        snaps = [self.create_snapshot(volume_id, description) for volume_id in volume_ids]
    finally:
        CTX.qemu_batch = None
        if batch:
            WORLD.start_qemu_backups(batch)
    for snap in snaps:
        # one point in time for the whole set
        snap.start_time = snaps[0].start_time
        if "_sp_t0" in snaps[0].__dict__:
            snap._sp_t0 = snaps[0]._sp_t0
        if str(copy_tags_from_source or "").lower() == "volume":
            source_tags = self.tags.get(snap.volume.id, {})
            snap.add_tags(dict((k, v) for k, v in source_tags.items() if not k.startswith("aws:")))
        snap.add_tags(tags)
    failing = WORLD.take_fail_member() if not _ctx("internal") else None
    if failing is not None:
        k, message = failing
        if 0 <= k < len(snaps):
            snaps[k]._sp_fail = True
            snaps[k]._sp_message = message
    return snaps


def _copy_source(backend, source_snapshot_id, source_region):
    """The snapshot a CopySnapshot call in ``backend`` (the caller's account, the destination region)
    may copy: the caller's own in ``source_region``, or another account's there that is shared with
    the caller (createVolumePermission for its account id or ``all``). EC2 answers
    InvalidSnapshot.NotFound for a snapshot the caller may not see (plain moto looks only in the
    caller's own account, so it never finds another account's snapshot, shared or not)."""
    missing = _err("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist." % source_snapshot_id)
    for account_id, accounts in list(dict.items(ec2_backends)):
        regional = dict.get(accounts, source_region)
        if regional is None and account_id == backend.account_id:
            try:
                regional = ec2_backends[account_id][source_region]
            except KeyError:  # not a region
                raise missing
        snap = regional.snapshots.get(source_snapshot_id) if regional is not None else None
        if snap is None:
            continue
        if snap.owner_id == backend.account_id:
            return snap
        shared = (backend.account_id in snap.create_volume_permission_userids
                  or "all" in snap.create_volume_permission_groups)
        if not shared:
            raise missing
        return snap
    raise missing


def _copy_snapshot(self, source_snapshot_id, source_region, description, kms_key_id):
    """CopySnapshot as EC2 does it (moto: any source state, no other account, no checks of the
    encryption and time-based parameters, ``completed`` at once): called in the destination region
    with SourceRegion; the source must be ``completed``; a snapshot of another account only once it
    is shared with the caller; KmsKeyId needs Encrypted=true; CompletionDurationMinutes 15..2880 in
    steps of 15 (recorded, TransferType ``time-based``); the copy is ``pending`` with progress like a
    new snapshot, and its file follows the source's."""
    params = _ctx("params") or {}
    source = _copy_source(self, source_snapshot_id, source_region)
    if source.status != "completed":
        raise _err("IncorrectState", "Snapshot is in invalid state - %s" % source.status)
    encrypted = str(params.get("Encrypted", "")).lower() == "true"
    if kms_key_id and not encrypted:
        raise _err("InvalidParameterDependency", "The parameter KmsKeyId requires the parameter Encrypted to be set.")
    minutes = params.get("CompletionDurationMinutes")
    if minutes not in (None, ""):
        try:
            minutes = int(minutes)
        except ValueError:
            minutes = -1
        if not 15 <= minutes <= 2880 or minutes % 15:
            raise _err("InvalidParameterValue", "Value (%s) for parameter completionDurationMinutes is invalid. "
                       "Expecting a value between 15 and 2880 in 15-minute increments."
                       % params.get("CompletionDurationMinutes"))
    else:
        minutes = None
    if encrypted and not kms_key_id and not source.encrypted:
        kms_key_id = self._create_default_encryption_key()  # the account's aws/ebs key, as EC2 uses it
    snap = Snapshot(self, random_snapshot_id(), volume=source.volume, description=description,
                    encrypted=bool(source.encrypted or encrypted), kms_key_id=kms_key_id or source.kms_key_id)
    snap.transfer_type = "time-based" if minutes else "standard"
    snap.completion_duration_minutes = minutes
    snap._sp_source = source.id
    self.snapshots[snap.id] = snap
    failing = WORLD.take_fail_copy() if not _ctx("internal") else None
    if failing is not None:
        snap._sp_fail = True
        snap._sp_message = failing
    source_file = getattr(source, "_sp_file", None)
    if source_file:
        snap._sp_file = WORLD.copy_in(source_file, "snapshots", snap.id)
    return snap


def _delete_snapshot(self, snapshot_id):
    snap = self.snapshots.get(snapshot_id)
    if snap is not None and snap.owner_id != self.account_id and _api_call("DeleteSnapshot"):
        raise _err("UnauthorizedOperation", "You are not authorized to perform this operation.")
    snap = _ORIG["delete_snapshot"](self, snapshot_id)
    WORLD.qemu.cancel(snap)
    WORLD.drop_file(getattr(snap, "_sp_file", None))
    return snap


def _create_volume(self, size, zone_name, snapshot_id=None, *args, **kwargs):
    snap = None
    if snapshot_id:
        snap = self.get_snapshot(snapshot_id)
        if snap.status != "completed":
            raise _err("IncorrectState", "Snapshot is in invalid state - %s" % snap.status)
    volume = _ORIG["create_volume"](self, size, zone_name, snapshot_id, *args, **kwargs)
    source = getattr(snap, "_sp_file", None)
    if source:
        try:
            volume._sp_file = WORLD.copy_in(source, "volumes", volume.id)
            volume._sp_owned = True
        except OSError as e:
            self.volumes.pop(volume.id, None)
            raise _err("InternalError", "stillpoint test endpoint: cannot copy %s, the image of %s: %s"
                       % (source, snapshot_id, e))
    return volume


def _detaching(volume):
    """The attachment ``volume`` is still detaching from, or None.

    A local attachment (loop device) keeps detaching, or ``busy``, until the backend released it."""
    pending = volume.__dict__.get("_sp_detaching")
    if not pending:
        return None
    local = pending[0].__dict__.get("_sp_local")
    if local is not None and not local.get("released"):
        return pending[0]
    qemu = pending[0].__dict__.get("_sp_qemu")
    if qemu is not None and not qemu.released:
        return pending[0]  # still in the VM (unplug, or a backup job reading it)
    if time.monotonic() < pending[1]:
        return pending[0]
    return None


def _delete_volume(self, volume_id):
    volume = self.volumes.get(volume_id)
    if volume is not None and _detaching(volume) is not None:
        raise _err("VolumeInUse", "Volume %s is currently attached to %s"
                   % (volume_id, _detaching(volume).instance.id))
    volume = _ORIG["delete_volume"](self, volume_id)
    if getattr(volume, "_sp_owned", False):
        WORLD.drop_file(getattr(volume, "_sp_file", None))
    return volume


def _attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
    volume = self.get_volume(volume_id)
    instance = self.get_instance(instance_id)
    if _detaching(volume) is not None:
        raise _err("IncorrectState", "%s is not 'available'." % volume_id)
    if volume.attachment is not None:
        raise _err("VolumeInUse", "%s is already attached to an instance" % volume_id)
    instance_az = instance.placement.zone if hasattr(instance.placement, "zone") else instance.placement
    if volume.zone is not None and volume.zone.name != instance_az:
        raise _err("InvalidVolume.ZoneMismatch", "The volume '%s' is not in the same availability zone as "
                   "instance '%s'" % (volume_id, instance_id))
    if device_path in instance.block_device_mapping:
        raise _err("InvalidParameterValue", "Invalid value '%s' for unixDevice. Attachment point %s is "
                   "already in use" % (device_path, device_path))
    attachment = _ORIG["attach_volume"](self, volume_id, instance_id, device_path, delete_on_termination)
    api = _api_call("AttachVolume")
    if attachment is not None and api:
        attachment._sp_until = time.monotonic() + WORLD.attach_seconds
    if attachment is not None and WORLD.is_local(instance_id) and getattr(volume, "_sp_file", None):
        try:
            WORLD.local_attach(volume, attachment, api)
        except _local.LocalError as e:
            _ORIG["detach_volume"](self, volume_id, instance_id, device_path)  # as if it never happened
            raise _err("InternalError", "stillpoint test endpoint: cannot attach %s on this host: %s" % (volume_id, e))
    if attachment is not None and WORLD.qemu.is_qemu(instance_id) and device_path != instance.root_device_name:
        try:
            WORLD.qemu_attach(volume, attachment, api)
        except OSError as e:
            _ORIG["detach_volume"](self, volume_id, instance_id, device_path)
            raise _err("InternalError", "stillpoint test endpoint: cannot make the image of %s: %s" % (volume_id, e))
    return attachment


def _force_param():
    params = _ctx("params") or {}
    return str(params.get("Force", "")).lower() == "true"


def _detach_volume(self, volume_id, instance_id, device_path):
    volume = self.get_volume(volume_id)
    attachment = volume.attachment
    api = _api_call("DetachVolume")
    force = api and _force_param()
    if attachment is None:
        old = _detaching(volume)
        if old is not None and force and WORLD.local_force(volume, old):
            return old  # DetachVolume Force=true on a volume stuck detaching/busy
        raise _err("IncorrectState", "Volume '%s' is in the '%s' state." % (volume_id, volume.status))
    if instance_id and attachment.instance.id != instance_id:
        self.get_instance(instance_id)  # InvalidInstanceID.NotFound comes first
        raise _err("InvalidAttachment.NotFound", "The volume '%s' is not attached to instance '%s'."
                   % (volume_id, instance_id))
    if device_path and device_path != attachment.device:
        raise _err("InvalidAttachment.NotFound", "The volume '%s' is not attached to instance '%s' as "
                   "device '%s'." % (volume_id, attachment.instance.id, device_path))
    old = _ORIG["detach_volume"](self, volume_id, attachment.instance.id, attachment.device)
    local = old.__dict__.get("_sp_local")
    qemu = old.__dict__.get("_sp_qemu")
    if api and (WORLD.detach_seconds > 0 or local is not None or qemu is not None):
        old.status = "detaching"
        volume._sp_detaching = (old, time.monotonic() + WORLD.detach_seconds)
    if qemu is not None:
        info = WORLD.qemu.detach(old, api)
        if api:  # not the detaches of a TerminateInstances: its entry is the terminate
            WORLD._log_backend(info)
    if local is not None:
        # Any detach but a client's DetachVolume (TerminateInstances, the endpoint's own calls) is
        # forced: the instance lets go of the device at once.
        WORLD.local_detach(volume, old, force=force or not api)
    return old


def _attachment_status(self):
    d = self.__dict__
    status = d.get("_sp_status")
    if status == "attached":
        qemu = d.get("_sp_qemu")
        if qemu is not None:
            return qemu.status(status)  # attaching until the hot-plug is done, plus --attach-seconds
        if time.monotonic() < d.get("_sp_until", 0.0):
            return "attaching"
        local = d.get("_sp_local")
        if local is not None and not local.get("linked"):
            return "attaching"  # attached only once the by-id link exists
    return status


def _attachment_set_status(self, value):
    self.__dict__["_sp_status"] = value


def _volume_attachments(self):
    if self.attachment is not None:
        return [self.attachment]
    old = _detaching(self)
    return [old] if old is not None else []


def _volume_status(self):
    return "in-use" if self.attachment is not None or _detaching(self) is not None else "available"


def _check_taggable(backend, resource_ids):
    if _ctx("internal") or _ctx("action") not in ("CreateTags", "DeleteTags"):
        return
    for rid in resource_ids:
        if rid.startswith("snap-"):
            snap = backend.snapshots.get(rid)
            if snap is None:
                raise _err("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist." % rid)
            if snap.owner_id != backend.account_id:
                raise _err("UnauthorizedOperation", "You are not authorized to perform this operation.")
        elif rid.startswith("vol-") and rid not in backend.volumes:
            raise _err("InvalidVolume.NotFound", "The volume '%s' does not exist." % rid)


def _create_tags(self, resource_ids, tags):
    _check_taggable(self, resource_ids)
    return _ORIG["create_tags"](self, resource_ids, tags)


def _delete_tags(self, resource_ids, tags):
    _check_taggable(self, resource_ids)
    return _ORIG["delete_tags"](self, resource_ids, tags)


# --------------------------------------------------------------------------- instance states of qemu instances

def _qemu_instances(backend, instance_ids):
    return [i for i in backend.get_multi_instances_by_id(instance_ids) if WORLD.qemu.is_qemu(i.id)]


def _set_state(instance, name, code):
    instance._state.name = name
    instance._state.code = code


def _stop_instances(self, instance_ids):
    for instance in _qemu_instances(self, instance_ids):
        if instance.state in ("pending", "shutting-down", "terminated"):
            raise _err("IncorrectInstanceState", "This instance '%s' is not in a state from which it can be stopped."
                       % instance.id)
    result = _ORIG["stop_instances"](self, instance_ids)
    for instance, previous in result:
        if not WORLD.qemu.is_qemu(instance.id):
            continue
        if previous.name in ("stopping", "stopped"):
            _set_state(instance, previous.name, previous.code)  # already on its way down, or down
            continue
        _set_state(instance, "stopping", 64)  # until the VM is powered off
        WORLD._log_backend_more(WORLD.qemu.stop(instance))
    return result


def _start_instances(self, instance_ids):
    for instance in _qemu_instances(self, instance_ids):
        if instance.state in ("stopping", "shutting-down", "terminated"):
            raise _err("IncorrectInstanceState", "The instance '%s' is not in a state from which it can be started."
                       % instance.id)
    result = _ORIG["start_instances"](self, instance_ids)
    for instance, previous in result:
        if not WORLD.qemu.is_qemu(instance.id):
            continue
        if previous.name in ("pending", "running"):
            _set_state(instance, previous.name, previous.code)
            continue
        _set_state(instance, "pending", 0)  # until qemu runs
        WORLD._log_backend_more(WORLD.qemu.start(instance))
    return result


def _terminate_instances(self, instance_ids):
    qemu = _qemu_instances(self, instance_ids) if instance_ids else []
    for instance in qemu:
        WORLD.qemu.mark_terminating(instance.id)  # moto detaches the volumes: nothing to unplug
    try:
        result = _ORIG["terminate_instances"](self, instance_ids)
    except Exception:
        for instance in qemu:
            WORLD.qemu.vms[instance.id].terminating = instance.state in ("shutting-down", "terminated")
        raise
    for instance, previous in result:
        if not WORLD.qemu.is_qemu(instance.id) or previous.name in ("shutting-down", "terminated"):
            if WORLD.qemu.is_qemu(instance.id):
                _set_state(instance, previous.name, previous.code)
            continue
        _set_state(instance, "shutting-down", 32)  # until the VM is killed
        WORLD._log_backend_more(WORLD.qemu.terminate(instance))
    return result


# --------------------------------------------------------------------------- response patches

def _resp_create_snapshots(self):
    spec = self._get_param("InstanceSpecification", {})
    description = self._get_param("Description", "")
    tags = self._parse_tag_specification().get("snapshot", {})
    copy_from = self._get_param("CopyTagsFromSource")
    self.error_on_dryrun()
    snaps = self.ec2_backend.create_snapshots(spec, description, tags, copy_tags_from_source=copy_from)
    return ActionResult({"Snapshots": snaps})


def _resp_describe_snapshots(self):
    filters = self._filters_from_querystring()
    snapshot_ids = self._get_param("SnapshotIds", [])
    owners = self._get_param("OwnerIds", [])
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    snaps = self.ec2_backend.describe_snapshots(snapshot_ids=snapshot_ids, filters=filters)
    if owners:
        wanted = set(self.ec2_backend.account_id if o == "self" else o for o in owners)
        snaps = [s for s in snaps if s.owner_id in wanted or getattr(s, "owner_alias", None) in wanted]
    result = {"Snapshots": snaps}
    if max_results is not None:
        max_results = int(max_results)
        if snapshot_ids:
            raise _err("InvalidParameterCombination", "The parameter snapshotSet cannot be used with "
                       "the parameter maxResults")
        if not 5 <= max_results <= 1000:
            raise _err("InvalidParameterValue", "Value ( %d ) for parameter maxResults is invalid. Expecting a "
                       "value between 5 and 1000." % max_results)
    if max_results is not None or token:
        start = int(token) if token and token.isdigit() else 0
        if token and not token.isdigit():
            raise _err("InvalidPaginationToken", "The pagination token is invalid.")
        size = max_results or 1000
        result["Snapshots"] = snaps[start:start + size]
        if start + size < len(snaps):
            result["NextToken"] = str(start + size)
    return ActionResult(result)


def _get_tags(self):
    """A resource's own tags, read from moto's tag store by its id: the answer moto's ``get_tags`` gives (its
    ``describe_tags`` with a resource-id filter), in the same order and shape. moto's scans every tag of the
    region for each resource it renders, so an answer listing N snapshots cost N x (every tag held): a
    16-member CreateSnapshots grew by about a millisecond with each set the endpoint held. EC2's own answer
    does not grow with the account's other resources."""
    resource_id = getattr(self, "id", None)
    tags = self.ec2_backend.tags.get(resource_id) if resource_id else None
    if not tags:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [{"resource_id": resource_id, "key": key, "value": value, "resource_type": kind}
            for key, value in list(tags.items())]


def install():
    """Patch moto's EBS models and responses (idempotent)."""
    if _ORIG:
        return
    TaggedEC2Resource.get_tags = _get_tags
    _ORIG["Snapshot.__init__"] = Snapshot.__init__
    Snapshot.__init__ = _snapshot_init
    Snapshot.status = property(_snap_status, _snap_set_status)
    Snapshot.state = property(_snap_status)
    Snapshot.progress = property(_snap_progress)
    Snapshot.state_message = property(_snap_state_message)
    Snapshot.status_message = property(_snap_state_message)
    VolumeAttachment.status = property(_attachment_status, _attachment_set_status)
    Volume.attachments = property(_volume_attachments)
    Volume.status = property(_volume_status)
    for name, func in (("create_snapshot", _create_snapshot), ("create_snapshots", _create_snapshots),
                       ("copy_snapshot", _copy_snapshot), ("delete_snapshot", _delete_snapshot),
                       ("create_volume", _create_volume), ("delete_volume", _delete_volume),
                       ("attach_volume", _attach_volume), ("detach_volume", _detach_volume)):
        _ORIG[name] = getattr(EBSBackend, name)
        setattr(EBSBackend, name, func)
    for name, func in (("create_tags", _create_tags), ("delete_tags", _delete_tags)):
        _ORIG[name] = getattr(TagBackend, name)
        setattr(TagBackend, name, func)
    for name, func in (("stop_instances", _stop_instances), ("start_instances", _start_instances),
                       ("terminate_instances", _terminate_instances)):
        _ORIG[name] = getattr(InstanceBackend, name)
        setattr(InstanceBackend, name, func)
    ElasticBlockStore.create_snapshots = _resp_create_snapshots
    ElasticBlockStore.describe_snapshots = _resp_describe_snapshots
    from . import _locks  # snapshot lock and Recycle Bin emulation (_locks.py)
    _locks.install()
    from . import _kms  # DescribeKey across accounts by the key policy (_kms.py)
    _kms.install()


# --------------------------------------------------------------------------- the world

class World:
    """The endpoint's state beside moto's, and the control operations."""

    def __init__(self, state_dir, region="eu-west-1", pending_seconds=2.0, attach_seconds=0.2,
                 detach_seconds=0.2, account_id=ACCOUNT_ID):
        global WORLD
        install()
        WORLD = self
        self.lock = threading.RLock()  # moto's models
        self._mu = threading.Lock()  # faults, latencies, the call log
        self.state_dir = os.path.abspath(state_dir)
        for kind in ("snapshots", "volumes"):
            os.makedirs(os.path.join(self.state_dir, kind), exist_ok=True)
        self.region = region
        self.account_id = account_id
        self.defaults = {"pending_seconds": float(pending_seconds), "attach_seconds": float(attach_seconds),
                         "detach_seconds": float(detach_seconds)}
        self.url = None
        self.imds = None
        self.internal_token = secrets.token_hex(16)
        self._client = None
        self._client_lock = threading.Lock()
        self._seq = itertools.count(1)
        self.calls = []
        self.received = {}  # action -> real calls arrived (op_received)
        self.copies_seen = 0  # CopySnapshot calls that made a copy (op_fail_copy counts from here)
        self._reset_faults()
        _buckets.install(self)  # EC2's token buckets, off until the control op ``buckets`` (_buckets.py)
        # the local attach backend: instance id -> by-id directory, loop devices, the poller's work
        self.local = _local.LocalBackend(os.path.join(self.state_dir, "local"))
        self.local_instances = {}
        self._local_jobs = []
        self._local_wake = threading.Event()
        self._local_stop = threading.Event()
        self._local_thread = None
        self.recovered = self.local.recover()  # loop devices of an earlier server killed on this state dir
        # the qemu backend: instance id -> VM, backup jobs
        self.qemu = _qemu.QemuBackend(self)
        self.qemu_recovered = self.qemu.recover()  # VMs an earlier server killed on this state dir booted
        self.qemu_stopped = []

    # ------------------------------------------------------------------ helpers for the WSGI layer

    def _reset_faults(self):
        with self._mu:
            self.pending_seconds = self.defaults["pending_seconds"]
            self.attach_seconds = self.defaults["attach_seconds"]
            self.detach_seconds = self.defaults["detach_seconds"]
            self.pending_overrides = collections.deque()
            self.faults = {}
            self.fail_members = collections.deque()
            self.fail_copies = {}  # number of the CopySnapshot call (self.copies_seen) -> message
            self.latencies = {}

    def latency_for(self, action):
        with self._mu:
            return self.latencies.get(action, self.latencies.get("*", 0))

    def take_fault(self, action):
        """The injected error for this call of ``action``, or None."""
        with self._mu:
            for key in (action, "*"):
                queue = self.faults.get(key)
                if queue:
                    fault = queue[0]
                    if fault.get("after", 0) > 0:  # let this many calls through first
                        fault["after"] -= 1
                        return None
                    fault["remaining"] -= 1
                    if fault["remaining"] <= 0:
                        queue.popleft()
                    return dict(fault)
        return None

    def take_pending(self):
        with self._mu:
            if self.pending_overrides:
                return self.pending_overrides.popleft()
            return self.pending_seconds

    def take_fail_member(self):
        with self._mu:
            return self.fail_members.popleft() if self.fail_members else None

    def take_fail_copy(self):
        """Count a CopySnapshot that makes a copy; the message if this one is marked to fail, else None."""
        with self._mu:
            self.copies_seen += 1
            message = self.fail_copies.pop(self.copies_seen, None)
            return None if message is None else (message or FAIL_MESSAGE)

    def record(self, entry):
        with self._mu:
            entry["seq"] = next(self._seq)
            self.calls.append(entry)

    def receive(self, action):
        """Count a real call as it arrives (before its latency): a test can see a call in flight."""
        with self._mu:
            self.received[action] = self.received.get(action, 0) + 1

    def backend(self, region=None):
        return ec2_backends[self.account_id][region or self.region]

    def copy_in(self, source, kind, resource_id):
        path = os.path.join(self.state_dir, kind, resource_id + ".img")
        sparse_copy(source, path)
        return path

    def drop_file(self, path):
        """Remove a file the endpoint made (never a test's own backing file)."""
        if path and os.path.dirname(os.path.dirname(path)) == self.state_dir:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ control operations

    def op_status(self):
        return {"pid": os.getpid(), "url": self.url, "imds_url": self.imds.url if self.imds else None,
                "region": self.region, "account_id": self.account_id, "state_dir": self.state_dir,
                "pending_seconds": self.pending_seconds, "attach_seconds": self.attach_seconds,
                "detach_seconds": self.detach_seconds, "local_instances": dict(self.local_instances),
                "qemu_instances": dict((iid, q.name) for iid, q in list(self.qemu.vms.items())),
                "qemu_backup_speed": self.qemu.speed}

    def op_reset(self, state=False):
        """Clear faults, latencies, overrides and the call log; with ``state`` also every EC2 resource
        (and every loop device and link of the local backend)."""
        self._reset_faults()
        self.buckets.reset()
        self.op_clear_calls()
        self.qemu.speed = 0
        if state:
            self.qemu.shutdown()  # every VM it booted, by PID; the IMDS emulators
            self.qemu = _qemu.QemuBackend(self)
            with self.lock:
                self.local.release_all()
                self.local_instances = {}
                with self._mu:
                    self._local_jobs = []
                BackendDict.reset()
                reset_model_data()
                for kind in ("snapshots", "volumes"):
                    folder = os.path.join(self.state_dir, kind)
                    shutil.rmtree(folder, ignore_errors=True)
                    os.makedirs(folder, exist_ok=True)
                self.backend()  # reload the AMIs now rather than in the next test's first call
        return {}

    def op_clear_calls(self):
        with self._mu:
            self.calls = []
            self.received = {}
        return {}

    def op_received(self, action):
        """How many real calls of ``action`` arrived so far, finished or still in flight."""
        with self._mu:
            return {"count": self.received.get(action, 0)}

    def op_calls(self, action=None):
        with self._mu:
            calls = [copy.deepcopy(c) for c in self.calls if action is None or c["action"] == action]
        return {"calls": calls}

    def _need(self, name, value):
        if value in (None, ""):
            raise ControlError("%s is required" % name)
        return value

    def op_throttle(self, action, count=1, code="RequestLimitExceeded", message=None, status=None):
        """The next ``count`` calls of ``action`` (``*``: any) fail with a throttling error."""
        return self._add_fault("throttle", action, count, code, message, status)

    def op_fail_next(self, action, code, message=None, status=None, count=1, after=0):
        """The next ``count`` calls of ``action`` fail with ``code``/``message`` (after ``after`` calls pass)."""
        return self._add_fault("fail", action, count, code, message, status, after)

    def _add_fault(self, kind, action, count, code, message, status, after=0):
        self._need("action", action)
        self._need("code", code)
        count = int(count)
        if count < 1:
            raise ControlError("count must be >= 1")
        default_message = ERROR_MESSAGES.get(code, "%s (injected by the stillpoint test endpoint)" % code)
        fault = {"kind": kind, "code": code, "remaining": count, "message": message or default_message,
                 "status": int(status or ERROR_STATUS.get(code, 400)), "after": max(0, int(after or 0))}
        with self._mu:
            self.faults.setdefault(action, collections.deque()).append(fault)
        return {"fault": fault}

    def op_fail_member(self, k, message=None):
        """Member ``k`` (0-based, response order) of the next CreateSnapshots ends in ``error``."""
        k = int(k)
        if k < 0:
            raise ControlError("k must be >= 0")
        with self._mu:
            self.fail_members.append((k, message))
        return {}

    def op_fail_copy(self, k=0, message=None):
        """The copy made by the ``k``-th (0-based) CopySnapshot call from now ends in ``error`` at the end
        of its pending time (refused calls do not count)."""
        k = int(k)
        if k < 0:
            raise ControlError("k must be >= 0")
        with self._mu:
            self.fail_copies[self.copies_seen + k + 1] = message or ""
        return {}

    def op_fail_snapshot(self, snapshot_id, message=None):
        """Mark an existing snapshot to end in ``error`` (now, if its pending time is over)."""
        with self.lock:
            snap = self._snapshot(snapshot_id)
            if "_sp_t0" not in snap.__dict__ or snap.__dict__.get("_sp_t0") is None:
                _snap_begin(snap, 0.0)
            snap._sp_fail = True
            snap._sp_message = message
            return {"state": snap.status}

    def op_latency(self, action, ms):
        """Delay every call of ``action`` (``*``: any) by ``ms`` milliseconds; 0 removes it."""
        self._need("action", action)
        with self._mu:
            if float(ms) > 0:
                self.latencies[action] = float(ms)
            else:
                self.latencies.pop(action, None)
        return {}

    def op_pending(self, seconds, calls=None, snapshot_ids=None):
        """How long new snapshots stay pending.

        ``calls=N``: only the next N snapshot-creating calls, then back to the default;
        ``snapshot_ids``: restart the pending period of these snapshots now (0 completes them);
        neither: the new default for later calls (until ``reset``).
        """
        seconds = float(seconds)
        if seconds < 0:
            raise ControlError("seconds must be >= 0")
        if snapshot_ids:
            with self.lock:
                for sid in snapshot_ids:
                    _snap_begin(self._snapshot(sid), seconds)
        elif calls is not None:
            with self._mu:
                self.pending_overrides.extend([seconds] * int(calls))
        else:
            with self._mu:
                self.pending_seconds = seconds
        return {}

    def op_delays(self, attach_seconds=None, detach_seconds=None):
        """How long AttachVolume/DetachVolume stay ``attaching``/``detaching``."""
        with self._mu:
            if attach_seconds is not None:
                self.attach_seconds = float(attach_seconds)
            if detach_seconds is not None:
                self.detach_seconds = float(detach_seconds)
        return {}

    def _snapshot(self, snapshot_id, region=None):
        """A snapshot of our account in ``region``; failing that, of any account in any region that
        has a backend (copies made in another region or account)."""
        snap = self.backend(region).snapshots.get(snapshot_id)
        if snap is None:
            for accounts in list(dict.values(ec2_backends)):
                for regional in list(dict.values(accounts)):
                    snap = snap or regional.snapshots.get(snapshot_id)
        if snap is None:
            raise ControlError("no snapshot %s" % snapshot_id)
        return snap

    def _volume(self, volume_id, region=None):
        volume = self.backend(region).volumes.get(volume_id)
        if volume is None:
            raise ControlError("no volume %s" % volume_id)
        return volume

    def op_back_volume(self, volume_id, path, region=None):
        """Back ``volume_id`` by the host file ``path`` (None: no backing). The file is never removed."""
        with self.lock:
            volume = self._volume(volume_id, region)
            if path is None:
                volume._sp_file = None
                volume._sp_owned = False
                return {"path": None}
            path = os.path.abspath(path)
            if not os.path.isfile(path):
                raise ControlError("backing file %s does not exist (or is not a regular file)" % path)
            volume._sp_file = path
            volume._sp_owned = False
            return {"path": path}

    def op_volume_file(self, volume_id, region=None):
        with self.lock:
            return {"path": getattr(self._volume(volume_id, region), "_sp_file", None)}

    def op_snapshot_file(self, snapshot_id, region=None):
        with self.lock:
            return {"path": getattr(self._snapshot(snapshot_id, region), "_sp_file", None)}

    def op_add_foreign_snapshot(self, owner_id=FOREIGN_ACCOUNT_ID, volume_id=None, size=8, description="",
                                tags=None, region=None):
        """A ``completed`` snapshot owned by another account (as if shared with us or public).

        ``volume_id``: the VolumeId it claims (any string, e.g. one of ours); default a volume that
        does not exist here. ``tags`` are visible, as they would be for a test of tag filters.
        """
        if owner_id == self.account_id:
            raise ControlError("owner_id must differ from our account %s" % self.account_id)
        with self.lock:
            backend = self.backend(region)
            zone = backend.get_zone_by_name((region or self.region) + "a")
            volume = backend.volumes.get(volume_id) if volume_id else None
            if volume is None:
                volume = Volume(backend, volume_id or random_volume_id(), int(size), zone)
            snap = Snapshot(backend, random_snapshot_id(), volume, description, owner_id=str(owner_id))
            if tags:
                snap.add_tags(dict(tags))
            backend.snapshots[snap.id] = snap
            return {"snapshot_id": snap.id, "owner_id": snap.owner_id, "volume_id": volume.id}

    def op_set_imds(self, instance_id=None, az=None, region=None):
        if self.imds is None:
            raise ControlError("the IMDS emulator is not running (tests/ec2_endpoint/imds.py missing?)")
        self.imds.set_identity(instance_id=instance_id, region=region, az=az)
        return {"instance_id": self.imds.instance_id, "region": self.imds.region,
                "az": self.imds.availability_zone, "imds_url": self.imds.url}

    # ------------------------------------------------------------------ the local attach backend

    def is_local(self, instance_id):
        return instance_id in self.local_instances

    @staticmethod
    def _log_backend(info):
        """Put ``info`` in the call log entry of the client's EC2 request being served (if any)."""
        if _ctx("action") and not _ctx("internal"):
            CTX.backend = info

    @staticmethod
    def _log_backend_more(info):
        """Like ``_log_backend``; a second entry of the same call (StopInstances of two qemu
        instances) goes into the first one's ``more`` list."""
        if not _ctx("action") or _ctx("internal"):
            return
        if _ctx("backend") is None:
            CTX.backend = info
        else:
            CTX.backend.setdefault("more", []).append(info)

    def local_attach(self, volume, attachment, api):
        """``losetup`` the volume's file now; the by-id link follows halfway through ``attaching``
        (at once for the endpoint's own calls). Caller holds ``self.lock``."""
        instance_id = attachment.instance.id
        rec = self.local.attach(volume.id, instance_id, volume._sp_file, self.local_instances[instance_id])
        info = {"kind": "local", "op": "attach", "loop_device": rec["device"], "image": rec["image"],
                "link": rec["link"], "linked_at": None}
        state = {"rec": rec, "info": info, "attachment": attachment, "volume_id": volume.id,
                 "instance_id": instance_id, "device": attachment.device, "linked": False, "detach": False,
                 "busy": False, "released": False, "detach_infos": [], "link_due": time.monotonic()}
        attachment._sp_local = state
        self._log_backend(info)
        delay = self.attach_seconds if api else 0.0
        if delay > 0:
            state["link_due"] += delay / 2.0
            self._add_job(state)
        else:
            self._link(state)
            if not state["linked"]:
                self._add_job(state)  # retried by the poller; the attachment stays attaching

    def _link(self, state):
        with self.lock:
            if state["linked"] or state["detach"]:
                return
            try:
                self.local.link(state["rec"])
            except OSError as e:
                with self._mu:
                    state["info"]["link_error"] = str(e)
                return
            state["linked"] = True
            with self._mu:
                state["info"]["linked_at"] = time.monotonic()
                state["info"].pop("link_error", None)

    def local_detach(self, volume, old, force):
        """The detach of a local attachment: released now if nothing uses the loop device (or
        ``force``), else ``busy`` until the poller sees it released. Caller holds ``self.lock``."""
        state = old.__dict__["_sp_local"]
        state["detach"] = True
        rec = state["rec"]
        users = _local.users(rec["device"])
        info = {"kind": "local", "op": "detach", "loop_device": rec["device"], "link": rec["link"],
                "force": bool(force), "users": users, "busy": bool(users and not force), "released_at": None}
        state["detach_infos"].append(info)
        self._log_backend(info)
        if users and not force:
            state["busy"] = True
            old.status = "busy"
            self._add_job(state)
        else:
            self._release(state)

    def local_force(self, volume, old):
        """DetachVolume Force=true on a local attachment that is still detaching or busy."""
        state = old.__dict__.get("_sp_local")
        if state is None or state["released"]:
            return False
        rec = state["rec"]
        info = {"kind": "local", "op": "detach", "loop_device": rec["device"], "link": rec["link"], "force": True,
                "users": _local.users(rec["device"]), "busy": False, "released_at": None}
        state["detach_infos"].append(info)
        self._log_backend(info)
        self._release(state)
        return True

    def _release(self, state):
        with self.lock:
            if state["released"]:
                return
            result = self.local.release(state["rec"])
            state["released"] = True
            state["busy"] = False
            attachment = state["attachment"]
            if attachment.__dict__.get("_sp_status") == "busy":
                attachment.status = "detaching"
            with self._mu:
                for info in state["detach_infos"]:
                    if info["released_at"] is None:
                        info.update(released_at=time.monotonic(), detached=result["detached"],
                                    lazy=result["lazy"], error=result["error"])

    def _add_job(self, state):
        with self._mu:
            if not any(job is state for job in self._local_jobs):
                self._local_jobs.append(state)
            if self._local_thread is None or not self._local_thread.is_alive():
                self._local_thread = threading.Thread(target=self._local_loop, name="stillpoint-local",
                                                      daemon=True)
                self._local_thread.start()
        self._local_wake.set()

    def _local_loop(self):
        """Make due links; release busy devices once nothing uses them (every 50 ms)."""
        while not self._local_stop.is_set():
            with self._mu:
                jobs = list(self._local_jobs)
            if not jobs:
                self._local_wake.wait(0.5)
                self._local_wake.clear()
                continue
            for state in jobs:
                if self._local_stop.is_set():
                    return
                done = False
                try:
                    if state["released"]:
                        done = True
                    elif state["detach"]:
                        if state["busy"]:
                            users = _local.users(state["rec"]["device"])  # without the lock: it reads /proc
                            if users:
                                with self._mu:
                                    state["detach_infos"][-1]["users"] = users
                            else:
                                self._release(state)
                                done = True
                        else:
                            done = True
                    elif time.monotonic() >= state["link_due"]:
                        self._link(state)
                        done = state["linked"]
                except Exception as e:  # keep polling the others; say what went wrong in the log
                    with self._mu:
                        state["info"]["poll_error"] = "%s: %s" % (type(e).__name__, e)
                if done:
                    with self._mu:
                        self._local_jobs = [job for job in self._local_jobs if job is not state]
            self._local_wake.wait(0.05)
            self._local_wake.clear()

    def shutdown(self):
        """Server stop: kill every qemu VM this endpoint booted (``qemu_stopped`` says which), then
        detach every loop device this endpoint made and remove its links; returns the latter."""
        try:
            self.qemu_stopped = self.qemu.shutdown()
        except Exception as e:  # the loop devices must still be released
            self.qemu_stopped = [{"error": "%s: %s" % (type(e).__name__, e)}]
        self._local_stop.set()
        self._local_wake.set()
        locked = self.lock.acquire(timeout=5.0)
        try:
            return self.local.release_all()
        finally:
            if locked:
                self.lock.release()

    def op_make_local(self, instance_id, by_id_dir, region=None):
        """Mark ``instance_id`` local: its file-backed volumes are attached as loop devices on this
        host with the links ``<by_id_dir>/nvme-Amazon_Elastic_Block_Store_vol...``. Volumes already
        attached to it are attached locally now."""
        self._need("instance_id", instance_id)
        self._need("by_id_dir", by_id_dir)
        if self.qemu.is_qemu(instance_id):
            raise ControlError("make_local: %s is a qemu instance" % instance_id)
        if not os.path.isabs(by_id_dir):
            raise ControlError("by_id_dir must be an absolute path, not %r" % by_id_dir)
        with self.lock:
            backend = self.backend(region)
            try:
                instance = backend.get_instance(instance_id)
            except EC2ClientError as e:
                raise ControlError("make_local: %s" % e)
            os.makedirs(by_id_dir, exist_ok=True)
            self.local_instances[instance_id] = os.path.abspath(by_id_dir)
            for _device, bdm in instance.get_block_device_mapping:
                volume = backend.volumes.get(bdm.volume_id)
                attachment = volume.attachment if volume is not None else None
                if attachment is None or not getattr(volume, "_sp_file", None) or "_sp_local" in attachment.__dict__:
                    continue
                try:
                    self.local_attach(volume, attachment, api=False)
                except _local.LocalError as e:
                    raise ControlError("make_local: %s" % e)
        return {"instance_id": instance_id, "by_id_dir": self.local_instances[instance_id],
                "devices": self.op_local_devices(instance_id=instance_id, region=region)["devices"]}

    def op_local_devices(self, instance_id=None, region=None):
        """The loop devices of local attachments not yet released (attaching, attached, detaching, busy)."""
        out = []
        with self.lock:
            for volume in list(self.backend(region).volumes.values()):
                attachment = volume.attachment or _detaching(volume)
                state = attachment.__dict__.get("_sp_local") if attachment is not None else None
                if state is None or state["released"]:
                    continue
                if instance_id and state["instance_id"] != instance_id:
                    continue
                out.append({"volume_id": volume.id, "instance_id": state["instance_id"], "device": state["device"],
                            "loop_device": state["rec"]["device"], "image": state["rec"]["image"],
                            "link": state["rec"]["link"], "linked": state["linked"], "state": attachment.status,
                            "users": state["detach_infos"][-1]["users"] if state["busy"] else []})
        return {"devices": out}

    # ------------------------------------------------------------------ the qemu backend

    def _qemu_image(self, volume):
        """The volume's image for a VM: its file, or a new sparse ``<state-dir>/volumes/<id>.img``
        of Size GiB (an image the endpoint made from a smaller snapshot grows to Size)."""
        size = int(volume.size) << 30
        path = getattr(volume, "_sp_file", None)
        if not path:
            volume._sp_file = _qemu.make_image(os.path.join(self.state_dir, "volumes", volume.id + ".img"), size)
            volume._sp_owned = True
        elif getattr(volume, "_sp_owned", False) and os.path.getsize(path) < size:
            _qemu.make_image(path, size)
        return volume._sp_file

    def qemu_attach(self, volume, attachment, api):
        """AttachVolume to a qemu instance (caller holds ``self.lock``)."""
        self._qemu_image(volume)
        self._log_backend(self.qemu.attach(volume, attachment, delay=self.attach_seconds if api else 0.0))

    def qemu_attach_failed(self, disk, region):
        """The hot-plug of ``disk`` failed: the attachment goes, as if it never happened."""
        with self.lock:
            backend = self.backend(region)
            volume = backend.volumes.get(disk.volume_id)
            attachment = volume.attachment if volume is not None else None
            if attachment is not None and attachment.__dict__.get("_sp_qemu") is disk:
                _ORIG["detach_volume"](backend, volume.id, attachment.instance.id, attachment.device)

    def _qemu_copy(self, source, snap):
        """A snapshot member whose disk is not in a running VM after all: the file copy of today."""
        try:
            snap._sp_file = self.copy_in(source, "snapshots", snap.id)
        except OSError as e:
            _snap_begin(snap, 0.0, fail=True, message="stillpoint test endpoint: cannot copy %s: %s" % (source, e))

    def start_qemu_backups(self, snaps):
        """Start the qemu backup jobs of ``snaps`` (one transaction per VM); caller holds ``self.lock``."""
        info = self.qemu.start_backups(snaps, self._qemu_copy)
        if info is not None:
            self._log_backend(info)

    def op_make_qemu(self, instance_id, vm_spec, boot=True, region=None):
        """Make ``instance_id`` a qemu instance whose machine is the lab VM ``vm_spec`` (a
        tests/lab/vm.py spec): an IMDSv2 emulator of its own, forwards guest 80 -> that emulator and
        guest 8080 -> this endpoint added to the spec, an image for each attached data volume that
        has none; with ``boot`` and the instance running, the VM boots now with those volumes
        cold-plugged (not waiting for SSH). Returns ``{"instance_id", "spec", "pid", "imds_url",
        "ec2_url", "imds_port"}``; boot the VM yourself with ``VM(spec)`` only if ``boot`` was false."""
        self._need("instance_id", instance_id)
        if not isinstance(vm_spec, dict):
            raise ControlError("make_qemu: vm_spec must be a tests/lab/vm.py spec (a JSON object)")
        if self.is_local(instance_id):
            raise ControlError("make_qemu: %s is a local instance" % instance_id)
        port = int(self.url.rsplit(":", 1)[1]) if self.url else 0
        with self.lock:
            backend = self.backend(region)
            try:
                instance = backend.get_instance(instance_id)
            except EC2ClientError as e:
                raise ControlError("make_qemu: %s" % e)
            if instance.state in ("shutting-down", "terminated"):
                raise ControlError("make_qemu: %s is %s" % (instance_id, instance.state))
            try:
                q = self.qemu.register(instance, region or self.region, vm_spec, port)
            except _qemu.QemuError as e:
                raise ControlError("make_qemu: %s" % e)
            for device, bdm in instance.get_block_device_mapping:
                volume = backend.volumes.get(bdm.volume_id)
                attachment = volume.attachment if volume is not None else None
                if device == instance.root_device_name or attachment is None or "_sp_qemu" in attachment.__dict__:
                    continue
                self._qemu_image(volume)
                self.qemu.attach(volume, attachment, delay=0.0)
            running = instance.state == "running"
        if boot and running and q.vm.pid is None:
            try:
                self.qemu.boot(q)
            except _qemu.QemuError as e:
                raise ControlError("make_qemu: %s" % e)
        return self.qemu.result(q)

    def op_qemu_backup_speed(self, bytes_per_s=0):
        """Speed limit (bytes/s) of qemu backup jobs, new and running; 0: none (``reset`` clears it)."""
        if int(bytes_per_s or 0) < 0:
            raise ControlError("bytes_per_s must be >= 0")
        return self.qemu.set_speed(bytes_per_s)

    def op_qemu_instances(self, instance_id=None):
        """The qemu instances: VM, PID, disks (node present in the VM?), backup jobs, what the
        backend did on its own (hot-plugs after a restart it did not make)."""
        return {"instances": self.qemu.describe(instance_id)}

    # ------------------------------------------------------------------ building the world

    def internal_client(self, region=None):
        """A boto3 EC2 client to this very server (in ``region``, default the endpoint's) whose calls
        bypass faults and the call log."""
        with self._client_lock:
            return self._make_client(region or self.region)

    def _make_client(self, region):
        clients = self.__dict__.setdefault("_clients", {})
        if region not in clients:
            import boto3
            from botocore.config import Config

            token = self.internal_token

            def mark(request, **_):
                request.headers["X-Stillpoint-Internal"] = token

            client = boto3.session.Session().client(
                "ec2", endpoint_url=self.url, region_name=region, aws_access_key_id="testing",
                aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 1}))
            client.meta.events.register("before-sign.ec2.*", mark)
            clients[region] = client
        return clients[region]

    def _ami(self, region=None):
        with self.lock:
            for ami in self.backend(region).amis.values():
                if ami.root_device_type == "ebs" and ami.platform != "windows" and ami.state == "available":
                    return ami.id, ami.root_device_name
        raise ControlError("moto knows no EBS-backed Linux AMI in %s" % (region or self.region))

    def op_create_instance(self, az=None, boot=True, volumes=(), tags=None, instance_type="m5.large",
                           boot_size=8, volume_type="gp3", local=False, by_id_dir=None, region=None):
        """An instance built through the real EC2 API paths: RunInstances, CreateVolume, AttachVolume.

        ``volumes``: ``[{"size": GiB, "device": "/dev/sdf", "backing_file": path, "tags": {...},
        "volume_type": "gp3"}]`` (device defaults to /dev/sdf, /dev/sdg, ...). Attachments are
        ``attached`` at once. ``boot=False``: the root volume is detached and deleted.
        ``local=True``: the instance is made local (``op_make_local(instance, by_id_dir)``) before
        its volumes are attached, so each file-backed volume is a loop device with its by-id link by
        the time this returns (entries get ``loop_device`` and ``link``). ``region``: another region
        of the endpoint's account than its own (a disaster-recovery site).
        """
        import botocore.exceptions

        if local and not by_id_dir:
            raise ControlError("create_instance: local=True needs by_id_dir")
        client = self.internal_client(region)
        az = az or (region or self.region) + "a"
        ami_id, root = self._ami(region)
        try:
            kwargs = {
                "ImageId": ami_id, "MinCount": 1, "MaxCount": 1, "InstanceType": instance_type,
                "Placement": {"AvailabilityZone": az},
                "BlockDeviceMappings": [{"DeviceName": root, "Ebs": {"VolumeSize": int(boot_size),
                                                                     "DeleteOnTermination": True,
                                                                     "VolumeType": volume_type}}],
            }
            if tags:
                kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": _tag_list(tags)}]
            instance = client.run_instances(**kwargs)["Instances"][0]
            instance_id = instance["InstanceId"]
            boot_volume_id = None
            for bdm in instance.get("BlockDeviceMappings", []):
                if bdm["DeviceName"] == root:
                    boot_volume_id = bdm["Ebs"]["VolumeId"]
            if not boot and boot_volume_id:
                client.detach_volume(VolumeId=boot_volume_id, InstanceId=instance_id)
                client.delete_volume(VolumeId=boot_volume_id)
                boot_volume_id = None
            if local:
                self.op_make_local(instance_id, by_id_dir, region=region)
            made = []
            specs = [dict(spec) for spec in volumes or ()]
            taken = set(spec.get("device") for spec in specs) | set([root])
            free = iter(d for d in ("/dev/sd" + c for c in "fghijklmnopqrstuvwxyz") if d not in taken)
            for spec in specs:
                device = spec.get("device") or next(free)
                vkw = {"Size": int(spec.get("size", 1)), "AvailabilityZone": az,
                       "VolumeType": spec.get("volume_type", volume_type)}
                if spec.get("tags"):
                    vkw["TagSpecifications"] = [{"ResourceType": "volume", "Tags": _tag_list(spec["tags"])}]
                volume_id = client.create_volume(**vkw)["VolumeId"]
                entry = {"volume_id": volume_id, "device": device}
                if spec.get("backing_file"):  # before the attach, so that a local instance gets a loop device
                    entry["backing_file"] = self.op_back_volume(volume_id, spec["backing_file"], region=region)["path"]
                client.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
                if local:
                    for dev in self.op_local_devices(instance_id=instance_id, region=region)["devices"]:
                        if dev["volume_id"] == volume_id:
                            entry.update(loop_device=dev["loop_device"], link=dev["link"])
                made.append(entry)
        except botocore.exceptions.ClientError as e:
            raise ControlError("create_instance: %s" % e)
        return {"instance_id": instance_id, "az": az, "image_id": ami_id, "root_device_name": root,
                "boot_volume_id": boot_volume_id, "volumes": made}


def _tag_list(tags):
    if isinstance(tags, dict):
        return [{"Key": k, "Value": str(v)} for k, v in tags.items()]
    return list(tags)
