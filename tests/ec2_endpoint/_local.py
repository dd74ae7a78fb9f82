# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The "local attach" backend: file-backed volumes become loop devices on this very host.

For an instance marked local (``World.op_make_local``), attaching a volume whose content is a host
file runs ``losetup --find --show <file>`` and makes the link a Nitro instance's udev would make,
``<by_id_dir>/nvme-Amazon_Elastic_Block_Store_vol<id>`` -> ``/dev/loopN``. Detaching removes the
link and the loop device, but only once nothing uses the device any more (see :func:`users`), as
an EBS volume whose operating system still has it mounted stays ``busy``.

Every loop device this backend made is recorded in ``<dir>/loops.json`` (device, image, link), so
that :meth:`LocalBackend.release_all` (server stop, ``reset(state=True)``) and a later server on the
same state directory (:meth:`LocalBackend.recover`, after a SIGKILL) can remove them. A device is
only ever detached after checking that its backing file is still the recorded image: a loop number
freed and reused by someone else is left alone.

Needs root (the endpoint server runs as root in these tests).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading

from tests.support.mounts import mounts

LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"


class LocalError(Exception):
    """A host-side step of the local backend failed."""


def link_name(volume_id):
    """The by-id link name of an EBS volume on a Nitro instance (the NVMe serial: id without dash)."""
    return LINK_PREFIX + volume_id.replace("-", "")


def _run(argv, timeout=30):
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=dict(os.environ, LC_ALL="C", LANG="C"), check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LocalError("%s: %s" % (" ".join(argv), e))
    return proc


def backing_file(device):
    """The file bound to loop ``device`` (as the kernel names it), or None if it is not bound."""
    name = os.path.basename(device)
    try:
        with open("/sys/block/%s/loop/backing_file" % name, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _same_file(bound, image):
    if bound is None:
        return False
    if bound.endswith(" (deleted)"):
        bound = bound[:-len(" (deleted)")]
    return bound == os.path.realpath(image)


def users(device):
    """Why ``device`` cannot be detached now: a list of reasons, empty when nothing uses it.

    Looked at, in order: mounts (``/proc/self/mountinfo``: the source, or the device number of the
    filesystem), holders (``/sys/block/<dev>/holders``: dm, md), an exclusive claim (an ``O_EXCL``
    open fails with EBUSY while a filesystem, btrfs member or volume manager holds the device; this
    also catches the members of a multi-device btrfs that mountinfo does not name), and processes
    with the device open (``/proc/<pid>/fd``). ``losetup -d`` itself would not tell: on a device in
    use the kernel accepts it and only clears the device at its last close (autoclear).
    """
    reasons = []
    try:
        st = os.stat(device)
    except OSError as e:
        return ["cannot stat %s: %s" % (device, e.strerror)]
    number = "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        for source, mountpoint, dev in mounts():
            if source == device or dev == number:
                reasons.append("mounted at %s" % mountpoint)
    except OSError:
        pass
    name = os.path.basename(device)
    try:
        holders = sorted(os.listdir("/sys/block/%s/holders" % name))
    except OSError:
        holders = []
    if holders:
        reasons.append("held by %s" % ", ".join(holders))
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:
            if not reasons:
                reasons.append("claimed exclusively (a filesystem or volume manager uses it)")
        elif e.errno not in (errno.ENXIO, errno.ENOENT):
            reasons.append("cannot open %s: %s" % (device, e.strerror))
    else:
        os.close(fd)
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
    except OSError:
        pids = []
    for pid in pids:
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd_name in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd_name))
            except OSError:
                continue
            if target == device:
                reasons.append("open by pid %s (%s)" % (pid, _comm(pid)))
                break
    return reasons


def _comm(pid):
    try:
        with open("/proc/%s/comm" % pid, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


class LocalBackend:
    """The loop devices and links made for local instances, persisted in ``<directory>/loops.json``."""

    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.path = os.path.join(self.directory, "loops.json")
        self._mu = threading.Lock()
        self.records = {}  # device -> {"device", "image", "link", "volume_id", "instance_id"}

    # ------------------------------------------------------------------ persistence

    def _save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(sorted(self.records.values(), key=lambda r: r["device"]), f, indent=1)
        os.replace(tmp, self.path)

    def recover(self):
        """Release what an earlier server on the same directory left behind (it was killed)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                leftovers = json.load(f)
        except (OSError, ValueError):
            return []
        done = []
        for rec in leftovers:
            if isinstance(rec, dict) and rec.get("device") and rec.get("image"):
                done.append(self._release(rec))
        with self._mu:
            self._save()
        return done

    # ------------------------------------------------------------------ attach / link / release

    def attach(self, volume_id, instance_id, image, by_id_dir):
        """``losetup --find --show image``; returns the record (the link is made by :meth:`link`)."""
        image = os.path.abspath(image)
        if not os.path.isfile(image):
            raise LocalError("the image %s of %s is not a regular file" % (image, volume_id))
        proc = _run(["losetup", "--find", "--show", image])
        device = proc.stdout.strip()
        if proc.returncode != 0 or not device.startswith("/dev/loop"):
            raise LocalError("losetup --find --show %s failed (rc=%s): %s"
                             % (image, proc.returncode, (proc.stderr or proc.stdout).strip()))
        rec = {"device": device, "image": image, "volume_id": volume_id, "instance_id": instance_id,
               "link": os.path.join(os.path.abspath(by_id_dir), link_name(volume_id))}
        with self._mu:
            self.records[device] = rec
            self._save()
        return rec

    def link(self, rec):
        """Make ``rec["link"]`` -> the loop device (replacing a stale link of the same name)."""
        os.makedirs(os.path.dirname(rec["link"]), exist_ok=True)
        tmp = "%s.%d.tmp" % (rec["link"], os.getpid())
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(rec["device"], tmp)
        os.replace(tmp, rec["link"])

    def release(self, rec):
        """Remove the link and detach the loop device (lazily if it is still in use)."""
        info = self._release(rec)
        with self._mu:
            known = self.records.get(rec["device"])
            if known is not None and known["image"] == rec["image"]:
                self.records.pop(rec["device"])
            self._save()
        return info

    def _release(self, rec):
        """Link first (it must not point at a device that may be reused), then ``losetup -d``.

        Returns ``{"device", "link_removed", "detached", "lazy", "error"}``; never raises."""
        info = {"device": rec["device"], "link_removed": False, "detached": False, "lazy": False, "error": None}
        link = rec.get("link")
        if link:
            try:
                if os.readlink(link) == rec["device"]:
                    os.unlink(link)
                    info["link_removed"] = True
            except OSError:
                pass
        if not _same_file(backing_file(rec["device"]), rec["image"]):
            return info  # already gone (or the number now belongs to someone else): leave it alone
        busy = users(rec["device"])
        try:
            proc = _run(["losetup", "-d", rec["device"]])
        except LocalError as e:
            info["error"] = str(e)
            return info
        if proc.returncode != 0 and "No such device" not in proc.stderr:
            info["error"] = "losetup -d %s failed (rc=%s): %s" % (rec["device"], proc.returncode, proc.stderr.strip())
        else:
            info["detached"] = True
            info["lazy"] = bool(busy)
            if busy:
                info["users"] = busy
        return info

    def release_all(self):
        """Release every loop device this backend made; returns what was done."""
        with self._mu:
            recs = list(self.records.values())
        done = [self._release(rec) for rec in recs]
        with self._mu:
            for rec in recs:
                self.records.pop(rec["device"], None)
            self._save()
        return done

    def owned(self):
        with self._mu:
            return [dict(r) for r in self.records.values()]
