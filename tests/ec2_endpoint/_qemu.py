# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu backend: an emulated instance is a real qemu VM of the lab (``tests/lab/vm.py``).

For an instance made a qemu instance (``World.op_make_qemu``) the endpoint does to the VM what EC2
and the Nitro hypervisor do to an instance:

* AttachVolume: the volume's image (a sparse file made here if it has none) is hot-plugged over
  QMP (``blockdev-add`` + ``device_add nvme,serial=vol<hex>``); the attachment stays ``attaching``
  until qemu did it. DetachVolume: ``device_del``, ``DEVICE_DELETED``, ``blockdev-del`` (after any
  backup job that still reads the node), ``detaching`` meanwhile. A stopped VM gets its attached
  volumes cold-plugged at the next start.
* CreateSnapshot(s) of volumes plugged into a running VM: ONE QMP ``transaction`` of
  ``blockdev-backup sync=full`` actions per call (every member at the same instant, the guest
  writing on), each into a sparse ``<state-dir>/snapshots/<snap-id>.img``; the snapshot is
  ``pending`` with the job's real progress until the job concludes.
* StopInstances / StartInstances / TerminateInstances power the VM off (``stopping``: SSH
  poweroff, QMP quit, SIGKILL), boot it (``pending`` until qemu runs) or kill it.
* A guest that powers itself off (``shutdown -h`` inside it, e.g. CLUSTERPRO's ``clpdown``) makes its
  instance ``stopped``, as EC2 does with the default InstanceInitiatedShutdownBehavior ``stop``.

Threads and locks. Moto's models are only touched under ``World.lock`` (EC2 requests hold it);
QMP is only used under the VM's own ``lock`` (one persistent connection per VM on
``vm.qmp_path``, reconnected when the VM's PID changes); ``QemuBackend.cond`` guards the flags of
disks and jobs that moto's status properties read. Order: World.lock, then a VM lock, then cond;
no thread ever waits for World.lock while it holds a VM lock. Each VM has a worker thread that
runs its slow operations in call order (hot-plug, unplug, power off, boot); one poller thread
follows the backup jobs (``query-jobs``) and notices VMs restarted behind the endpoint's back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import queue
import struct
import subprocess
import sys
import threading
import time

from tests.ec2_endpoint.imds import ImdsServer
from tests.lab.qmp import QMP, QMPError
from tests.lab.vm import VM, LabError, disk_node, nvme_serial

from ._sparse import sparse_copy

HOST_ALIAS = "10.0.2.100"  # the host's forwarded ports, as the guest sees them (qemu user network)
IMDS_GUEST_PORT = 80
EC2_GUEST_PORT = 8080
SPEC_KEYS = ("name", "dir", "image", "ssh_port")

JOB_POLL_SECONDS = 0.1  # query-jobs while backups run
WATCH_SECONDS = 0.5  # look for VMs (re)started behind our back
JOB_WAIT_SECONDS = 600.0  # stop/terminate/detach wait at most this long for backup jobs
DEVICE_DELETED_SECONDS = 30.0
POWEROFF_SECONDS = 60.0  # after `systemctl poweroff` answered; then QMP quit, then SIGKILL


class QemuError(Exception):
    """A step of the qemu backend failed (the VM is not running, QMP refused, ...)."""


def node_name(volume_id):
    """QMP node name of a volume's disk image (``ebs-vol0123...``)."""
    return "ebs-" + nvme_serial(volume_id)


def device_id(volume_id):
    """QMP id of a volume's NVMe controller (``nvme-vol0123...``)."""
    return "nvme-" + nvme_serial(volume_id)


def target_node(snapshot_id):
    """QMP node name of a snapshot's image while its backup job writes it (``bk-snap0123...``)."""
    return "bk-" + snapshot_id.replace("-", "")


def make_image(path, size):
    """A sparse file of ``size`` bytes (kept if it exists)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


# --------------------------------------------------------------------------- keeping images sparse

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_EXTENT_UNWRITTEN = 0x800
_FALLOC_PUNCH = 0x1 | 0x2  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_EXTENTS = 256
_libc = None


def _fallocate():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return _libc.fallocate


def _unwritten_extents(fd):
    """(offset, length) of the preallocated-but-unwritten extents of ``fd`` (FIEMAP)."""
    start, flags = 0, _FIEMAP_FLAG_SYNC
    while True:
        buf = bytearray(struct.pack("=QQIIII", start, (1 << 64) - 1 - start, flags, 0, _EXTENTS, 0)
                        + bytes(56 * _EXTENTS))
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
        flags = 0
        mapped = struct.unpack_from("=I", buf, 20)[0]
        if not mapped:
            return
        last = False
        for i in range(mapped):
            logical, _physical, length, _r1, _r2, eflags = struct.unpack_from("=QQQQQI", buf, 32 + 56 * i)
            if eflags & _FIEMAP_EXTENT_UNWRITTEN:
                yield logical, length
            last = last or bool(eflags & _FIEMAP_EXTENT_LAST)
            start = logical + length
        if last:
            return


def punch_unwritten(path):
    """Punch holes where ``path`` has unwritten extents; returns the bytes freed.

    qemu's backup job copies the zero parts of a disk as write-zeroes requests without the unmap
    flag, which file-posix turns into ``fallocate(FALLOC_FL_ZERO_RANGE)``: unwritten extents that
    read as zeroes but take disk space, and that SEEK_DATA reports as data (so that a sparse copy
    would copy them). ``detect-zeroes=unmap`` only catches zero buffers, not these. Filesystems
    without FIEMAP are left as they are."""
    freed = 0
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            extents = list(_unwritten_extents(fd))
        except OSError:
            return 0
        fallocate = _fallocate()
        for offset, length in extents:
            if fallocate(fd, _FALLOC_PUNCH, offset, length) != 0:
                err = ctypes.get_errno()
                raise OSError(err, "fallocate(PUNCH_HOLE) on %s: %s" % (path, os.strerror(err)))
            freed += length
    finally:
        os.close(fd)
    return freed


def _ms(t0, t1=None):
    return round(((time.monotonic() if t1 is None else t1) - t0) * 1000.0, 1)


# --------------------------------------------------------------------------- state

class Disk:
    """A volume attached to a qemu instance: an NVMe disk of its VM (attached, or detaching)."""

    def __init__(self, volume_id, instance_id, path, delay, info):
        self.volume_id = volume_id
        self.instance_id = instance_id
        self.file = path
        self.serial = nvme_serial(volume_id)
        self.node = node_name(volume_id)
        self.device_id = device_id(volume_id)
        self.delay = delay  # ``attaching`` lasts this long after the plug (--attach-seconds)
        self.info = info  # the call log's backend entry of the AttachVolume, or None
        self.detach_info = None
        self.ready = False  # hot-plugged (or recorded for a VM that does not run)
        self.ready_at = None
        self.present = False  # its node exists in the running VM
        self.detach = False  # a detach was asked for
        self.t_detach = None
        self.released = False  # ... and is done: nothing of it is left in the VM
        self.released_at = None
        self.error = None
        self.t_call = time.monotonic()

    def boot_spec(self):
        return {"node": self.node, "file": self.file, "serial": self.serial, "id": self.device_id}

    def status(self, attached):
        """The attachment state moto should show, given the one moto keeps (``attached``...)."""
        if attached != "attached":
            return attached
        if not self.ready or time.monotonic() < self.ready_at + self.delay:
            return "attaching"
        return "attached"


class Job:
    """A snapshot copied by a qemu backup job (or, when asked while the VM was powering off, copied
    from the volume's image once the VM is down: ``deferred``)."""

    def __init__(self, snapshot, vm, disk, path, size, info):
        self.snapshot = snapshot
        self.snapshot_id = snapshot.id
        self.volume_id = disk.volume_id
        self.vm = vm
        self.source_node = disk.node
        self.source_file = disk.file
        self.target_node = target_node(snapshot.id)
        self.file = path
        self.size = size
        self.info = info  # this member's dict in the call log's backend entry
        self.current = 0
        self.total = size
        self.started = False  # the qemu job exists
        self.deferred = False
        self.done = False
        self.error = None
        self.cancel = False
        self.cancel_sent = False
        self.deleted = False
        self.t_start = time.monotonic()
        self.t_end = None

    def progress(self):
        if self.done and not self.error:
            return 100
        if not self.total:
            return 0
        return max(0, min(99, int(100 * self.current / self.total)))


class QemuVM:
    """One qemu instance: its VM, IMDS emulator, persistent QMP connection and worker thread."""

    def __init__(self, backend, instance, region, spec):
        self.backend = backend
        self.instance = instance  # moto's Instance
        self.instance_id = instance.id
        self.region = region
        self.vm = VM(spec)
        self.imds = None
        self.lock = threading.RLock()  # all QMP use, powering_off, disk presence
        self.conn = None
        self.conn_pid = None
        self.disks = {}  # volume_id -> Disk, not yet released
        self.powering_off = False
        self.terminating = False
        self.booted_pids = set()
        self.seen_pid = None  # the VM's qemu as the poller last saw it running
        self.events = []  # what the worker did outside any API call (sync after a restart), last 20
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="stillpoint-qemu-%s" % self.instance_id, daemon=True)
        self.thread.start()

    @property
    def name(self):
        return self.vm.name

    @property
    def spec(self):
        return self.vm.spec

    # ------------------------------------------------------------------ QMP (caller holds self.lock)

    def _drop(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        self.conn_pid = None

    def connect(self):
        """The persistent QMP connection; a new one (and disk presence read afresh) after a restart."""
        pid = self.vm.pid
        if pid is None:
            self._drop()
            for disk in list(self.disks.values()):
                disk.present = False
            raise QemuError("%s (instance %s) is not running" % (self.name, self.instance_id))
        if self.conn is None or self.conn_pid != pid:
            self._drop()
            try:
                self.conn = QMP(self.vm.qmp_path)
            except QMPError as e:
                raise QemuError("no QMP on %s: %s" % (self.vm.qmp_path, e))
            self.conn_pid = pid
            nodes = set(n.get("node-name") for n in self.qmp("query-named-block-nodes", flat=True))
            for disk in list(self.disks.values()):
                disk.present = disk.node in nodes
        return self.conn

    def qmp(self, command, **args):
        conn = self.connect()
        try:
            return conn.execute(command, **args)
        except QMPError as e:
            if e.error_class is None:  # the monitor is gone, not a refusal
                self._drop()
            raise
        finally:
            # keep the connection's event list short: only DEVICE_DELETED is ever waited for
            conn.events[:] = [ev for ev in conn.events if ev.get("event") == "DEVICE_DELETED"][-20:]

    def device_deleted(self, dev_id):
        """True once qemu reported ``DEVICE_DELETED`` for ``dev_id`` (a command is sent so that the
        events that came meanwhile are read)."""
        self.qmp("query-status")
        for ev in list(self.conn.events if self.conn else ()):
            if ev.get("event") == "DEVICE_DELETED" and ev.get("data", {}).get("device") == dev_id:
                self.conn.events.remove(ev)
                return True
        return False

    def blockdev_del(self, node, timeout=5.0):
        """``blockdev-del``, retried while qemu still calls the node in use: the unplugged device
        lets go of its drive a moment after ``DEVICE_DELETED``. Caller does not hold the lock."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.vm.pid is None:
                    return
                try:
                    self.qmp("blockdev-del", **{"node-name": node})
                    return
                except QMPError as e:
                    if "in use" not in str(e) or time.monotonic() > deadline:
                        raise
            time.sleep(0.05)

    # ------------------------------------------------------------------ the worker

    def submit(self, name, func, *args):
        """Queue ``func(*args)`` on this VM's worker; returns an Event set when it ran, and a dict
        holding its ``result`` or ``error``."""
        done, out = threading.Event(), {}
        self.queue.put((name, func, args, done, out))
        return done, out

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            name, func, args, done, out = item
            try:
                out["result"] = func(*args)
            except Exception as e:  # say what went wrong; keep the worker alive
                out["error"] = "%s: %s: %s" % (name, type(e).__name__, e)
                sys.stderr.write("stillpoint ec2 endpoint: qemu %s of %s: %s\n" % (name, self.instance_id, out["error"]))
            finally:
                done.set()

    def stop_worker(self):
        self.queue.put(None)


class QemuBackend:
    """Every qemu instance of the endpoint, and the backup jobs of their VMs."""

    def __init__(self, world):
        self.world = world
        self.directory = os.path.join(world.state_dir, "qemu")
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, "vms.json")
        self.vms = {}  # instance_id -> QemuVM
        self.jobs = {}  # snapshot_id -> Job
        self.cond = threading.Condition()
        self.speed = 0  # bytes/s of new backup jobs (0: as fast as it goes)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poller = None

    # ------------------------------------------------------------------ bookkeeping

    def _info(self, info, **fields):
        """Fill in a call log entry (the WSGI layer reads it under the world's ``_mu``)."""
        if info is not None:
            with self.world._mu:
                info.update(fields)

    def _save(self):
        records = []
        for q in list(self.vms.values()):
            pid = q.vm.pid
            if pid is not None and pid in q.booted_pids:
                records.append({"instance_id": q.instance_id, "pid": pid, "spec": q.spec})
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, self.path)

    def recover(self):
        """Kill the VMs an earlier server on this state directory booted and left behind (it was
        SIGKILLed). A VM is only killed if its pidfile still names a qemu of that very VM."""
        try:
            with open(self.path, encoding="utf-8") as f:
                records = json.load(f)
        except (OSError, ValueError):
            return []
        done = []
        for rec in records if isinstance(records, list) else []:
            try:
                vm = VM(rec["spec"])
            except (KeyError, TypeError):
                continue
            if vm.pid is not None and vm.pid == rec.get("pid"):
                vm.kill()
                done.append({"instance_id": rec.get("instance_id"), "vm": vm.name, "pid": rec.get("pid")})
        os.unlink(self.path)
        return done

    def is_qemu(self, instance_id):
        return instance_id in self.vms

    def _ensure_poller(self):
        if self._poller is None or not self._poller.is_alive():
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll, name="stillpoint-qemu-jobs", daemon=True)
            self._poller.start()
        self._wake.set()

    # ------------------------------------------------------------------ make_qemu (caller holds World.lock)

    def register(self, instance, region, spec, ec2_port):
        """Make ``instance`` a qemu instance (again): its IMDS emulator, the forwards of the spec."""
        missing = [k for k in SPEC_KEYS if k not in (spec or {})]
        if missing:
            raise QemuError("vm_spec lacks %s (a tests/lab/vm.py spec: name, dir, image, ssh_port, ...)"
                            % ", ".join(missing))
        q = self.vms.get(instance.id)
        if q is None:
            q = QemuVM(self, instance, region, dict(spec))
            placement = instance.placement
            az = placement.zone if hasattr(placement, "zone") else placement
            q.imds = ImdsServer(instance_id=instance.id, region=region, az=az, host="127.0.0.1", port=0,
                                instance_type=instance.instance_type, image_id=instance.image_id).start()
            self.vms[instance.id] = q
        elif not q.vm.running():
            q.vm.__init__(dict(spec))  # a new spec (links added, ...) for the next boot
        forwards = [f for f in q.spec.get("forwards", []) if f.get("guest_port") not in (IMDS_GUEST_PORT, EC2_GUEST_PORT)]
        forwards += [{"guest_port": IMDS_GUEST_PORT, "host_port": q.imds.port},
                     {"guest_port": EC2_GUEST_PORT, "host_port": int(ec2_port)}]
        q.spec["forwards"] = forwards
        self._ensure_poller()
        return q

    def result(self, q):
        return {"instance_id": q.instance_id, "spec": q.spec, "pid": q.vm.pid, "imds_port": q.imds.port,
                "imds_url": "http://%s:%d" % (HOST_ALIAS, IMDS_GUEST_PORT),
                "ec2_url": "http://%s:%d" % (HOST_ALIAS, EC2_GUEST_PORT)}

    def boot(self, q, timeout=300):
        """Boot the VM of ``q`` now (with its disks); waits for qemu (not for SSH). Caller does not
        hold World.lock."""
        done, out = q.submit("boot", self._op_start, q, None, False)
        if not done.wait(timeout):
            raise QemuError("%s did not boot within %.0f s" % (q.name, timeout))
        if "error" in out:
            raise QemuError(out["error"])
        return out["result"]

    # ------------------------------------------------------------------ attach / detach (caller holds World.lock)

    def attach(self, volume, attachment, delay):
        """Record the attachment of ``volume`` (its image: ``volume._sp_file``) to a qemu instance;
        a running VM gets it hot-plugged by the worker, a stopped one at its next boot. Returns
        the call log entry."""
        q = self.vms[attachment.instance.id]
        info = {"kind": "qemu", "op": "attach", "vm": q.name, "node": node_name(volume.id),
                "device_id": device_id(volume.id), "serial": nvme_serial(volume.id), "file": volume._sp_file,
                "hotplug": None, "ready_at": None}
        disk = Disk(volume.id, q.instance_id, volume._sp_file, delay, info)
        disk.device = attachment.device
        attachment._sp_qemu = disk
        q.disks[volume.id] = disk
        if q.vm.pid is None:
            self._ready(disk)  # cold: plugged at the next boot
            info.update(hotplug=False, ready_at=disk.ready_at)
        else:
            q.submit("attach %s" % volume.id, self._op_plug, q, disk)
        return info

    def detach(self, old, api):
        """The detach of a qemu attachment: unplugged by the worker (``detaching`` until done).
        Returns the call log entry."""
        disk = old.__dict__["_sp_qemu"]
        q = self.vms.get(disk.instance_id)
        disk.detach = True
        disk.t_detach = time.monotonic()
        info = {"kind": "qemu", "op": "detach", "vm": q.name if q else None, "node": disk.node,
                "device_id": disk.device_id, "serial": disk.serial, "hotplug": None, "released_at": None}
        disk.detach_info = info
        if q is None or q.terminating or not api and q.vm.pid is None:
            # TerminateInstances (the VM is killed next) or nothing running: nothing to unplug
            self._release(q, disk, info, hotplug=False)
        else:
            q.submit("detach %s" % disk.volume_id, self._op_unplug, q, disk)
        return info

    def _ready(self, disk):
        with self.cond:
            disk.ready = True
            disk.ready_at = time.monotonic()
            self.cond.notify_all()

    def _release(self, q, disk, info, **fields):
        with self.cond:
            disk.released = True
            disk.released_at = time.monotonic()
            self.cond.notify_all()
        if q is not None and q.disks.get(disk.volume_id) is disk:
            q.disks.pop(disk.volume_id, None)
        self._info(info, released_at=disk.released_at, **fields)

    def _op_plug(self, q, disk):
        t0 = time.monotonic()
        fields = {"queued_ms": _ms(disk.t_call, t0)}
        try:
            with q.lock:
                if disk.detach or disk.released:
                    fields["skipped"] = "detached before the hot-plug"
                elif q.vm.pid is None:
                    fields["hotplug"] = False
                else:
                    q.connect()
                    if disk.present:
                        fields["hotplug"] = False  # cold-plugged by a boot queued before us
                    else:
                        q.qmp("blockdev-add", **disk_node(disk.node, disk.file))
                        t1 = time.monotonic()
                        try:
                            q.qmp("device_add", driver="nvme", drive=disk.node, serial=disk.serial, id=disk.device_id)
                        except QMPError:
                            try:
                                q.qmp("blockdev-del", **{"node-name": disk.node})
                            except QMPError:
                                pass
                            raise
                        disk.present = True
                        fields.update(hotplug=True, blockdev_add_ms=_ms(t0, t1), device_add_ms=_ms(t1))
        except (QMPError, QemuError) as e:
            disk.error = str(e)
            self._info(disk.info, error=disk.error, plug_ms=_ms(t0), **fields)
            self.world.qemu_attach_failed(disk, q.region)
            self._release(q, disk, None)
            return
        self._ready(disk)
        self._info(disk.info, plug_ms=_ms(t0), ready_at=disk.ready_at, **fields)

    def _op_unplug(self, q, disk):
        t0 = time.monotonic()
        info = disk.detach_info
        fields = {"queued_ms": _ms(disk.t_detach, t0)}
        error = None
        try:
            with q.lock:
                running = q.vm.pid is not None
                if running:
                    q.connect()
                present = running and disk.present
                if present:
                    try:
                        q.qmp("device_del", id=disk.device_id)
                    except QMPError as e:
                        if e.error_class != "DeviceNotFound":
                            raise
            fields["hotplug"] = present
            if present:
                deadline = time.monotonic() + DEVICE_DELETED_SECONDS
                while True:
                    with q.lock:
                        if q.vm.pid is None or q.device_deleted(disk.device_id):
                            break
                    if time.monotonic() > deadline:
                        raise QemuError("no DEVICE_DELETED for %s within %.0f s" % (disk.device_id, DEVICE_DELETED_SECONDS))
                    time.sleep(0.05)
                fields["device_del_ms"] = _ms(t0)
                t1 = time.monotonic()
                self._wait_jobs(q, node=disk.node)
                fields["job_wait_ms"] = _ms(t1)
                t2 = time.monotonic()
                q.blockdev_del(disk.node)
                with q.lock:
                    disk.present = False
                fields["blockdev_del_ms"] = _ms(t2)
        except (QMPError, QemuError) as e:
            error = str(e)
        self._release(q, disk, info, detach_ms=_ms(t0), error=error, **fields)

    # ------------------------------------------------------------------ snapshots (caller holds World.lock)

    def backup_disk(self, volume):
        """The disk of ``volume`` if a backup job (or a deferred copy) must take its snapshot: its
        node is in a running VM, or its VM is powering off with it."""
        for q in list(self.vms.values()):
            disk = q.disks.get(volume.id)
            if disk is not None and (disk.present or q.powering_off) and q.vm.pid is not None:
                return q, disk
        return None, None

    def start_backups(self, snaps, copy_in):
        """Start the snapshots ``snaps`` (each with ``_sp_qemu_disk`` = (QemuVM, Disk)): one QMP
        transaction per VM, every member at the same instant. Members whose node went away in the
        meantime are copied from their image now (``copy_in(source, snapshot)``). Returns the
        call log entry (or None)."""
        groups = {}
        for snap in snaps:
            q, disk = snap.__dict__.pop("_sp_qemu_disk")
            groups.setdefault(q.instance_id, (q, []))[1].append((snap, disk))
        infos = []
        for q, members in groups.values():
            info = {"kind": "qemu", "op": "snapshot", "vm": q.name, "members": []}
            infos.append(info)
            t0 = time.monotonic()
            with q.lock:
                running = q.vm.pid is not None
                try:
                    if running and not q.powering_off:
                        q.connect()
                except QemuError:
                    running = False
                jobs = []
                for snap, disk in members:
                    member = {"snapshot_id": snap.id, "volume_id": disk.volume_id, "node": disk.node,
                              "device_id": disk.device_id, "serial": disk.serial, "file": None}
                    info["members"].append(member)
                    if not running or not (disk.present or q.powering_off):
                        member["method"] = "file copy (the disk is not in a running VM)"
                        copy_in(disk.file, snap)
                        member["file"] = snap._sp_file
                        continue
                    path = os.path.join(self.world.state_dir, "snapshots", snap.id + ".img")
                    size = os.path.getsize(disk.file)
                    job = Job(snap, q, disk, path, size, member)
                    member.update(file=path, target_node=job.target_node, size=size)
                    snap._sp_file = path
                    snap._sp_qemu = job
                    with self.cond:
                        self.jobs[snap.id] = job
                    if q.powering_off:
                        job.deferred = True
                        member["method"] = "deferred: copied from the image once the VM is down"
                        continue
                    member["method"] = "blockdev-backup"
                    jobs.append(job)
                if jobs:
                    self._start_jobs(q, jobs, info, t0)
            if len(info["members"]) == 1:  # the fields of a disk operation, for a one-volume call
                info.update((k, info["members"][0][k]) for k in ("node", "device_id", "serial"))
        self._ensure_poller()
        if not infos:
            return None
        return infos[0] if len(infos) == 1 else dict(infos[0], more=infos[1:])

    def _start_jobs(self, q, jobs, info, t0):
        """Targets, then one transaction (caller holds ``q.lock``)."""
        added = []
        try:
            for job in jobs:
                make_image(job.file, job.size)
                node = disk_node(job.target_node, job.file)
                node["detect-zeroes"] = "unmap"
                q.qmp("blockdev-add", **node)
                added.append(job)
            t1 = time.monotonic()
            actions = []
            for job in jobs:
                data = {"device": job.source_node, "target": job.target_node, "sync": "full", "job-id": job.snapshot_id,
                        "auto-dismiss": False}
                if self.speed:
                    data["speed"] = int(self.speed)
                actions.append({"type": "blockdev-backup", "data": data})
            q.qmp("transaction", actions=actions)
            t2 = time.monotonic()
            for job in jobs:
                job.started = True
                job.t_start = t2
            self._info(info, targets_ms=_ms(t0, t1), transaction_ms=_ms(t1, t2), started_at=t2, speed=self.speed or None)
        except (QMPError, QemuError, OSError) as e:
            for job in added:
                try:
                    q.qmp("blockdev-del", **{"node-name": job.target_node})
                except (QMPError, QemuError):
                    pass
            for job in jobs:
                self._finish(job, "qemu could not start the backup: %s" % e)
            self._info(info, error=str(e))

    def cancel(self, snap):
        """DeleteSnapshot of a snapshot still copied: cancel its job (the file is already gone)."""
        job = snap.__dict__.get("_sp_qemu")
        if job is not None and not job.done:
            job.deleted = True
            job.cancel = True
            self._wake.set()

    def set_speed(self, bytes_per_s):
        """Speed limit of new backup jobs, and of the running ones (``block-job-set-speed``)."""
        self.speed = max(0, int(bytes_per_s or 0))
        changed = []
        with self.cond:
            running = [j for j in self.jobs.values() if j.started and not j.done]
        for job in running:
            with job.vm.lock:
                try:
                    job.vm.qmp("block-job-set-speed", device=job.snapshot_id, speed=self.speed)
                    changed.append(job.snapshot_id)
                except (QMPError, QemuError):
                    pass
        return {"bytes_per_s": self.speed, "running_jobs": changed}

    def _finish(self, job, error=None):
        """The end of a snapshot's copy: sparse again, then ``completed`` (or ``error``)."""
        punched = None
        if error is None and not job.deleted:
            try:
                punched = punch_unwritten(job.file)
            except OSError as e:
                error = "cannot make %s sparse: %s" % (job.file, e)
        with self.cond:
            job.error = error
            job.done = True
            job.t_end = time.monotonic()
            self.cond.notify_all()
        fields = {"job_ms": _ms(job.t_start, job.t_end), "completed_at": job.t_end, "error": error}
        if punched is not None:
            fields["punched_bytes"] = punched
        self._info(job.info, **fields)

    def _active(self, q, node=None):
        """Backup jobs of ``q`` still running (caller holds ``self.cond``)."""
        return [j for j in self.jobs.values()
                if j.vm is q and not j.done and not j.deferred and (node is None or j.source_node == node)]

    def _wait_jobs(self, q, node=None, timeout=JOB_WAIT_SECONDS):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._active(q, node) and time.monotonic() < deadline and not self._stop.is_set():
                self.cond.wait(0.5)
            return not self._active(q, node)

    # ------------------------------------------------------------------ the poller

    def _poll(self):
        next_watch = 0.0
        while not self._stop.is_set():
            with self.cond:
                active = [j for j in self.jobs.values() if j.started and not j.done]
            by_vm = {}
            for job in active:
                by_vm.setdefault(job.vm.instance_id, (job.vm, []))[1].append(job)
            for q, jobs in by_vm.values():
                try:
                    self._poll_jobs(q, jobs)
                except Exception as e:  # keep polling; say what went wrong
                    sys.stderr.write("stillpoint ec2 endpoint: polling the backup jobs of %s: %s: %s\n"
                                     % (q.name, type(e).__name__, e))
            if time.monotonic() >= next_watch:
                self._watch()
                next_watch = time.monotonic() + WATCH_SECONDS
            self._wake.wait(JOB_POLL_SECONDS if active else WATCH_SECONDS)
            self._wake.clear()

    def _poll_jobs(self, q, jobs):
        finished = []
        with q.lock:
            if q.vm.pid is None:
                q._drop()
                finished = [(j, "the VM of %s stopped before the backup job finished (qemu backup jobs do not "
                                "outlive their VM)" % q.instance_id) for j in jobs]
            else:
                for job in jobs:
                    if job.cancel and not job.cancel_sent:
                        try:
                            q.qmp("job-cancel", id=job.snapshot_id)
                        except QMPError:
                            pass
                        job.cancel_sent = True
                try:
                    listing = dict((j["id"], j) for j in q.qmp("query-jobs"))
                except (QMPError, QemuError):
                    return  # the VM is going away; the next round sees it gone
                for job in jobs:
                    state = listing.get(job.snapshot_id)
                    if state is None:
                        finished.append((job, "the backup job %s vanished from qemu" % job.snapshot_id))
                        continue
                    job.current = state.get("current-progress", job.current)
                    job.total = state.get("total-progress", job.total) or job.total
                    if state.get("status") != "concluded":
                        continue
                    error = state.get("error")
                    if error:
                        error = "qemu backup job failed: %s" % error
                    if job.cancel:
                        error = "cancelled (the snapshot was deleted)"
                    for command, args in (("job-dismiss", {"id": job.snapshot_id}),
                                          ("blockdev-del", {"node-name": job.target_node})):
                        try:
                            q.qmp(command, **args)
                        except QMPError as e:
                            error = error or "%s: %s" % (command, e)
                    finished.append((job, error))
        for job, error in finished:
            self._finish(job, error)

    def _watch(self):
        """A VM started (again) by someone else gets its attached volumes plugged (``sync``); a VM that
        powered itself off (an OS shutdown in the guest) makes its instance ``stopped``, as EC2 does with
        the default InstanceInitiatedShutdownBehavior ``stop``."""
        for q in list(self.vms.values()):
            if q.terminating or q.powering_off or not q.queue.empty():
                continue
            pid = q.vm.pid
            if pid is not None:
                q.seen_pid = pid
                if pid != q.conn_pid:
                    q.submit("sync", self._op_sync, q)
            elif q.seen_pid is not None:
                q.submit("guest-shutdown", self._op_guest_shutdown, q, q.seen_pid)
                q.seen_pid = None

    def _op_guest_shutdown(self, q, pid):
        if q.vm.pid is not None or q.powering_off:
            return  # started again, or stopped through the API meanwhile
        with q.lock:
            q._drop()
            for disk in list(q.disks.values()):
                disk.present = False
        self._save()
        self._copy_deferred(q)
        with self.world.lock:
            state = q.instance._state
            was = state.name
            if was in ("running", "stopping"):
                state.name, state.code = "stopped", 80
        q.events = (q.events + [{"op": "guest-shutdown", "pid": pid, "state_was": was, "at": time.monotonic()}])[-20:]

    def _op_sync(self, q):
        with q.lock:
            if q.vm.pid is None or q.vm.pid == q.conn_pid:
                return
            try:
                q.connect()
                plugged = []
                for disk in list(q.disks.values()):
                    if disk.present or disk.detach:
                        continue
                    q.qmp("blockdev-add", **disk_node(disk.node, disk.file))
                    q.qmp("device_add", driver="nvme", drive=disk.node, serial=disk.serial, id=disk.device_id)
                    disk.present = True
                    plugged.append(disk.volume_id)
            except (QMPError, QemuError) as e:
                plugged = "error: %s" % e
            q.events = (q.events + [{"op": "sync", "pid": q.conn_pid, "plugged": plugged, "at": time.monotonic()}])[-20:]

    # ------------------------------------------------------------------ instance states (caller holds World.lock)

    def stop(self, instance):
        """StopInstances: the worker waits for the VM's backup jobs, then powers it off."""
        q = self.vms[instance.id]
        info = {"kind": "qemu", "op": "stop", "vm": q.name, "pid": q.vm.pid, "stopped_at": None}
        q.submit("stop", self._op_stop, q, info, False)
        return info

    def start(self, instance):
        """StartInstances: the worker boots the VM with the attached volumes cold-plugged."""
        q = self.vms[instance.id]
        info = {"kind": "qemu", "op": "start", "vm": q.name, "pid": None, "running_at": None}
        q.submit("start", self._op_start, q, info, True)
        return info

    def mark_terminating(self, instance_id):
        """Before moto's TerminateInstances detaches the volumes: no hot-unplug, the VM is killed."""
        q = self.vms.get(instance_id)
        if q is not None:
            q.terminating = True

    def terminate(self, instance):
        """TerminateInstances: the worker waits for the VM's backup jobs, then kills it."""
        q = self.vms[instance.id]
        q.terminating = True
        info = {"kind": "qemu", "op": "terminate", "vm": q.name, "pid": q.vm.pid, "terminated_at": None}
        q.submit("terminate", self._op_stop, q, info, True)
        return info

    def _set_state(self, q, expect, name, code):
        with self.world.lock:
            state = q.instance._state
            if state.name == expect:
                state.name = name
                state.code = code

    def _op_start(self, q, info, api):
        t0 = time.monotonic()
        if q.vm.pid is not None:
            if api:
                self._set_state(q, "pending", "running", 16)
            self._info(info, pid=q.vm.pid, already_running=True)
            return {"pid": q.vm.pid}
        disks = [d for d in list(q.disks.values()) if not d.detach and os.path.isfile(d.file)]
        try:
            q.vm.start(disks=[d.boot_spec() for d in disks])
        except (LabError, OSError, subprocess.SubprocessError) as e:
            if api:
                self._set_state(q, "pending", "stopped", 80)
            self._info(info, error=str(e), start_ms=_ms(t0))
            raise QemuError("cannot boot %s: %s" % (q.name, e))
        pid = q.vm.pid
        with q.lock:
            q._drop()
            for disk in list(q.disks.values()):
                disk.present = disk in disks
            q.booted_pids.add(pid)
        self._save()
        if api:
            self._set_state(q, "pending", "running", 16)
        self._info(info, pid=pid, start_ms=_ms(t0), running_at=time.monotonic(),
                   disks=[{"volume_id": d.volume_id, "node": d.node, "device_id": d.device_id, "serial": d.serial}
                          for d in disks])
        return {"pid": pid}

    def _op_stop(self, q, info, kill):
        """Stop (``kill``: terminate) the VM, after its backup jobs concluded."""
        t0 = time.monotonic()
        if not kill and q.vm.pid is None and q.seen_pid is not None:
            # the guest powered itself off before the watcher saw it: that is the guest's shutdown, as EC2 would have
            # reported it (the instance was stopping or stopped before this call arrived), not this call's doing
            self._op_guest_shutdown(q, q.seen_pid)
            q.seen_pid = None
        while True:
            finished = self._wait_jobs(q)
            with q.lock:
                with self.cond:
                    if not self._active(q) or not finished:
                        q.powering_off = True
                        break
        t1 = time.monotonic()
        pid = q.vm.pid
        how = "not running"
        if pid is not None:
            how = "kill" if kill else self._power_off(q, pid)
            if kill:
                q.vm.kill()
        with q.lock:
            q._drop()
            for disk in list(q.disks.values()):
                disk.present = False
            q.seen_pid = None  # stopped through the API: not a shutdown from inside the guest
            q.powering_off = False
        self._save()
        self._copy_deferred(q)
        if kill:
            if q.imds is not None:
                q.imds.stop()
            self._set_state(q, "shutting-down", "terminated", 48)
        else:
            self._set_state(q, "stopping", "stopped", 80)
        done_at = time.monotonic()
        self._info(info, job_wait_ms=_ms(t0, t1), poweroff_ms=_ms(t1, done_at), how=how, jobs_left=not finished,
                   **{"terminated_at" if kill else "stopped_at": done_at})
        return {"how": how}

    def _power_off(self, q, pid):
        """``systemctl poweroff`` over SSH (this guest ignores ACPI power-button events), then QMP
        ``quit``, then SIGKILL; returns which one ended the VM."""
        try:
            rc = q.vm.ssh("systemctl poweroff", check=False, timeout=15).returncode
        except subprocess.TimeoutExpired:
            rc = None
        if q.vm.wait_gone(pid, POWEROFF_SECONDS if rc in (0, 255) else 5.0):
            return "ssh poweroff"
        with q.lock:
            try:
                q.qmp("quit")
            except (QMPError, QemuError):
                pass
        if q.vm.wait_gone(pid, 10.0):
            return "qmp quit"
        q.vm.kill()
        return "kill"

    def _copy_deferred(self, q):
        """Snapshots asked for while the VM powered off: its images are final now."""
        with self.cond:
            deferred = [j for j in self.jobs.values() if j.vm is q and j.deferred and not j.done]
        for job in deferred:
            error = None
            if not job.deleted:
                try:
                    sparse_copy(job.source_file, job.file)
                except OSError as e:
                    error = "cannot copy %s: %s" % (job.source_file, e)
            self._finish(job, error)

    # ------------------------------------------------------------------ control

    def describe(self, instance_id=None):
        out = []
        for q in list(self.vms.values()):
            if instance_id and q.instance_id != instance_id:
                continue
            out.append({"instance_id": q.instance_id, "vm": q.name, "pid": q.vm.pid, "spec": q.spec,
                        "imds_port": q.imds.port if q.imds else None, "powering_off": q.powering_off,
                        "disks": [{"volume_id": d.volume_id, "node": d.node, "device_id": d.device_id,
                                   "serial": d.serial, "file": d.file, "present": d.present, "ready": d.ready,
                                   "detach": d.detach} for d in list(q.disks.values())],
                        "jobs": [{"snapshot_id": j.snapshot_id, "volume_id": j.volume_id, "current": j.current,
                                  "total": j.total, "done": j.done, "error": j.error, "deferred": j.deferred}
                                 for j in list(self.jobs.values()) if j.vm is q],
                        "events": list(q.events)})
        return out

    def shutdown(self):
        """Kill every VM this endpoint booted (by PID), stop the IMDS emulators and the threads.
        Returns ``[{"instance_id", "vm", "pid", "killed"}]``."""
        self._stop.set()
        self._wake.set()
        done = []
        for q in list(self.vms.values()):
            pid = q.vm.pid
            killed = False
            if pid is not None and pid in q.booted_pids:
                q.vm.kill()
                killed = q.vm.pid is None
            with q.lock:
                q._drop()
            if q.imds is not None:
                q.imds.stop()
            q.stop_worker()
            done.append({"instance_id": q.instance_id, "vm": q.name, "pid": pid, "killed": killed})
        with self.cond:
            for job in self.jobs.values():
                if not job.done:
                    job.done = True
                    job.error = "the endpoint stopped its VMs"
            self.cond.notify_all()
        self.vms = {}
        self.jobs = {}
        if self._poller is not None:
            self._poller.join(timeout=2.0)
            self._poller = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return done
