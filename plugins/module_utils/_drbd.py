# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DRBD: status parsers (8.4 and 9) and safe resource control.

Status sources, all normalised to one shape (see :func:`resource_summary`):

* DRBD 9: ``drbdsetup status --json`` (:func:`parse_status_json`);
* DRBD 8.4 (kernel) with drbd-utils 9 (which hands off to ``drbdsetup-84``):
  ``drbdsetup status --verbose --statistics`` (the same text ``drbdadm status`` prints, more
  fields; :func:`parse_status_text`), ``drbdsetup events2 --now --statistics``
  (:func:`parse_events2`, the same on 9) and ``/proc/drbd`` (:func:`parse_proc_drbd`: the only
  place 8.4 shows resync speed and time left). ``drbdsetup status --json`` does not exist on 8.4
  (``unrecognized option '--json'``, captured in ``tests/unit/fixtures/drbd/lab84``).

Sizes are KiB, as DRBD reports them. Generation identifiers come from ``drbdadm get-gi``
(:func:`parse_gi`); a current UUID of ``0000000000000004`` is freshly created metadata
(UUID_JUST_CREATED): the state in which skipping the initial resync is allowed (LINBIT user's
guide, "Skipping the initial resync").

The safety rules (``../shared/DOMAIN.md``, seed 003) are enforced by :class:`Resource`:

* promote only an UpToDate disk; ``force`` (``primary --force``) only where the local data is
  not empty and the peer does not hold an UpToDate copy (seed 003: the survivor is promoted
  first; promoting the new, empty disk would mirror it over the only good copy);
* never promote while the peer is Primary unless dual-primary is configured;
* ``create-md`` only on a device that holds neither data nor metadata, unless it is declared the
  replaced disk;
* ``new-current-uuid --clear-bitmap`` only on freshly created metadata, both sides connected and
  Inconsistent, with the proof that both backing devices come from one snapshot (checked against
  the EC2 catalog by :func:`same_snapshot`).

:func:`ensure` is the whole of ``drbd_resource`` (the order of the steps, the split inside a freeze, the
result); :func:`skip_initial_sync` the whole of ``drbd_skip_initial_sync`` (the proof, then the cleared bitmap);
:func:`info` the whole of ``drbd_info``. They are two modules so that only the one that talks to EC2 pays for
botocore: a DRBD task without it starts seconds faster on a small node.
"""

from __future__ import annotations

import json
import os
import re
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import Recorder, StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import DeviceResolver

JUST_CREATED = "0000000000000004"
GOOD_DISK = ("UpToDate",)
SYNC_STATES = ("SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "StartingSyncS", "StartingSyncT",
               "WFBitMapS", "WFBitMapT", "WFSyncUUID")
NO_DATA_DISKS = ("Diskless", "Inconsistent", "Outdated", "DUnknown", "Failed", "Attaching", "Detaching",
                 "Negotiating")
_COUNTERS = ("size", "read", "written", "al-writes", "bm-writes", "upper-pending", "lower-pending",
             "received", "sent", "out-of-sync", "pending", "unacked")


def _value(text):
    if re.match(r"^-?\d+$", text):
        return int(text)
    if re.match(r"^-?\d+\.\d+$", text):
        return float(text)
    if text in ("yes", "no"):
        return text == "yes"
    return text


def _pairs(tokens):
    out = {}
    for token in tokens:
        if ":" in token:
            key, value = token.split(":", 1)
            out[key] = _value(value)
    return out


def _new_resource(name):
    return {"name": name, "role": None, "suspended": None, "devices": [], "connections": []}


# -- parsers --------------------------------------------------------------------------------

def parse_status_text(text):
    """``drbdadm status`` / ``drbdsetup status [--verbose --statistics]`` (8.4 and 9 text form).

    Returns a list of resources. Indentation decides: a resource line at column 0, ``volume:`` /
    ``disk:`` lines for the local device, ``<peer> role:`` / ``peer connection:`` lines for a
    connection and the further-indented ``volume:``/``replication:`` lines for its peer device.
    """
    resources = []
    res = conn = target = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        tokens = raw.split()
        if indent == 0:
            res = _new_resource(tokens[0])
            res.update(_pairs(tokens[1:]))
            resources.append(res)
            conn = None
            target = res
            continue
        if res is None:
            raise StillpointError("cannot parse DRBD status: %r comes before any resource line" % raw)
        fields = _pairs(tokens)
        first = tokens[0]
        if conn is None and (first.startswith("volume:") or first.startswith("disk:")) and indent <= 2:
            target = {"volume": 0}
            res["devices"].append(target)
            target.update(fields)
        elif ":" not in first:
            # "<peer name> role:..." (9) or "peer connection:Connected role:..." (8.4: the peer is "peer")
            conn = {"name": first, "peer_devices": []}
            conn.update(fields)
            res["connections"].append(conn)
            target = conn
        elif conn is not None and (first.startswith("volume:") or first.startswith("replication:")) and (
                target is conn or first.startswith("volume:")):
            target = {"volume": 0}
            conn["peer_devices"].append(target)
            target.update(fields)
        else:
            target.update(fields)
    return [_normalise_text(r) for r in resources]


def _normalise_text(res):
    out = {"name": res["name"], "role": res.get("role"), "suspended": res.get("suspended"),
           "devices": [], "connections": []}
    for dev in res["devices"]:
        out["devices"].append(_device(dev.get("volume"), dev.get("minor"), dev.get("disk"), dev))
    for conn in res["connections"]:
        c = {"peer": conn["name"], "connection": conn.get("connection", "Connected" if conn.get("role") else None),
             "peer_role": conn.get("role"), "peer_devices": []}
        for pd in conn["peer_devices"]:
            c["peer_devices"].append(_peer_device(pd.get("volume"), pd.get("replication"), pd.get("peer-disk"),
                                                  pd, done=pd.get("done")))
        out["connections"].append(c)
    return out


def _device(volume, minor, disk, stats):
    dev = {"volume": volume, "minor": minor, "disk": disk}
    for key in ("size", "read", "written"):
        if key in stats:
            dev[key.replace("-", "_") + "_kib"] = stats[key]
    return dev


def _peer_device(volume, replication, peer_disk, stats, done=None):
    pd = {"volume": volume, "replication": replication, "peer_disk": peer_disk}
    for key in ("received", "sent", "out-of-sync"):
        if key in stats:
            pd[key.replace("-", "_") + "_kib"] = stats[key]
    if done is not None:
        pd["sync_percent"] = float(done)
    return pd


def parse_events2(text):
    """``drbdsetup events2 --now --statistics [res]``: ``exists <object> key:value ...`` lines."""
    by_name = {}
    conns = {}
    for raw in text.splitlines():
        tokens = raw.split()
        if len(tokens) < 2 or tokens[0] != "exists" or tokens[1] == "-":
            continue
        kind, fields = tokens[1], _pairs(tokens[2:])
        res = by_name.setdefault(fields.get("name"), _new_resource(fields.get("name")))
        if kind == "resource":
            res["role"], res["suspended"] = fields.get("role"), fields.get("suspended")
        elif kind == "device":
            res["devices"].append(_device(fields.get("volume"), fields.get("minor"), fields.get("disk"), fields))
        elif kind == "connection":
            conn = {"peer": fields.get("conn-name"), "connection": fields.get("connection"),
                    "peer_role": fields.get("role"), "peer_devices": []}
            conns[(res["name"], fields.get("peer-node-id"))] = conn
            res["connections"].append(conn)
        elif kind == "peer-device":
            conn = conns.get((res["name"], fields.get("peer-node-id")))
            if conn is None:
                continue
            conn["peer_devices"].append(_peer_device(fields.get("volume"), fields.get("replication"),
                                                     fields.get("peer-disk"), fields, done=fields.get("done")))
    return list(by_name.values())


def parse_status_json(text):
    """``drbdsetup status --json`` (DRBD 9)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StillpointError("drbdsetup status --json printed something that is not JSON (%s): %r"
                              % (exc, text[:200]))
    out = []
    for res in data:
        r = {"name": res.get("name"), "role": res.get("role"), "suspended": res.get("suspended"),
             "devices": [], "connections": []}
        for dev in res.get("devices", []):
            r["devices"].append(_device(dev.get("volume"), dev.get("minor"), dev.get("disk-state"), dev))
        for conn in res.get("connections", []):
            c = {"peer": conn.get("name"), "connection": conn.get("connection-state"),
                 "peer_role": conn.get("peer-role"), "peer_devices": []}
            for pd in conn.get("peer_devices", []):
                # percent-resync-done is the resync's progress (as ``done:`` in text); percent-in-sync is
                # how much of the device agrees with the peer, the fallback when no sync details are given
                done = (pd.get("percent-resync-done", pd.get("percent-in-sync"))
                        if pd.get("replication-state") in SYNC_STATES else None)
                c["peer_devices"].append(_peer_device(pd.get("volume"), pd.get("replication-state"),
                                                      pd.get("peer-disk-state"), pd, done=done))
            r["connections"].append(c)
        out.append(r)
    return out


_PROC_DEV = re.compile(r"^\s*(\d+): cs:(\S+) ro:(\S+?)/(\S+) ds:(\S+?)/(\S+)")
_PROC_SYNC = re.compile(r"sync'ed:\s*([\d.]+)% \((\d+)/(\d+)\)K")
_PROC_FINISH = re.compile(r"finish: (\d+):(\d+):(\d+) speed: ([\d,]+)")


def parse_proc_drbd(text):
    """``/proc/drbd`` (8.4): ``{"version", "minors": {minor: {...}}}``."""
    version = None
    minors = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("version:"):
            version = line.split()[1]
            continue
        m = _PROC_DEV.match(line)
        if m:
            cur = {"minor": int(m.group(1)), "connection": m.group(2), "role": m.group(3),
                   "peer_role": m.group(4), "disk": m.group(5), "peer_disk": m.group(6)}
            minors[cur["minor"]] = cur
            continue
        um = re.match(r"^\s*(\d+): cs:Unconfigured", line)
        if um:
            cur = {"minor": int(um.group(1)), "connection": "Unconfigured"}
            minors[cur["minor"]] = cur
            continue
        if cur is None:
            continue
        if re.match(r"^\s+ns:", line):
            for key, value in _pairs(line.split()).items():
                cur[key] = value
            continue
        m = _PROC_SYNC.search(line)
        if m:
            cur["sync_percent"] = float(m.group(1))
            cur["sync_left_kib"], cur["sync_total_kib"] = int(m.group(2)), int(m.group(3))
        m = _PROC_FINISH.search(line)
        if m:
            cur["sync_eta_s"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
            cur["sync_speed_kib_s"] = int(m.group(4).replace(",", ""))
    return {"version": version, "minors": minors}


def parse_gi(text):
    """``drbdadm get-gi <res>`` (8.4): current, bitmap and history UUIDs plus the flags."""
    line = next((ln.strip() for ln in text.splitlines() if re.match(r"^[0-9A-Fa-f]{16}:", ln.strip())), None)
    if line is None:
        raise StillpointError("cannot parse drbdadm get-gi output: %r" % text[:200])
    parts = line.split(":")
    uuids = [p.upper() for p in parts[:4]]
    flags = [int(p) for p in parts[4:] if p.isdigit()]
    names = ("consistent", "was_up_to_date", "primary", "connected", "full_sync", "peer_out_of_date",
             "crashed_primary")
    return {"current": uuids[0], "bitmap": uuids[1], "history": uuids[2:], "flags": dict(zip(names, flags)),
            "just_created": uuids[0] == JUST_CREATED}


def same_generation(a, b):
    """DRBD compares current UUIDs without their lowest bit (the primary marker)."""
    return (int(a, 16) & ~1) == (int(b, 16) & ~1)


def resource_summary(res):
    """One line of truth for a resource: its first volume, the first peer's figures, and over EVERY peer
    (three or more nodes): ``peers`` (each one's connection, role, disk, replication), ``any_peer_primary``,
    ``any_peer_good`` (a peer with an UpToDate or Consistent disk) and ``in_sync`` (all peers connected and
    UpToDate, nothing resyncing). The refusals read these, so no peer is overlooked."""
    dev = res["devices"][0] if res["devices"] else {}
    peers = []
    for conn in res["connections"]:
        pd = (conn.get("peer_devices") or [{}])[0]
        connection = conn.get("connection") or "StandAlone"
        peers.append({"peer": conn.get("peer"), "connection": connection,
                      "peer_role": conn.get("peer_role") or "Unknown",
                      "peer_disk": pd.get("peer_disk") or "DUnknown",
                      "replication": pd.get("replication") or ("Established" if connection == "Connected" else "Off"),
                      "out_of_sync_kib": pd.get("out_of_sync_kib"), "received_kib": pd.get("received_kib"),
                      "sent_kib": pd.get("sent_kib"), "sync_percent": pd.get("sync_percent")})
    first = peers[0] if peers else {"peer": None, "connection": "StandAlone", "peer_role": "Unknown",
                                    "peer_disk": "DUnknown", "replication": "Off", "out_of_sync_kib": None,
                                    "received_kib": None, "sent_kib": None, "sync_percent": None}
    out = {"name": res["name"], "role": res["role"], "disk": dev.get("disk"), "minor": dev.get("minor"),
           "size_kib": dev.get("size_kib")}
    out.update(first)
    if out["out_of_sync_kib"] is None and dev.get("out_of_sync_kib") is not None:
        out["out_of_sync_kib"] = dev["out_of_sync_kib"]  # StandAlone on 8.4: /proc/drbd's oos
    syncing = [p for p in peers if p["replication"] in SYNC_STATES]
    out["syncing"] = bool(syncing)
    if syncing and out["replication"] not in SYNC_STATES:
        out.update(replication=syncing[0]["replication"], sync_percent=syncing[0]["sync_percent"])
    out["peers"] = peers
    out["any_peer_primary"] = any(p["peer_role"] == "Primary" for p in peers)
    out["any_peer_good"] = any(p["peer_disk"] in ("UpToDate", "Consistent") for p in peers)
    out["in_sync"] = bool(peers) and out["disk"] == "UpToDate" and not syncing and all(
        p["connection"] == "Connected" and p["peer_disk"] == "UpToDate" for p in peers)
    return out


# -- the resource -----------------------------------------------------------------------------

class Drbd:
    """Reads DRBD state through a :class:`CommandRunner`. ``proc`` reads ``/proc/drbd`` (injectable)."""

    def __init__(self, runner, proc=None):
        self.run = runner
        self._proc = proc or _read_proc

    def kernel_version(self):
        text = self._proc()
        if text is None:
            raise StillpointError("DRBD is not loaded: /proc/drbd does not exist. Load the module (modprobe drbd) "
                                  "or install DRBD on this host.")
        return parse_proc_drbd(text)["version"]

    def is_9(self):
        version = self.kernel_version() or "0"
        return int(version.split(".")[0]) >= 9

    def resources(self, name=None):
        if self.is_9():
            argv = [self.run.bin("drbdsetup"), "status", "--json"] + ([name] if name else [])
            rc, out, err = self.run(argv, check=False)
            if rc != 0:
                return self._missing(name, rc, out, err, argv)
            found = parse_status_json(out)
        else:
            argv = [self.run.bin("drbdsetup"), "status", "--verbose", "--statistics"] + ([name] if name else [])
            rc, out, err = self.run(argv, check=False)
            if rc != 0:
                return self._missing(name, rc, out, err, argv)
            found = parse_status_text(out)
            # read again after the status command: its resync figures go with that status
            proc = parse_proc_drbd(self._proc() or "")["minors"]
            for res in found:
                for dev in res["devices"]:
                    extra = proc.get(dev.get("minor"), {})
                    for key in ("sync_eta_s", "sync_speed_kib_s", "sync_percent"):
                        if key in extra:
                            dev[key] = extra[key]
                    if "oos" in extra:  # the only place 8.4 shows it while StandAlone
                        dev["out_of_sync_kib"] = extra["oos"]
        return found

    @staticmethod
    def _missing(name, rc, out, err, argv):
        if name and "No such resource" in (err or "") + (out or ""):
            return []
        raise StillpointError("%s failed (rc=%s): %s" % (" ".join(argv), rc, (err or out).strip()),
                              rc=rc, stdout=out, stderr=err)

    def status(self, name, resources=None):
        """The summary of resource ``name``, or ``{"name", "configured": False}`` when it is down;
        ``resources`` is :meth:`resources`' answer when the caller already read it."""
        found = [r for r in (self.resources(name) if resources is None else resources) if r["name"] == name]
        if not found:
            return {"name": name, "configured": False, "role": None, "disk": None, "connection": None,
                    "peer_role": None, "peer_disk": None, "in_sync": False, "syncing": False}
        out = resource_summary(found[0])
        dev = found[0]["devices"][0] if found[0]["devices"] else {}
        for key in ("sync_eta_s", "sync_speed_kib_s"):
            if key in dev:
                out[key] = dev[key]
        if out["sync_percent"] is None and "sync_percent" in dev and out["syncing"]:
            out["sync_percent"] = dev["sync_percent"]
        out["configured"] = True
        return out

    def gi(self, name):
        rc, out, err = self.run([self.run.bin("drbdadm"), "get-gi", name], check=False)
        if rc != 0:
            return None
        return parse_gi(out)

    def backing_disk(self, name):
        _rc, out, _err = self.run([self.run.bin("drbdadm"), "sh-ll-dev", name],
                                  what="drbdadm sh-ll-dev %s (is resource %s defined in /etc/drbd.d?)" % (name, name))
        return out.strip().splitlines()[0] if out.strip() else None

    def two_primaries_allowed(self, name):
        _rc, out, _err = self.run([self.run.bin("drbdadm"), "dump", name], what="drbdadm dump %s" % name)
        return bool(re.search(r"allow-two-primaries\s+yes", out))

    def signature(self, device):
        """The signatures on ``device``: ``{"TYPE", "TYPES", ...}`` or ``{}`` (nothing found).

        ``blkid -p`` names one signature, and on a DRBD backing disk with internal metadata it names DRBD's
        (``TYPE=drbd``) even when a filesystem starts the disk (seen in the lab on a restored disk), or answers
        ambivalent (rc 8). So whenever it does not name a plain filesystem, ``wipefs --no-act`` (lists, never
        erases) lists them all: ``TYPE`` is then the first that is not DRBD metadata, ``TYPES`` all of them."""
        rc, out, err = self.run([self.run.bin("blkid"), "-p", "-o", "export", device], check=False)
        if rc == 2:
            return {}
        if rc not in (0, 8):
            raise StillpointError("blkid -p %s failed (rc=%s): %s" % (device, rc, (err or out).strip()),
                                  rc=rc, stdout=out, stderr=err)
        found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line) if rc == 0 else {}
        if rc == 0 and found.get("TYPE") != "drbd":
            return found
        _rc, listed, _err = self.run([self.run.bin("wipefs"), "--no-act", "--noheadings", "--output", "TYPE",
                                      device], what="wipefs --no-act %s (list the signatures)" % device)
        types = [t.strip() for t in listed.splitlines() if t.strip()]
        data = [t for t in types if t != "drbd"]
        found.update(TYPE=(data or types or ["drbd"])[0], TYPES=",".join(types))
        if data:
            found["USAGE"] = "filesystem or other data, and DRBD metadata"
        return found


def _read_proc():
    try:
        with open("/proc/drbd") as f:
            return f.read()
    except OSError:
        return None


class Resource:
    """Drive one DRBD resource towards a wanted state, refusing what would lose data.

    Every change goes through :meth:`_do` (the collection's :class:`Recorder`): recorded with its
    command, rc and duration, and in check mode only recorded (``planned``).
    """

    def __init__(self, drbd, name, check_mode=False, sleep=time.sleep, clock=time.monotonic):
        self.drbd = drbd
        self.run = drbd.run
        self.name = name
        self.check_mode = check_mode
        self.recorder = Recorder(drbd.run, check_mode=check_mode, clock=clock)
        self.warnings = []
        self._sleep = sleep
        self._clock = clock

    @property
    def actions(self):
        return self.recorder.actions

    def _do(self, what, argv, data=None, fail=None):
        """Run (or, in check mode, plan) a changing command; returns its (rc, out, err), None in check mode."""
        return self.recorder.act(what, argv, fail=fail, data=data)

    def adm(self, *args):
        return [self.run.bin("drbdadm")] + list(args) + [self.name]

    # -- metadata ----------------------------------------------------------------------------

    def create_md(self, replaced_disk=None):
        """Create metadata on the backing disk if it has none. A disk holding data or metadata is
        refused unless ``replaced_disk`` names it (the disk that was replaced or restored)."""
        st = self.drbd.status(self.name)
        disk = self.drbd.backing_disk(self.name)
        if st["configured"] and st["disk"] not in (None, "Diskless"):
            return False  # attached: its metadata is in use
        found = self.drbd.signature(disk)
        declared = replaced_disk is not None and _same_device(replaced_disk, disk)
        if replaced_disk is not None and not declared:
            raise StillpointError(
                "replaced_disk is %s but resource %s's backing disk is %s: refusing to create metadata on a disk "
                "that was not declared replaced. Name the disk as `drbdadm sh-ll-dev %s` prints it."
                % (replaced_disk, self.name, disk, self.name))
        if found and not declared:
            what = "DRBD metadata" if found.get("TYPE") == "drbd" else "a %s signature (%s)" % (
                found.get("TYPE"), found.get("USAGE", "data"))
            raise StillpointError(
                "refusing create-md on %s (resource %s): it holds %s. Creating metadata over it would lose that or "
                "make it look like a new, empty disk. If this disk was replaced or restored and its metadata must be "
                "recreated, set replaced_disk: %s." % (disk, self.name, what, disk), device=disk, signature=found)
        if declared:
            self._do("create metadata on %s (declared replaced)" % disk,
                     [self.run.bin("drbdadm"), "create-md", "--force", self.name])
            return True
        # drbdmeta looks beyond signatures ("Found some data"); without --force it refuses on a TTY-less stdin
        done = self._do("create metadata on %s" % disk, self.adm("create-md"), data="", fail=False)
        if done is not None and done[0] != 0:
            rc, out, err = done
            raise StillpointError(
                "refusing create-md on %s (resource %s): drbdmeta found data on it: %s. If this disk was replaced "
                "and may be overwritten, set replaced_disk: %s." % (disk, self.name, _one_line(out + err), disk),
                rc=rc, stdout=out, stderr=err, device=disk)
        return True

    # -- up/down, connection -----------------------------------------------------------------

    def up(self):
        st = self.drbd.status(self.name)
        if not st["configured"]:
            self._do("bring %s up (attach + connect)" % self.name, self.adm("up"))
            return True
        if st["disk"] == "Diskless":
            self._do("attach %s's backing disk" % self.name, self.adm("attach"))
            return True
        return False

    def down(self):
        st = self.drbd.status(self.name)
        if not st["configured"]:
            return False
        if st["role"] == "Primary":
            raise StillpointError("resource %s is Primary here: demote it (role: secondary, after unmounting what "
                                  "uses it) before taking it down" % self.name)
        self._do("take %s down" % self.name, self.adm("down"))
        return True

    def connect(self):
        st = self.drbd.status(self.name)
        if st["connection"] not in ("StandAlone", None):
            return False
        self._do("connect %s to its peer" % self.name, self.adm("connect"))
        return True

    def disconnect(self, freezer=None):
        """Disconnect; with ``freezer`` (a Guardian), inside a freeze: freeze, disconnect, thaw.
        Returns ``None`` (nothing to do) or ``{"split_time", "window_ms", ...}``."""
        st = self.drbd.status(self.name)
        if st["connection"] in ("StandAlone", None):
            return None
        if st["connection"] == "Connected" and not st["in_sync"] and freezer is not None:
            raise StillpointError(
                "resource %s is not in sync (%s/%s, %s): a split now would not hold a complete copy on the peer. "
                "Wait for the resync to finish." % (self.name, st["disk"], st["peer_disk"], st["replication"]))
        argv = self.adm("disconnect")
        if self.check_mode:
            self._do("disconnect %s%s" % (self.name, " inside a freeze" if freezer else ""), argv)
            return {"planned": True}
        out = {}
        if freezer is not None:
            frozen = freezer.freeze()
            try:
                out["split_time"] = _utc_now()
                self._do("disconnect %s (filesystems frozen)" % self.name, argv)
            finally:
                record = freezer.thaw()
            out.update(freeze=frozen, thaw=record, window_ms=record.get("window_ms"),
                       deadline_thawed=record.get("deadline_thawed", False))
        else:
            out["split_time"] = _utc_now()
            self._do("disconnect %s" % self.name, argv)
        return out

    # -- roles -------------------------------------------------------------------------------

    def promote(self, force=False):
        st = self.drbd.status(self.name)
        if not st["configured"]:
            raise StillpointError("resource %s is not up: bring it up (state: up) before promoting it" % self.name)
        if st["role"] == "Primary":
            return False
        if st.get("any_peer_primary") and not self.drbd.two_primaries_allowed(self.name):
            raise StillpointError(
                "refusing to promote %s: the peer is Primary and dual-primary is not configured (allow-two-primaries). "
                "Demote the peer first (role: secondary there)." % self.name, status=st)
        if st["disk"] in GOOD_DISK:
            self._do("promote %s" % self.name, self.adm("primary"))
            return True
        if not force:
            raise StillpointError(
                "refusing to promote %s: the local disk is %s, not UpToDate (its data is not known to be good). "
                "Promote the node whose disk is UpToDate (seed 003: the survivor first). Only if this disk is "
                "known to hold the data to keep, set force: true." % (self.name, st["disk"]), status=st)
        if st["disk"] == "Diskless":
            raise StillpointError("refusing to promote %s with force: there is no local disk (Diskless)" % self.name,
                                  status=st)
        if st.get("any_peer_good"):
            good = ["%s (%s)" % (p["peer"], p["peer_disk"]) for p in st["peers"]
                    if p["peer_disk"] in ("UpToDate", "Consistent")]
            raise StillpointError(
                "refusing to force %s primary: peer %s holds a good copy. Forcing this %s disk primary would make it "
                "the sync source and overwrite that peer (seed 003). Promote that peer instead."
                % (self.name, ", ".join(good), st["disk"]), status=st)
        disk = self.drbd.backing_disk(self.name)
        found = self.drbd.signature(disk)
        if not found or found.get("TYPE") == "drbd":
            raise StillpointError(
                "refusing to force %s primary: its backing disk %s shows no filesystem or other data signature: it "
                "looks empty, and as sync source it would blank the peer. Check the disk; nothing was changed."
                % (self.name, disk), status=st, signature=found)
        self._do("force %s primary (local data on %s: %s; becomes the sync source)"
                 % (self.name, disk, found.get("TYPE")), [self.run.bin("drbdadm"), "primary", "--force", self.name])
        self.warnings.append("%s was forced primary: its data (%s on %s) is the sync source; the peer will be "
                             "overwritten by a full resync" % (self.name, found.get("TYPE"), disk))
        return True

    def demote(self):
        st = self.drbd.status(self.name)
        if not st["configured"] or st["role"] != "Primary":
            return False
        self._do("demote %s" % self.name, self.adm("secondary"))
        return True

    # -- skipping the initial resync ----------------------------------------------------------

    def clear_bitmap(self, proof):
        """``new-current-uuid --clear-bitmap`` on fresh metadata (both sides Inconsistent and connected).
        ``proof`` is the module's verdict that both backing devices are one snapshot (catalog)."""
        st = self.drbd.status(self.name)
        if st["in_sync"]:
            return False
        gi = self.drbd.gi(self.name)
        problems = []
        if not proof or not proof.get("same_snapshot"):
            problems.append("no proof that both backing devices come from one snapshot of one backup set")
        if gi is None or not gi["just_created"]:
            problems.append("the local metadata is not freshly created (current UUID %s, want %s): recreate it on "
                            "both sides (create_md with replaced_disk)" % (gi and gi["current"], JUST_CREATED))
        if st["connection"] != "Connected":
            problems.append("the resource is not connected (%s): both sides must be up and connected" % st["connection"])
        if st["disk"] != "Inconsistent" or st["peer_disk"] != "Inconsistent":
            problems.append("the disks are %s/%s, not Inconsistent/Inconsistent (fresh metadata on both sides)"
                            % (st["disk"], st["peer_disk"]))
        if problems:
            raise StillpointError(
                "refusing new-current-uuid --clear-bitmap on %s: %s. Skipping the resync is only safe over "
                "bit-identical backing devices with fresh metadata; otherwise let DRBD resync."
                % (self.name, "; ".join(problems)), status=st, gi=gi)
        self._do("skip the initial resync of %s (new-current-uuid --clear-bitmap; both sides are snapshot %s)"
                 % (self.name, proof.get("snapshot_id")),
                 [self.run.bin("drbdadm"), "new-current-uuid", "--clear-bitmap", self.name])
        return True

    def plan_clear_bitmap(self, proof):
        """Check mode's :meth:`clear_bitmap`: the connection it needs is only planned, so only the proof and
        whether the resource is already in sync decide."""
        if self.drbd.status(self.name)["in_sync"]:
            return False
        self._do("skip the initial resync of %s (snapshot %s)" % (self.name, proof["snapshot_id"]),
                 [self.run.bin("drbdadm"), "new-current-uuid", "--clear-bitmap", self.name])
        return True

    # -- waiting -------------------------------------------------------------------------------

    def wait_connected(self, timeout, interval=1.0):
        """Poll until the peer is connected or ``timeout`` seconds passed; returns the last status (the
        caller's refusals judge it)."""
        deadline = self._clock() + timeout
        while True:
            st = self.drbd.status(self.name)
            if st["connection"] == "Connected" or self._clock() > deadline:
                return st
            self._sleep(interval)

    def wait_sync(self, timeout, interval=1.0, on_progress=None):
        """Until both disks are UpToDate and connected. Returns the observed resync figures."""
        t0 = self._clock()
        first = self.drbd.status(self.name)
        start = {"out_of_sync_kib": first.get("out_of_sync_kib"), "received_kib": first.get("received_kib"),
                 "sent_kib": first.get("sent_kib")}
        progress = []
        st = first
        while not st["in_sync"]:
            if st["connection"] in ("StandAlone", None) or st["disk"] in ("Diskless", None):
                raise StillpointError("resource %s cannot sync: %s, disk %s/%s" % (
                    self.name, st["connection"], st["disk"], st["peer_disk"]), status=st)
            if self._clock() - t0 > timeout:
                raise StillpointError("resource %s did not reach UpToDate/UpToDate within %ss (%s, %s%%)" % (
                    self.name, timeout, st["replication"], st.get("sync_percent")), status=st, progress=progress)
            if st["syncing"]:
                point = {"t_s": round(self._clock() - t0, 1), "percent": st.get("sync_percent"),
                         "out_of_sync_kib": st.get("out_of_sync_kib")}
                if not progress or progress[-1]["percent"] != point["percent"]:
                    progress.append(point)
                    if on_progress:
                        on_progress(point)
            self._sleep(interval)
            st = self.drbd.status(self.name)
        return {"seconds": round(self._clock() - t0, 3), "start": start, "progress": progress,
                "received_kib": _delta(st.get("received_kib"), start["received_kib"]),
                "sent_kib": _delta(st.get("sent_kib"), start["sent_kib"]), "status": st}


# -- the modules' runs -------------------------------------------------------------------------------

def ensure(drbd, params, check_mode=False, diff=False, protect_paths=(), resolver=None,
           sleep=time.sleep, clock=time.monotonic):
    """What ``drbd_resource`` does: drive resource ``params["name"]`` towards ``params`` (the module's options)
    and return the module's result (``changed``, ``status``, ``actions``, and ``freeze_plan``, ``split``,
    ``sync``, ``warnings``, ``diff`` where they apply).

    ``protect_paths`` are ``(path, why)`` never to freeze (or a callable returning them, called only when
    ``params["freeze"]`` names filesystems); ``resolver`` maps disks to EBS volumes (a :class:`DeviceResolver` by
    default). A refusal or failure raises :class:`StillpointError` carrying the ``actions`` taken so far.
    """
    if params["freeze"] and params["connection"] != "disconnected":
        raise StillpointError("freeze is only used to split the mirror: set connection: disconnected with it")
    if params["replaced_disk"] and not params["create_md"]:
        raise StillpointError("replaced_disk only means something with create_md: true")
    res = Resource(drbd, params["name"], check_mode=check_mode, sleep=sleep, clock=clock)
    resolver = resolver or DeviceResolver()
    return _run(res, diff, lambda result: _converge(res, params, result, protect_paths, resolver))


def skip_initial_sync(drbd, params, check_mode=False, diff=False, ec2=None, resolver=None,
                      sleep=time.sleep, clock=time.monotonic):
    """What ``drbd_skip_initial_sync`` does: prove from the catalog (:func:`same_snapshot`, ``ec2`` makes the EC2
    client) that both sides' backing volumes come from one snapshot of set ``params["set_id"]``, wait until the
    resource is connected and clear the bitmap (``new-current-uuid --clear-bitmap``), which
    :meth:`Resource.clear_bitmap` refuses unless the metadata is fresh and both sides are Inconsistent. Returns
    the module's result (``changed``, ``status``, ``actions``, ``proof``, ``diff``)."""
    res = Resource(drbd, params["name"], check_mode=check_mode, sleep=sleep, clock=clock)

    def converge(result):
        result["proof"] = same_snapshot(res, params, ec2, resolver or DeviceResolver())
        if res.check_mode:
            return res.plan_clear_bitmap(result["proof"])
        res.wait_connected(params["connect_timeout"])
        return res.clear_bitmap(result["proof"])
    return _run(res, diff, converge)


def _run(res, diff, converge):
    """Status before, ``converge(result)`` (returns whether anything changed), status after: the modules'
    result, with the ``actions`` taken so far on any :class:`StillpointError`."""
    result = {}
    try:
        before = res.drbd.status(res.name)
        result["changed"] = converge(result)
        after = res.drbd.status(res.name)
    except StillpointError as e:
        e.details.setdefault("actions", res.actions)
        raise
    result.update(status=after, actions=res.actions)
    if res.warnings:
        result["warnings"] = res.warnings
    if diff:
        result["diff"] = dict(before=before, after=after)
    return result


def _converge(res, params, result, protect_paths, resolver):
    """The steps in their one safe order (see drbd_resource's description); returns whether anything changed."""
    changed = False
    if params["state"] == "down":
        if params["role"] == "secondary":
            changed |= res.demote()
        return res.down() or changed
    if params["create_md"]:
        changed |= res.create_md(replaced_disk=_disk_path(params["replaced_disk"], resolver))
    changed |= res.up()
    if params["connection"] == "connected":
        changed |= res.connect()
    if params["role"] == "secondary":
        changed |= res.demote()
    if params["connection"] == "disconnected":
        changed |= _split(res, params, result, protect_paths)
    if params["role"] == "primary":
        changed |= res.promote(force=params["force"])
    if params["wait_sync"] and not res.check_mode:
        result["sync"] = res.wait_sync(params["sync_timeout"])
    return changed


def _split(res, params, result, protect_paths):
    """Disconnect, inside a freeze of ``params["freeze"]`` (through the guardian) when it names filesystems."""
    # imported here, not at the top: only the split freezes, and the freeze library is the largest of all
    # (its compile costs every drbd_info poll on a small node)
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze

    freezer = None
    if params["freeze"]:
        if callable(protect_paths):
            protect_paths = protect_paths()
        plan = _freeze.check_mountpoints(params["freeze"], protect_paths=protect_paths)
        freezer = True if res.check_mode else _freeze.Guardian.start(plan, deadline=params["freeze_deadline"])
        result["freeze_plan"] = plan
    try:
        split = res.disconnect(freezer=freezer)
    finally:
        if freezer not in (None, True):
            freezer.close()
    if split is None:
        return False
    result["split"] = {k: v for k, v in split.items() if k != "planned"}
    return True


def _disk_path(value, resolver):
    """``replaced_disk`` as a device path: an EBS volume id is resolved to its disk on this host."""
    if value and value.startswith("vol-"):
        found = resolver.devices_for_volume(value)
        if not found:
            raise StillpointError("replaced_disk %s: no disk of this EBS volume is attached to this host" % value)
        return found[0]
    return value


def same_snapshot(res, proof_in, ec2, resolver):
    """The catalog's proof that this host's backing volume and the others in ``proof_in["volume_ids"]`` were
    created from one snapshot of backup set ``proof_in["set_id"]`` (``restore.same_snapshot_proof``), plus
    ``local_volume``. Every EC2 failure becomes a :class:`StillpointError` naming the calls."""
    # imported here, not at the top: only this proof talks to EC2, and botocore costs every other DRBD task
    # (drbd_info's polls) seconds of import on a small node. Restore side on purpose: skipping the initial
    # resync needs the proof that both sides' volumes were restored from one snapshot of one backup set,
    # which is what the restore library checks (same_snapshot_proof).
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _ebs as ebs
    from ansible_collections.stillpoint.snapshots.plugins.module_utils import _restore as restore

    local = res.drbd.backing_disk(res.name)
    local_volume = resolver.volume_for_path(local)
    if local_volume not in proof_in["volume_ids"]:
        raise StillpointError("this host's backing disk %s is volume %s, which is not among volume_ids %s"
                              % (local, local_volume, proof_in["volume_ids"]))
    try:
        proof = restore.same_snapshot_proof(ec2(), proof_in["set_id"], proof_in["volume_ids"])
    except ebs.aws_errors() as e:
        raise ebs.aws_error("DescribeSnapshots/DescribeVolumes (the same-snapshot proof from backup set %s)"
                            % proof_in["set_id"], e)
    proof["local_volume"] = local_volume
    return proof


def info(drbd, name=None, backing=True, gi=False, resolver=None):
    """What ``drbd_info`` returns: ``kernel_version``, ``resources``, ``summaries`` and, with ``name``,
    ``summary`` (with ``backing``: its backing disk and EBS volume), with ``gi`` the generation identifiers."""
    result = dict(changed=False, kernel_version=drbd.kernel_version())
    resources = drbd.resources(name)
    result["resources"] = resources
    result["summaries"] = {r["name"]: dict(resource_summary(r), configured=True) for r in resources}
    if name:
        result["summary"] = drbd.status(name, resources)
        if backing:
            disk = drbd.backing_disk(name)
            result["summary"]["backing_disk"] = disk
            result["summary"]["volume_id"] = (resolver or DeviceResolver()).volume_for_path(disk) if disk else None
    if gi:
        names = [name] if name else [r["name"] for r in resources]
        result["gi"] = {n: drbd.gi(n) for n in names}
    return result


def _delta(after, before):
    if after is None or before is None:
        return None
    return after - before if after >= before else after  # counters restart on (re)connect


def _same_device(a, b):
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (TypeError, ValueError):
        return a == b


def _one_line(text):
    return " ".join(line.strip() for line in text.splitlines() if line.strip())[:400]


def _utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
