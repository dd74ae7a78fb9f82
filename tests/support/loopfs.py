# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real filesystems on loop devices, for tests that freeze for real.

``LoopFS`` makes a sparse image in a fresh directory under /tmp, attaches it with
``losetup --find --show``, makes a filesystem and mounts it. Cleanup always runs (context
manager exit, fixture finalizer, and an ``atexit`` safety net): thaw from a separate
``fsfreeze -u`` process, unmount (retry, then lazy), ``losetup -d``, remove the files.

Only these filesystems may ever be frozen by the tests.
"""

import atexit
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from tests.support.procs import alive  # noqa: F401 (tests import it from here)
from tests.support.procs import wait_gone  # noqa: F401

FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

_MKFS = {
    "ext2": (["mkfs.ext2", "-q", "-F"], 8),
    "ext3": (["mkfs.ext3", "-q", "-F"], 8),
    "ext4": (["mkfs.ext4", "-q", "-F"], 8),
    "xfs": (["mkfs.xfs", "-q", "-f"], 300),
    "btrfs": (["mkfs.btrfs", "-q", "-f"], 128),
}

_LIVE = []


def missing_requirements(fstype="ext4"):
    """Why loop filesystems cannot be made here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (losetup, mount, FIFREEZE)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: the kernel has no loop devices"
    tools = ["losetup", "mount", "umount", "fsfreeze", _MKFS.get(fstype, ([fstype],))[0][0]]
    for tool in tools:
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    return None


def _run(argv, check=True, timeout=30):
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, env=dict(os.environ, LC_ALL="C"), check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%s): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc


@pytest.fixture
def guardians():
    """pids of guardians a test started; any still alive at the end get SIGTERM (they thaw and exit)."""
    pids = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid)


def probe_frozen(mountpoint):
    """True if ``mountpoint`` is frozen now: try FIFREEZE (EBUSY = frozen), thaw at once if it worked."""
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return True
            raise
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def wait_thawed(mountpoints, timeout, interval=0.02):
    """Wait until none of ``mountpoints`` is frozen; return seconds waited or None on timeout."""
    t0 = time.monotonic()
    while True:
        if not any(probe_frozen(m) for m in mountpoints):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(interval)


class LoopFS:
    """A filesystem on a loop device: ``.image``, ``.device``, ``.mountpoint``, ``.workdir``."""

    def __init__(self, size_mb=64, fstype="ext4", workdir=None):
        if fstype not in _MKFS:
            raise ValueError("unsupported fstype %r (have %s)" % (fstype, ", ".join(sorted(_MKFS))))
        self.fstype = fstype
        self.size_mb = max(int(size_mb), _MKFS[fstype][1])
        self.parent = workdir or "/tmp"
        self.workdir = None
        self.image = None
        self.device = None
        self.mountpoint = None
        self._mounted = False
        self.cleanup_errors = []

    def __enter__(self):
        self.create()
        return self

    def __exit__(self, *exc_info):
        self.cleanup()
        return False

    def __repr__(self):
        return "LoopFS(%s on %s at %s)" % (self.fstype, self.device, self.mountpoint)

    def create(self):
        _LIVE.append(self)
        try:
            self.workdir = tempfile.mkdtemp(prefix="stillpoint-loopfs-", dir=self.parent)
            self.image = os.path.join(self.workdir, "fs.img")
            with open(self.image, "wb") as handle:
                handle.truncate(self.size_mb * 1024 * 1024)
            self.device = _run(["losetup", "--find", "--show", self.image]).stdout.strip()
            _run(_MKFS[self.fstype][0] + [self.device], timeout=120)
            self.mountpoint = os.path.join(self.workdir, "mnt")
            os.mkdir(self.mountpoint)
            _run(["mount", "-t", self.fstype, self.device, self.mountpoint])
            self._mounted = True
        except BaseException:
            self.cleanup()
            raise
        return self

    # -- helpers for tests -----------------------------------------------------------------

    def freeze(self):
        """Freeze with a separate ``fsfreeze -f`` process ("someone else's" freeze)."""
        _run(["fsfreeze", "-f", self.mountpoint], timeout=60)

    def thaw(self):
        """Thaw with a separate ``fsfreeze -u`` process; True if it was frozen, False if EINVAL."""
        proc = _run(["fsfreeze", "-u", self.mountpoint], check=False, timeout=30)
        if proc.returncode == 0:
            return True
        if "Invalid argument" in proc.stderr:
            return False
        raise RuntimeError("fsfreeze -u %s failed: %s" % (self.mountpoint, proc.stderr.strip()))

    def is_frozen(self):
        return probe_frozen(self.mountpoint)

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self):
        """Thaw, unmount, detach, remove; never raises, records problems in ``cleanup_errors``."""
        if self in _LIVE:
            _LIVE.remove(self)
        if self._mounted:
            for _attempt in range(3):
                try:
                    self.thaw()
                    if not self.is_frozen():
                        break
                except Exception as exc:  # keep going: the rest of the cleanup matters
                    self.cleanup_errors.append("thaw: %s" % exc)
                time.sleep(0.1)
            else:
                # Unmounting a frozen filesystem can hang in D state: leave it mounted, say so loudly.
                self.cleanup_errors.append("%s is STILL FROZEN; run fsfreeze -u %s" % (self.mountpoint, self.mountpoint))
                return
            for attempt in range(10):
                proc = _run(["umount", self.mountpoint], check=False)
                if proc.returncode == 0 or "not mounted" in proc.stderr:
                    self._mounted = False
                    break
                time.sleep(0.05 * (attempt + 1))
            if self._mounted:
                proc = _run(["umount", "-l", self.mountpoint], check=False)
                if proc.returncode == 0:
                    self._mounted = False
                else:
                    self.cleanup_errors.append("umount -l: %s" % proc.stderr.strip())
        if self.device:
            proc = _run(["losetup", "-d", self.device], check=False)
            if proc.returncode != 0 and "No such device" not in proc.stderr:
                self.cleanup_errors.append("losetup -d: %s" % proc.stderr.strip())
            self.device = None
        if self.workdir and not self._mounted:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class LoopArray(LoopFS):
    """One btrfs filesystem spread over ``n`` loop devices (``-d raid0 -m raid1``): a real multi-volume
    array on a kernel without md or device-mapper. ``.images`` and ``.devices`` list the members in
    order; ``.device``/``.image`` are the first. Cleanup as for LoopFS, then every member detached."""

    def __init__(self, n=4, size_mb=128, workdir=None):
        super().__init__(size_mb=size_mb, fstype="btrfs", workdir=workdir)
        self.n = n
        self.images = []
        self.devices = []

    def __repr__(self):
        return "LoopArray(btrfs raid0 over %s at %s)" % (", ".join(self.devices), self.mountpoint)

    def create(self):
        _LIVE.append(self)
        try:
            self.workdir = tempfile.mkdtemp(prefix="stillpoint-looparray-", dir=self.parent)
            for index in range(self.n):
                image = os.path.join(self.workdir, "member%d.img" % index)
                with open(image, "wb") as handle:
                    handle.truncate(self.size_mb * 1024 * 1024)
                self.images.append(image)
                self.devices.append(_run(["losetup", "--find", "--show", image]).stdout.strip())
            self.image, self.device = self.images[0], self.devices[0]
            data = "raid0" if self.n > 1 else "single"
            meta = "raid1" if self.n > 1 else "dup"
            _run(["mkfs.btrfs", "-q", "-f", "-d", data, "-m", meta] + self.devices, timeout=120)
            self.mountpoint = os.path.join(self.workdir, "mnt")
            os.mkdir(self.mountpoint)
            _run(["mount", "-t", "btrfs", "-o", "device=" + ",device=".join(self.devices), self.device,
                  self.mountpoint])
            self._mounted = True
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self):
        devices, self.devices = self.devices, []
        super().cleanup()  # thaw, unmount, detach the first device, remove the files
        for device in devices[1:]:
            proc = _run(["losetup", "-d", device], check=False)
            if proc.returncode != 0 and "No such device" not in proc.stderr:
                self.cleanup_errors.append("losetup -d %s: %s" % (device, proc.stderr.strip()))


def _cleanup_survivors():
    for fs in list(_LIVE):
        fs.cleanup()


atexit.register(_cleanup_survivors)


@pytest.fixture
def loopfs():
    """Factory: ``loopfs(n=1, size_mb=64, fstype="ext4")`` -> list of n mounted LoopFS, all cleaned up."""
    reason = missing_requirements()
    if reason:
        pytest.skip("loop filesystems unavailable: %s" % reason)
    made = []

    def make(n=1, size_mb=64, fstype="ext4"):
        why = missing_requirements(fstype)
        if why:
            pytest.skip("loop %s unavailable: %s" % (fstype, why))
        out = []
        for _index in range(n):
            fs = LoopFS(size_mb=size_mb, fstype=fstype)
            made.append(fs)
            fs.create()
            out.append(fs)
        return out

    try:
        yield make
    finally:
        errors = []
        for fs in reversed(made):
            fs.cleanup()
            errors.extend(fs.cleanup_errors)
        if errors:
            pytest.fail("loop filesystem cleanup problems: %s" % "; ".join(errors))
