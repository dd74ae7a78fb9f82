# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""EBS snapshot lock and the Recycle Bin for snapshots, which moto 5.2.5 does not have.

* LockSnapshot, UnlockSnapshot, DescribeLockedSnapshots: a lock per snapshot (mode, duration or
  expiration date, compliance cool-off), kept on moto's Snapshot object (``_sp_lock``), so it goes
  with the snapshot and with ``reset(state=True)``. Lock states as EC2 documents them:
  ``governance``, ``compliance-cooloff``, ``compliance``, ``expired``.
* DeleteSnapshot of a snapshot whose lock has not expired fails (``SnapshotLocked``).
* ListSnapshotsInRecycleBin, RestoreSnapshotFromRecycleBin: snapshots moved into the bin by the
  control operation ``recycle_bin`` (or by DeleteSnapshot while ``recycle_bin_rule`` is set), kept
  beside moto's backend (``_sp_bin``) with their tags and file until their retention ends.
* Control operations (``Endpoint.control(op, ...)``): ``lock_clock(advance=None, offset=None)``
  moves the clock the locks and the bin see (``reset()`` sets it back), ``recycle_bin(snapshot_ids,
  retain_days=7, region=None)``, ``recycle_bin_rule(retain_days=None)``, ``locks(region=None)``.

Installed by ``_world.install()`` (one call); everything here runs under ``World.lock`` like the
rest of the EC2 requests.
"""

from __future__ import annotations

import datetime

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.elastic_block_store import EBSBackend
from moto.ec2.responses import EC2Response

UTC = datetime.timezone.utc
LOCKED_CODE = "SnapshotLocked"  # our choice: the stored EC2 references do not name the code (README)
_STATE = {"offset": 0.0, "rule_days": None, "installed": False}
_ORIG = {}


def now():
    return datetime.datetime.now(UTC) + datetime.timedelta(seconds=_STATE["offset"])


def _err(code, message):
    return EC2ClientError(code, message)


def _iso(when):
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (when.microsecond // 1000) if when else None


def _parse_time(text):
    try:
        parsed = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise _err("InvalidParameterValue", "Value (%s) for parameter expirationDate is invalid." % text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- lock state

def lock_state(lock, at=None):
    at = at or now()
    if at >= lock["expires_on"]:
        return "expired"
    if lock["mode"] == "governance":
        return "governance"
    if lock.get("cool_off_expires_on") and at < lock["cool_off_expires_on"]:
        return "compliance-cooloff"
    return "compliance"


def is_locked(snap):
    lock = snap.__dict__.get("_sp_lock")
    return lock is not None and lock_state(lock) != "expired"


def lock_info(snap):
    lock = snap.__dict__["_sp_lock"]
    info = {"OwnerId": snap.owner_id, "SnapshotId": snap.id, "LockState": lock_state(lock),
            "LockCreatedOn": lock["created_on"], "LockDurationStartTime": lock["start"],
            "LockExpiresOn": lock["expires_on"]}
    if lock.get("duration") is not None:
        info["LockDuration"] = lock["duration"]
    if lock.get("cool_off") is not None:
        info["CoolOffPeriod"] = lock["cool_off"]
        info["CoolOffPeriodExpiresOn"] = lock["cool_off_expires_on"]
    return info


def _int_param(resp, name, low, high):
    value = resp._get_param(name)
    if value in (None, ""):
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise _err("InvalidParameterValue", "Value (%s) for parameter %s is invalid." % (value, name))
    if not low <= value <= high:
        raise _err("InvalidParameterValue", "Value (%d) for parameter %s is invalid. Expecting a value between %d "
                   "and %d." % (value, name, low, high))
    return value


def _lock_snapshot(self):
    snapshot_id = self._get_param("SnapshotId")
    mode = self._get_param("LockMode")
    cool_off = _int_param(self, "CoolOffPeriod", 1, 72)
    duration = _int_param(self, "LockDuration", 1, 36500)
    expiration = self._get_param("ExpirationDate")
    self.error_on_dryrun()
    if mode not in ("governance", "compliance"):
        raise _err("InvalidParameterValue", "Value (%s) for parameter lockMode is invalid." % mode)
    if (duration is None) == (expiration in (None, "")):
        raise _err("InvalidParameterCombination", "Specify either LockDuration or ExpirationDate, not both.")
    if mode == "governance" and cool_off is not None:
        raise _err("InvalidParameterCombination", "CoolOffPeriod can only be specified in compliance mode.")
    snap = self.ec2_backend.get_snapshot(snapshot_id)
    if snap.owner_id != self.ec2_backend.account_id:
        raise _err("UnauthorizedOperation", "You are not authorized to perform this operation.")
    at = now()
    expires = at + datetime.timedelta(days=duration) if duration is not None else _parse_time(expiration)
    if expires <= at:
        raise _err("InvalidParameterValue", "The lock expiration date must be in the future.")
    old = snap.__dict__.get("_sp_lock")
    state = lock_state(old, at) if old else "expired"
    if state == "compliance":
        # after the cool-off: only a longer lock, same mode, no new cool-off
        if mode != "compliance" or cool_off is not None or expires < old["expires_on"]:
            raise _err("InvalidParameterValue", "Snapshot %s is locked in compliance mode until %s: the lock can only "
                       "be extended, not shortened, removed or changed to governance." % (snapshot_id,
                                                                                          _iso(old["expires_on"])))
        lock = dict(old, expires_on=expires, duration=duration)
    else:
        lock = {"mode": mode, "created_on": at, "start": at, "expires_on": expires, "duration": duration,
                "cool_off": cool_off if mode == "compliance" else None,
                "cool_off_expires_on": at + datetime.timedelta(hours=cool_off) if mode == "compliance" and cool_off
                else None}
    snap._sp_lock = lock
    info = lock_info(snap)
    info.pop("OwnerId")
    return ActionResult(info)


def _unlock_snapshot(self):
    snapshot_id = self._get_param("SnapshotId")
    self.error_on_dryrun()
    snap = self.ec2_backend.get_snapshot(snapshot_id)
    lock = snap.__dict__.get("_sp_lock")
    state = lock_state(lock) if lock else None
    if state is None or state == "expired":
        raise _err("IncorrectState", "Snapshot %s is not locked." % snapshot_id)
    if state == "compliance":
        raise _err("IncorrectState", "Snapshot %s is locked in compliance mode and its cooling-off period has "
                   "expired; it cannot be unlocked until %s." % (snapshot_id, _iso(lock["expires_on"])))
    snap._sp_lock = None
    return ActionResult({"SnapshotId": snapshot_id})


def _page(self, items):
    max_results = self._get_param("MaxResults")
    token = self._get_param("NextToken")
    start = int(token) if token and str(token).isdigit() else 0
    if token and not str(token).isdigit():
        raise _err("InvalidPaginationToken", "The pagination token is invalid.")
    if max_results in (None, "") and not token:
        return items, None
    size = int(max_results or 1000)
    return items[start:start + size], (str(start + size) if start + size < len(items) else None)


def _describe_locked_snapshots(self):
    snapshot_ids = self._get_param("SnapshotIds", [])
    filters = self._filters_from_querystring() or {}
    self.error_on_dryrun()
    backend = self.ec2_backend
    snaps = [backend.get_snapshot(sid) for sid in snapshot_ids] if snapshot_ids else list(backend.snapshots.values())
    out = [lock_info(s) for s in snaps
           if s.__dict__.get("_sp_lock") is not None and s.owner_id == backend.account_id]
    wanted = filters.get("lock-state")
    if wanted:
        out = [i for i in out if i["LockState"] in wanted]
    page, token = _page(self, out)
    result = {"Snapshots": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


# --------------------------------------------------------------------------- the Recycle Bin

def _bin(backend):
    if "_sp_bin" not in backend.__dict__:
        backend._sp_bin = {}
    bin_ = backend._sp_bin
    for sid in [sid for sid, e in bin_.items() if now() >= e["exit"]]:  # retention over: gone for good
        entry = bin_.pop(sid)
        from . import _world
        _world.WORLD.drop_file(getattr(entry["snap"], "_sp_file", None))
    return bin_


def to_bin(backend, snapshot_id, retain_days):
    snap = backend.get_snapshot(snapshot_id)
    if is_locked(snap):
        raise _err(LOCKED_CODE, _locked_message(snap))
    del backend.snapshots[snapshot_id]
    at = now()
    _bin(backend)[snapshot_id] = {"snap": snap, "enter": at, "exit": at + datetime.timedelta(days=retain_days)}


def _list_snapshots_in_recycle_bin(self):
    snapshot_ids = self._get_param("SnapshotIds", [])
    self.error_on_dryrun()
    bin_ = _bin(self.ec2_backend)
    out = []
    for sid, entry in sorted(bin_.items()):
        if snapshot_ids and sid not in snapshot_ids:
            continue
        snap = entry["snap"]
        out.append({"SnapshotId": sid, "RecycleBinEnterTime": entry["enter"], "RecycleBinExitTime": entry["exit"],
                    "Description": snap.description or "", "VolumeId": snap.volume.id if snap.volume else ""})
    page, token = _page(self, out)
    result = {"Snapshots": page}
    if token:
        result["NextToken"] = token
    return ActionResult(result)


def _restore_snapshot_from_recycle_bin(self):
    snapshot_id = self._get_param("SnapshotId")
    self.error_on_dryrun()
    backend = self.ec2_backend
    entry = _bin(backend).pop(snapshot_id, None)
    if entry is None:
        raise _err("InvalidSnapshot.NotFound", "The snapshot '%s' does not exist in the Recycle Bin." % snapshot_id)
    snap = entry["snap"]
    backend.snapshots[snapshot_id] = snap
    return ActionResult({"SnapshotId": snapshot_id, "Description": snap.description or "",
                         "Encrypted": bool(snap.encrypted), "OwnerId": snap.owner_id, "Progress": "100%",
                         "StartTime": snap.start_time, "State": "completed",
                         "VolumeId": snap.volume.id if snap.volume else "", "VolumeSize": snap.volume.size})


# --------------------------------------------------------------------------- DeleteSnapshot

def _locked_message(snap):
    lock = snap.__dict__["_sp_lock"]
    return ("The snapshot '%s' is locked (%s until %s) and can't be deleted."
            % (snap.id, lock_state(lock), _iso(lock["expires_on"])))


def _delete_snapshot(self, snapshot_id):
    from . import _world
    snap = self.snapshots.get(snapshot_id)
    if snap is not None and _world._api_call("DeleteSnapshot"):
        if is_locked(snap):
            raise _err(LOCKED_CODE, _locked_message(snap))
        if _STATE["rule_days"] is not None and snap.owner_id == self.account_id:
            to_bin(self, snapshot_id, _STATE["rule_days"])
            return snap
    return _ORIG["delete_snapshot"](self, snapshot_id)


# --------------------------------------------------------------------------- control operations

def op_lock_clock(self, advance=None, offset=None):
    """Move the clock of the locks and the bin: ``advance`` seconds more, or to ``offset`` seconds from now."""
    if offset is not None:
        _STATE["offset"] = float(offset)
    if advance is not None:
        _STATE["offset"] += float(advance)
    return {"offset": _STATE["offset"], "now": _iso(now())}


def op_recycle_bin(self, snapshot_ids, retain_days=7, region=None):
    """Put snapshots in the Recycle Bin, as a DeleteSnapshot under a retention rule would."""
    from . import _world
    with self.lock:
        backend = self.backend(region)
        for sid in snapshot_ids:
            if sid not in backend.snapshots:
                raise _world.ControlError("no snapshot %s in %s" % (sid, region or self.region))
        for sid in snapshot_ids:
            to_bin(backend, sid, float(retain_days))
    return {"snapshot_ids": list(snapshot_ids)}


def op_recycle_bin_rule(self, retain_days=None):
    """While ``retain_days`` is set, DeleteSnapshot of our account's snapshots moves them into the bin."""
    _STATE["rule_days"] = None if retain_days is None else float(retain_days)
    return {"retain_days": _STATE["rule_days"]}


def op_locks(self, region=None):
    with self.lock:
        backend = self.backend(region)
        return {"locks": [lock_info(s) for s in backend.snapshots.values() if s.__dict__.get("_sp_lock")]}


def _op_reset(self, state=False):
    _STATE["offset"] = 0.0
    _STATE["rule_days"] = None
    return _ORIG["op_reset"](self, state=state)


def install():
    """Add the actions to moto's EC2 responses, the lock check to DeleteSnapshot, the control ops to World."""
    if _STATE["installed"]:
        return
    _STATE["installed"] = True
    from . import _world
    for name, func in (("lock_snapshot", _lock_snapshot), ("unlock_snapshot", _unlock_snapshot),
                       ("describe_locked_snapshots", _describe_locked_snapshots),
                       ("list_snapshots_in_recycle_bin", _list_snapshots_in_recycle_bin),
                       ("restore_snapshot_from_recycle_bin", _restore_snapshot_from_recycle_bin)):
        setattr(EC2Response, name, func)
    _ORIG["delete_snapshot"] = EBSBackend.delete_snapshot
    EBSBackend.delete_snapshot = _delete_snapshot
    _ORIG["op_reset"] = _world.World.op_reset
    _world.World.op_reset = _op_reset
    for name, func in (("op_lock_clock", op_lock_clock), ("op_recycle_bin", op_recycle_bin),
                       ("op_recycle_bin_rule", op_recycle_bin_rule), ("op_locks", op_locks)):
        setattr(_world.World, name, func)
