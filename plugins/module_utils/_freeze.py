# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filesystem freeze (FIFREEZE/FITHAW) under a guardian process: the dead-man thaw.

The process that asks for a freeze never holds the only reference to it. :meth:`Guardian.start`
forks a guardian (double fork, ``setsid``) that opens the mountpoints, performs the freezes
itself and thaws them when the client asks, when the client's connection drops (the client
died, even by SIGKILL) unless the client detached on purpose, or when the deadline passes,
whichever comes first.

Wire protocol (one JSON object per line, over a ``socketpair`` for the client that started the
guardian and over the abstract unix socket ``\\0stillpoint-freeze-<token>`` for later clients):
requests ``{"op": "freeze" | "thaw" | "detach" | "keep" | "status"}``; every request gets exactly one
reply line with ``"ok": true|false`` (and ``"msg"`` when false). While freezing, the guardian
also sends ``{"event": "frozen", "index": i}`` lines before the reply so that the client always
knows what is frozen, even if the guardian dies half way. ``keep`` hands the owner's end to a keeper
(:meth:`Guardian.hand_over`), which the guardian tells ``{"event": "thawed"}`` when it thawed.

With a held application (controller mode, _app_quiesce) the freeze request first takes the application's
lock (its client is started as the guardian's child, before anything is frozen), and every thaw is followed
by the lock's release; the thaw's record carries ``application``, ``application_record`` and
``application_action``.

The freeze runs in waves (:func:`freeze_waves`): a filesystem mounted inside another one of the set
is frozen before it and thawed after it; the members of one wave are frozen at once, one thread
per FIFREEZE (the kernel's freeze waits out RCU grace periods, ~30 ms a filesystem, so one after
another the window would grow with the count), and thawed at once. While a wave freezes, the main
thread still watches the owner's connection, the deadline and SIGTERM: if one of them ends the
freeze, what is frozen is thawed at once, and a FIFREEZE that returns later is thawed by its own
thread; the guardian stays until every FIFREEZE it issued has returned. If a member fails (EBUSY:
someone else's freeze), the rest of its wave is waited for and everything this call froze is thawed;
nothing it did not freeze is ever thawed.

After the fork the guardian imports nothing, writes no log and never opens a path on a
filesystem it may freeze: it only issues ioctls on directory fds opened before the fork (a held
application's client is executed from the host's own binaries before the freeze; the keeper, too,
imports nothing and opens nothing on what is frozen).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import gc
import json
import os
import re
import secrets
import select
import signal
import socket
import struct
import sys
import sysconfig
import threading
import time

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import containing_mount
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import read_mountinfo
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import visible_mounts

# Seconds a freeze may last before the guardian thaws on its own (the VSS window is 10 s too).
DEFAULT_DEADLINE = 10.0
# Longest deadline accepted: writers on a frozen filesystem block uninterruptibly.
MAX_DEADLINE = 300.0
# How long a guardian that thawed on its own (deadline, disconnect) keeps its record for a
# later connect()+thaw()/status() before it exits.
DEFAULT_GRACE = 600.0

# Filesystems whose kernel driver implements freeze (super_operations freeze_fs or
# freeze_super), so that FIFREEZE works: checked against the kernel sources. ocfs2, vfat,
# exfat, ntfs3, tmpfs, nfs, cifs, fuse, overlay and pseudo filesystems have no freeze.
FREEZABLE_FSTYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "gfs2", "nilfs2", "jfs", "reiserfs", "bcachefs",
})

SOCKET_PREFIX = "stillpoint-freeze-"

# ioctl numbers: _IOWR('X', 119, int) and _IOWR('X', 120, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LINE_MAX = 65536
_START_TIMEOUT = 15.0
_REPLY_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------------
# mount table


def _norm(path):
    return os.path.realpath(os.path.expanduser(path))


def _default_protect_paths():
    """Paths this process needs whatever the caller says: never freeze their filesystems."""
    out = []
    if sys.executable:
        out.append((sys.executable, "the Python interpreter running this code"))
        out.append((os.path.realpath(sys.executable), "the Python interpreter running this code"))
    try:
        out.append((os.getcwd(), "the current working directory"))
    except OSError:
        pass
    out.append((os.path.dirname(os.__file__), "the Python standard library"))
    paths = sysconfig.get_paths()
    for key, label in (("stdlib", "the Python standard library"), ("purelib", "Python's site-packages"),
                       ("platlib", "Python's site-packages")):
        if paths.get(key):
            out.append((paths[key], label))
    return out


def module_protect_paths(module, extra=()):
    """The paths a module must never freeze: ``protect_paths`` (if the module has that option), anything
    in ``extra``, Ansible's remote and module tmp dirs and the directory the module runs from."""
    listed = (getattr(module, "params", None) or {}).get("protect_paths") or []
    paths = [(p, "listed in protect_paths") for p in list(listed) + list(extra)]
    remote_tmp = getattr(module, "_remote_tmp", None)
    if remote_tmp:
        paths.append((remote_tmp, "Ansible's remote tmp dir"))  # check_mountpoints expands ~ and $VARS
    tmpdir = getattr(module, "_tmpdir", None)
    if tmpdir:
        paths.append((tmpdir, "Ansible's module tmp dir"))
    if sys.argv and sys.argv[0] and os.path.isabs(sys.argv[0]):
        paths.append((os.path.dirname(sys.argv[0]), "the directory the module runs from"))
    return paths


def check_mountpoints(mountpoints, protect_paths=(), mountinfo=None):
    """Validate a freeze plan without touching anything.

    Each path must be a mountpoint exactly, named once (bind mounts and btrfs subvolumes of one
    filesystem count as the same), not ``/``, on a freezable filesystem type, and not the
    filesystem holding any protected path. ``protect_paths`` items are paths or
    ``(path, why)`` tuples; the interpreter, the working directory and the Python library
    directories are always added. ``mountinfo`` (a :func:`parse_mountinfo` list) defaults to
    this process's mount table.

    Returns ``[{"mountpoint", "fstype", "source", "dev", "mount_id"}]`` in the given order.
    Raises :class:`StillpointError` naming every refused path, why, and what to do.
    """
    if isinstance(mountpoints, str):
        mountpoints = [mountpoints]
    if mountinfo is None:
        mountinfo = read_mountinfo()
    visible = visible_mounts(mountinfo)
    root = visible.get("/")

    protected = {}
    for item in list(_default_protect_paths()) + list(protect_paths or ()):
        path, why = (item if isinstance(item, (tuple, list)) else (item, "a protected path"))
        if not path:
            continue
        path = os.path.abspath(os.path.expanduser(os.path.expandvars(path)))
        # the filesystem of the name itself (a symlink such as a venv's bin/python) and of its target
        for candidate in (os.path.join(_norm(os.path.dirname(path)), os.path.basename(path)), _norm(path)):
            mount = containing_mount(candidate, visible)
            if mount is not None and (path, why) not in protected.get(mount["dev"], []):
                protected.setdefault(mount["dev"], []).append((path, why))

    refused = []
    plan = []
    seen = {}
    for raw in mountpoints or ():
        if not isinstance(raw, str) or not raw.strip():
            refused.append((repr(raw), "is not a path"))
            continue
        if not os.path.isabs(os.path.expanduser(raw)):
            refused.append((raw, "is not an absolute path: name the mountpoint as an absolute path"))
            continue
        path = _norm(raw)
        entry = visible.get(path)
        if entry is None:
            holder = containing_mount(path, visible)
            if not os.path.lexists(path):
                why = "does not exist"
                if holder is not None:
                    why += " (it would be on the filesystem mounted at %s)" % holder["mountpoint"]
                why += ": name an existing mountpoint"
            elif holder is not None:
                why = ("is not a mountpoint: it is a directory on the %s filesystem mounted at %s; "
                       "freezing works on whole filesystems, so name %s itself (and accept that "
                       "everything on it is frozen)" % (holder["fstype"], holder["mountpoint"], holder["mountpoint"]))
            else:
                why = "is not a mountpoint and no mounted filesystem holds it"
            refused.append((raw, why))
            continue

        reasons = []
        shown = raw if path == raw else "%s (%s)" % (raw, path)
        if path == "/":
            reasons.append("is the root filesystem: a frozen / blocks every writer on the host, including "
                           "the tools that would thaw it; put the data on its own filesystem and freeze that")
        elif root is not None and entry["dev"] == root["dev"]:
            reasons.append("is the root filesystem (device %s) mounted a second time; a frozen / blocks the "
                           "host: freeze only filesystems of their own" % entry["dev"])
        if entry["fstype"] not in FREEZABLE_FSTYPES:
            reasons.append("is a %s filesystem, which cannot be frozen (FIFREEZE works on %s); leave it out "
                           "of the freeze (its data is then only crash-consistent)"
                           % (entry["fstype"], ", ".join(sorted(FREEZABLE_FSTYPES))))
        holders = protected.get(entry["dev"], [])
        if holders and path != "/" and not (root is not None and entry["dev"] == root["dev"]):
            names = []
            for ppath, why in holders:
                text = "%s (%s)" % (ppath, why)
                if text not in names:
                    names.append(text)
            reasons.append("holds %s: freezing it would block the automation doing the freeze; move that "
                           "elsewhere (e.g. Ansible's remote_tmp) or leave this filesystem out" % ", ".join(names))
        if entry["dev"] in seen:
            reasons.append("is the same filesystem (device %s) as %s named before it (a bind mount or another "
                           "subvolume of one filesystem); a filesystem is frozen as a whole, name it once"
                           % (entry["dev"], seen[entry["dev"]]))
        else:
            seen[entry["dev"]] = raw
        if reasons:
            refused.append((shown, "; ".join(reasons)))
            continue
        plan.append({
            "mountpoint": path,
            "fstype": entry["fstype"],
            "source": entry["source"],
            "dev": entry["dev"],
            "mount_id": entry["mount_id"],
        })

    if refused:
        raise StillpointError(
            "refusing to freeze, nothing was frozen: " + "; ".join("%s %s" % item for item in refused) + ".",
            refused=[{"path": path, "reason": why} for path, why in refused],
        )
    if not plan:
        raise StillpointError("no mountpoints to freeze were given: list the filesystems to freeze")
    return plan


def _inside(child, parent):
    return child != parent and child.startswith(parent.rstrip("/") + "/")


def freeze_waves(plan, parallel=True):
    """The order of a freeze: lists of plan indices, one list (a *wave*) frozen at once, first wave first.

    A filesystem mounted inside another one of the plan is frozen before it and thawed after it, so
    the waves go by height: wave 0 holds every member with no other member mounted below it, wave
    ``k`` those whose deepest nested member is ``k`` levels down. Inside a wave, plan order. The thaw
    runs the waves backwards. ``parallel=False`` makes every wave one member, in the same order (the
    sequential freeze, kept for comparison in ``benchmarks/freeze_window.py``).
    """
    paths = [m["mountpoint"] for m in plan]
    height = {}
    for index in sorted(range(len(paths)), key=lambda i: -len(paths[i])):
        below = [height[j] for j in height if _inside(paths[j], paths[index])]
        height[index] = 1 + max(below) if below else 0
    waves = [[i for i in range(len(paths)) if height[i] == level] for level in range(max(height.values()) + 1)] \
        if paths else []
    if not parallel:
        waves = [[i] for wave in waves for i in wave]
    return waves


# --------------------------------------------------------------------------------------------
# low level


def _ioctl(fd, request):
    fcntl.ioctl(fd, request, 0)


def _send(sock, obj):
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
    sock.sendall(data)


def close_fds_except(keep):
    """Close every file descriptor from 3 up but those in ``keep`` (0, 1 and 2 are always kept): a forked
    guardian or keeper holds no descriptor of its parent's that it was not handed."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            if fd > low:
                os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, max(1 << 20, os.sysconf("SC_OPEN_MAX")))


def _socket_name(token):
    return "\0" + SOCKET_PREFIX + token


def _mnt_id_of_fd(fd):
    """The mount id an fd lives on (``/proc/self/fdinfo``), or None if not shown."""
    try:
        with open("/proc/self/fdinfo/%d" % fd, "rb") as handle:
            for line in handle.read().split(b"\n"):
                if line.startswith(b"mnt_id:"):
                    return int(line.split(b":", 1)[1])
    except (OSError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------------------------
# the guardian process (runs after fork: no imports, no paths, no logging)


class _GuardianProcess:
    def __init__(self, owner, listener, wake_r, fds, plan, token, deadline, hold, grace, waves=None, done=None,
                 app=None):
        self.owner = owner
        self.app = app              # a held quiescer (_app_quiesce) this guardian locks before and releases after
        self.app_taken = False
        self.keeper = False         # the owner is a keeper (Guardian.hand_over): tell it when we thaw
        self.listener = listener
        self.wake_r = wake_r
        self.fds = list(fds)
        self.plan = plan
        self.token = token
        self.deadline_s = deadline
        self.hold = hold
        self.grace = grace
        self.waves = [list(w) for w in (waves or [[i] for i in range(len(self.fds))])]
        self.wave_of = dict((i, n) for n, wave in enumerate(self.waves) for i in wave)
        self.done_r, self.done_w = done if done is not None else (-1, -1)
        self.uid = os.geteuid()
        self.state = "ready"        # ready -> frozen -> thawed | failed
        self.detached = False
        self.owner_alive = True
        self.frozen = []            # plan indices frozen by us (and not thawed), in the order their freezes ended
        self.freeze_ms = {}
        self.times = {}             # index -> {"freeze_start", "freeze_end", "thaw_start", "thaw_end"} (monotonic s)
        self.frozen_at = None
        self.deadline_mono = None
        self.deadline_epoch = None
        self.record = None
        self.thawed_mono = None
        self.exit_now = False
        self.conns = {}             # fd -> [sock, buffer, is_owner]
        self.poller = select.poll()
        # freeze threads: results they hand over, members whose FIFREEZE has not returned yet, and the
        # flag that tells a FIFREEZE returning after the freeze was given up to thaw at once
        self.lock = threading.Lock()
        self.results = {}
        self.collected = set()
        self.pending = set()
        self.aborted = False
        self.late = []              # [{"mountpoint", "thawed", "error"?}] FIFREEZEs that returned after a give-up

    # -- the work -------------------------------------------------------------------------

    def order(self, indices):
        """``indices`` in freeze order: wave by wave, plan order inside a wave."""
        chosen = set(indices)
        return [i for wave in self.waves for i in wave if i in chosen]

    def freeze_worker(self, index):
        """One member's FIFREEZE, in its own thread (the ioctl releases the GIL)."""
        t0 = time.monotonic()
        err = None
        try:
            _ioctl(self.fds[index], FIFREEZE)
        except OSError as exc:
            err = exc.errno or errno.EIO
        except BaseException:  # never a traceback in the guardian
            err = errno.EIO
        t1 = time.monotonic()
        with self.lock:
            late = self.aborted
            self.results[index] = {"start": t0, "end": t1, "errno": err, "late": late}
            if not late:
                self.pending.discard(index)
        if late:
            # The freeze was given up (deadline, disconnect, signal) while this FIFREEZE was still blocked.
            # It succeeded, so the freeze is ours: undo it at once, nobody else will.
            thaw_err = self.thaw_one(index) if err is None else None
            with self.lock:
                self.results[index]["thaw_errno"] = thaw_err
                self.pending.discard(index)
        try:
            os.write(self.done_w, b".")
        except OSError:
            pass

    def start_freezes(self, wave):
        for index in wave:
            with self.lock:
                self.pending.add(index)
            try:
                threading.Thread(target=self.freeze_worker, args=(index,), daemon=True).start()
            except BaseException:  # no thread: freeze it here, it only costs the overlap
                self.freeze_worker(index)

    def collect(self, sock, failures):
        """Take the results the freeze threads handed over: record what froze (and tell the
        requester), note what failed. Late results are handled by :meth:`collect_late`."""
        with self.lock:
            ready = [(i, r) for i, r in self.results.items() if i not in self.collected and not r["late"]]
            self.collected.update(i for i, _r in ready)
        for index, res in sorted(ready, key=lambda item: item[1]["end"]):
            if res["errno"] is not None:
                failures.append(index)
                continue
            self.times[index] = {"freeze_start": res["start"], "freeze_end": res["end"]}
            self.freeze_ms[index] = round((res["end"] - res["start"]) * 1000.0, 3)
            self.frozen.append(index)
            try:
                _send(sock, {"event": "frozen", "index": index, "mountpoint": self.plan[index]["mountpoint"]})
            except OSError:
                pass  # the requester vanished; its connection's EOF decides what follows

    def collect_late(self):
        """FIFREEZEs that returned after the freeze was given up: their threads thawed them already."""
        with self.lock:
            ready = [(i, r) for i, r in self.results.items()
                     if i not in self.collected and r["late"] and i not in self.pending]
            self.collected.update(i for i, _r in ready)
        for index, res in ready:
            item = {"mountpoint": self.plan[index]["mountpoint"], "frozen": res["errno"] is None}
            if res["errno"] is None:
                item["thawed"] = res.get("thaw_errno") in (None, errno.EINVAL)
                if not item["thawed"]:
                    item["error"] = "FITHAW failed: %s" % os.strerror(res["thaw_errno"])
            self.late.append(item)
            if self.record is not None:
                self.record.setdefault("late", []).append(item)
                if not item.get("thawed", True):
                    self.record["thaw_errors"].append(item["mountpoint"])
        if ready:
            self.release_fds()  # the late member's fd too: its filesystem must not stay busy for the grace period

    def wait_wave(self, sock, wave, failures):
        """Wait until every FIFREEZE of the wave returned, or the owner went away, the deadline
        passed or SIGTERM came: then return that reason (the freeze is given up), else None."""
        poller = select.poll()
        poller.register(self.done_r, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        owner_fd = None
        if self.owner_alive and self.owner.fileno() in self.conns:
            owner_fd = self.owner.fileno()
            poller.register(owner_fd, 0)  # only hang-up and error: a request line waits for the main loop
        while True:
            self.collect(sock, failures)
            if all(i in self.collected for i in wave):
                return None
            remaining = self.deadline_mono - time.monotonic()
            if remaining <= 0:
                return "deadline"
            for fd, event in poller.poll(int(remaining * 1000.0) + 1):
                if fd == self.done_r:
                    try:
                        os.read(self.done_r, 512)
                    except OSError:
                        pass
                elif fd == self.wake_r:
                    return "signal"
                elif fd == owner_fd and event & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    return "disconnect"

    def give_up(self, sock, failures):
        """From now on a FIFREEZE that returns is thawed by its own thread; what froze before is
        collected (ours to thaw now). Returns the mountpoints whose FIFREEZE has not returned."""
        with self.lock:
            self.aborted = True
        self.collect(sock, failures)
        with self.lock:
            return [self.plan[i]["mountpoint"] for i in sorted(self.pending)]

    def do_freeze(self, sock):
        now = time.monotonic()
        self.frozen_at = now
        self.deadline_mono = now + self.deadline_s
        self.deadline_epoch = time.time() + self.deadline_s
        failures = []
        for number, wave in enumerate(self.waves):
            self.start_freezes(wave)
            why = self.wait_wave(sock, wave, failures)
            if why is None and not failures and time.monotonic() >= self.deadline_mono and number + 1 < len(self.waves):
                why = "deadline"
            if why is None and not failures:
                continue
            pending = self.give_up(sock, failures) if why is not None else []
            if why in ("disconnect", "signal"):
                # the dead-man / SIGTERM: thaw what is frozen now, exactly as after the freeze
                self.do_thaw(why)
                self.record["aborted_freeze"] = True
                self.record["pending"] = pending
                if why == "signal":
                    self.exit_now = True
                return {"ok": False, "op": "freeze", "error": why, "pending": pending,
                        "msg": "the freeze was given up (%s) and what it had frozen was thawed" % why}
            last = self.order(self.frozen)[-1] if self.frozen else None
            undone, undo_errors = self.rollback()
            self.state = "failed"
            if why == "deadline":
                where = ("while %s %s still freezing" % (", ".join(pending), "was" if len(pending) == 1 else "were")
                         if pending else "after %s" % (self.plan[last]["mountpoint"] if last is not None else "nothing"))
                return {
                    "ok": False, "op": "freeze", "error": "deadline", "pending": pending,
                    "mountpoint": pending[0] if pending else (self.plan[last]["mountpoint"] if last is not None else None),
                    "rolled_back": undone, "rollback_errors": undo_errors,
                    "msg": "freezing took longer than the deadline of %gs (reached %s); everything was thawed "
                           "again%s" % (self.deadline_s, where,
                                        ", and what is still freezing is thawed the moment its freeze returns"
                                        if pending else ""),
                }
            failures = sorted(failures)
            first = failures[0]
            err = self.results[first]["errno"]
            return {
                "ok": False, "op": "freeze", "error": "busy" if err == errno.EBUSY else "freeze_failed",
                "errno": err, "errname": errno.errorcode.get(err, str(err)), "strerror": os.strerror(err),
                "mountpoint": self.plan[first]["mountpoint"], "index": first,
                "failed": [{"mountpoint": self.plan[i]["mountpoint"], "errno": self.results[i]["errno"],
                            "errname": errno.errorcode.get(self.results[i]["errno"], str(self.results[i]["errno"]))}
                           for i in failures],
                "rolled_back": undone, "rollback_errors": undo_errors,
                "msg": "FIFREEZE on %s failed: %s" % (self.plan[first]["mountpoint"], os.strerror(err)),
            }
        self.state = "frozen"
        ends = [self.times[i]["freeze_end"] for i in self.frozen]
        return {
            "ok": True, "op": "freeze",
            "mounts": [{"mountpoint": self.plan[i]["mountpoint"], "index": i, "wave": self.wave_of[i],
                        "freeze_ms": self.freeze_ms[i], "freeze_start": self.times[i]["freeze_start"],
                        "freeze_end": self.times[i]["freeze_end"]} for i in self.order(self.frozen)],
            "frozen_at": self.frozen_at, "deadline": self.deadline_epoch, "deadline_mono": self.deadline_mono,
            "freeze_span_ms": round((max(ends) - self.frozen_at) * 1000.0, 3), "waves": len(self.waves),
        }

    def run_parallel(self, indices, work):
        """``work(index)`` for each index at once (threads; inline for one); returns {index: result}."""
        out = {}
        if len(indices) == 1:
            out[indices[0]] = work(indices[0])
            return out

        def one(index):
            out[index] = work(index)

        threads = []
        for index in indices:
            try:
                thread = threading.Thread(target=one, args=(index,), daemon=True)
                thread.start()
                threads.append(thread)
            except BaseException:  # no thread: do it here
                one(index)
        for thread in threads:
            thread.join()
        return out

    def timed_thaw(self, index):
        t0 = time.monotonic()
        try:
            err = self.thaw_one(index)
        except BaseException:  # never a traceback in the guardian
            err = errno.EIO
        return t0, time.monotonic(), err

    def thaw_members(self, indices):
        """Thaw ``indices`` in the reverse of the freeze waves (a filesystem mounted inside another
        thaws after it), each wave at once. Returns [(index, t0, t1, err)] in thaw order."""
        chosen = set(indices)
        done = []
        for wave in reversed(self.waves):
            members = [i for i in reversed(wave) if i in chosen]
            if not members:
                continue
            results = self.run_parallel(members, self.timed_thaw)
            done.extend((i,) + tuple(results[i]) for i in members)
        return done

    def rollback(self):
        undone, errors = [], []
        for index, _t0, _t1, err in self.thaw_members(self.frozen):
            mountpoint = self.plan[index]["mountpoint"]
            if err is None or err == errno.EINVAL:
                undone.append(mountpoint)
            else:
                errors.append({"mountpoint": mountpoint, "errno": err, "strerror": os.strerror(err)})
        self.frozen = []
        self.release_fds()
        return undone, errors

    def release_fds(self):
        """Close the handles of everything no longer frozen: a thawed filesystem must not stay busy
        (unmountable) while the guardian keeps its record for the grace period. The fd of a member
        whose FIFREEZE has not returned yet stays open: its thread thaws through it."""
        with self.lock:
            busy = set(self.pending)
        for index, fd in enumerate(self.fds):
            if fd >= 0 and index not in self.frozen and index not in busy:
                try:
                    os.close(fd)
                except OSError:
                    pass
                self.fds[index] = -1

    def thaw_one(self, index):
        for attempt in range(3):
            try:
                _ioctl(self.fds[index], FITHAW)
                return None
            except OSError as exc:
                if exc.errno == errno.EINVAL or attempt == 2:
                    return exc.errno
                time.sleep(0.05)
        return None

    def do_thaw(self, by):
        mounts, external, errors = [], [], []
        thaw_starts = []
        for index, t0, t1, err in self.thaw_members(self.frozen):
            mountpoint = self.plan[index]["mountpoint"]
            item = {"mountpoint": mountpoint, "thaw_ms": round((t1 - t0) * 1000.0, 3), "thaw_start": t0, "thaw_end": t1}
            item.update(self.times.get(index, {}))
            thaw_starts.append(t0)
            if err == errno.EINVAL:
                item["error"] = "was not frozen any more: someone else thawed it before us"
                external.append(mountpoint)
            elif err is not None:
                item["error"] = "FITHAW failed: %s" % os.strerror(err)
                errors.append(mountpoint)
            mounts.append(item)
        end = time.monotonic()
        self.thawed_mono = end
        self.record = {
            "mounts": mounts,
            "window_ms": round((end - self.frozen_at) * 1000.0, 3),
            "thaw_span_ms": round((end - min(thaw_starts)) * 1000.0, 3) if thaw_starts else 0.0,
            "deadline_thawed": by == "deadline",
            "thawed_by": by,
            "frozen_at": self.frozen_at,
            "thawed_at": end,
            "deadline": self.deadline_epoch,
            "deadline_s": self.deadline_s,
            "externally_thawed": external,
            "thaw_errors": errors,
        }
        self.frozen = [] if not errors else [i for i in self.frozen if self.plan[i]["mountpoint"] in errors]
        self.release_fds()
        self.state = "thawed"
        if self.keeper and self.owner_alive:
            try:
                _send(self.owner, {"event": "thawed", "by": by})
            except OSError:
                pass
        if self.app is not None:  # thawed first, then the application is released (and its summary recorded)
            self.record.update(_app_quiesce.release_in_guardian(self.app, by))

    def status(self):
        out = {
            "ok": True, "op": "status", "state": self.state, "pid": os.getpid(), "token": self.token,
            "detached": self.detached, "deadline": self.deadline_epoch, "deadline_s": self.deadline_s,
            "frozen_at": self.frozen_at,
            "mounts": [{"mountpoint": m["mountpoint"], "fstype": m["fstype"], "dev": m["dev"],
                        "frozen": i in self.frozen} for i, m in enumerate(self.plan)],
        }
        if self.deadline_mono is not None and self.state == "frozen":
            out["deadline_in_s"] = round(self.deadline_mono - time.monotonic(), 3)
        with self.lock:
            pending = sorted(self.pending)
        if pending:
            out["pending"] = [self.plan[i]["mountpoint"] for i in pending]
        if self.late:
            out["late"] = list(self.late)
        if self.app is not None:
            out["application"] = self.app.summary()
            out["keeper"] = self.keeper
        if self.record is not None:
            out["thawed_by"] = self.record["thawed_by"]
            out["deadline_thawed"] = self.record["deadline_thawed"]
            out["window_ms"] = self.record["window_ms"]
            out["record"] = self.record
        return out

    # -- requests -------------------------------------------------------------------------

    def owner_gone(self):
        """True when the owner's connection has hung up (checked without reading it)."""
        if not self.owner_alive:
            return True
        poller = select.poll()
        poller.register(self.owner.fileno(), 0)
        return any(event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, event in poller.poll(0))

    def quiesce_and_freeze(self, sock):
        """The freeze request: with a held application, its lock first (within its own budget; a refusal freezes
        nothing), then the freeze; a freeze that fails releases the lock again."""
        fields = {}
        if self.app is not None and not self.app_taken:
            self.app_taken = True
            go, fields = _app_quiesce.take_in_guardian(self.app)
            if not go:
                self.state = "failed"
                self.exit_now = True
                return dict(fields, ok=False, op="freeze")
            if self.owner_gone():  # the module died while the lock was being taken: release, freeze nothing
                fields.update(_app_quiesce.release_in_guardian(self.app, "disconnect"))
                self.state = "failed"
                self.exit_now = True
                return dict(fields, ok=False, op="freeze", error="disconnect",
                            msg="the client went away while the application's lock was taken; released, nothing frozen")
        reply = self.do_freeze(sock)
        reply.update(fields)
        if not reply["ok"]:
            if self.app is not None and self.app.locked and self.app.released_at is None:
                reply.update(_app_quiesce.release_in_guardian(self.app, "freeze_failed"))
            if self.state == "failed":
                self.exit_now = True
        return reply

    def handle(self, fd, request):
        sock, _buf, is_owner = self.conns[fd]
        op = request.get("op") if isinstance(request, dict) else None
        if op == "freeze":
            if self.state != "ready":
                reply = {"ok": False, "op": op, "error": "state", "msg": "cannot freeze: the guardian is %s" % self.state}
            else:
                reply = self.quiesce_and_freeze(sock)
        elif op == "thaw":
            if self.state == "frozen":
                self.do_thaw("client")
                reply = dict(self.record, ok=True, op="thaw", already_thawed=False)
                self.exit_now = not self.frozen
            elif self.state == "thawed":
                reply = dict(self.record, ok=True, op="thaw", already_thawed=True)
                self.exit_now = not self.frozen
            else:
                reply = {"ok": False, "op": op, "error": "not_frozen",
                         "msg": "nothing was frozen by this guardian (state %s)" % self.state}
        elif op in ("keep", "detach"):
            if not is_owner:
                reply = {"ok": False, "op": op, "error": "not_owner", "msg": "only the client that started the guardian can %s"
                         % ("hand over" if op == "keep" else "detach")}
            elif self.state != "frozen":
                reply = {"ok": False, "op": op, "error": "not_frozen", "msg": "nothing is frozen: there is nothing to hand over"}
            else:
                if op == "keep":
                    self.keeper = True
                else:
                    self.detached = True
                reply = {"ok": True, "op": op, "deadline": self.deadline_epoch, "deadline_mono": self.deadline_mono}
        elif op == "status":
            reply = self.status()
        else:
            reply = {"ok": False, "op": op, "error": "bad_request", "msg": "unknown request %r" % (request,)}
        try:
            _send(sock, reply)
        except OSError:
            pass

    def drop(self, fd):
        sock, _buf, is_owner = self.conns.pop(fd)
        try:
            self.poller.unregister(fd)
        except (KeyError, ValueError):
            pass
        try:
            sock.close()
        except OSError:
            pass
        if is_owner:
            self.owner_alive = False
            if self.state == "frozen" and not self.detached:
                self.do_thaw("disconnect")
            elif self.state == "ready":
                self.exit_now = True

    def accept(self):
        try:
            sock, _addr = self.listener.accept()
        except OSError:
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except OSError:
            uid = -1
        if uid != self.uid or len(self.conns) >= 32:
            sock.close()
            return
        sock.settimeout(5.0)
        self.conns[sock.fileno()] = [sock, b"", False]
        self.poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)

    def readable(self, fd):
        conn = self.conns[fd]
        try:
            data = conn[0].recv(65536)
        except OSError:
            data = b""
        if not data:
            self.drop(fd)
            return
        conn[1] += data
        while fd in self.conns and b"\n" in self.conns[fd][1]:
            line, rest = self.conns[fd][1].split(b"\n", 1)
            self.conns[fd][1] = rest
            try:
                request = json.loads(line.decode("utf-8"))
            except ValueError:
                request = None
            self.handle(fd, request)
            if self.exit_now:
                return
        if fd in self.conns and len(self.conns[fd][1]) > _LINE_MAX:
            self.drop(fd)

    # -- the loop -------------------------------------------------------------------------

    def should_exit(self, now):
        with self.lock:
            if self.pending:
                return False  # a FIFREEZE still blocked in the kernel: stay to thaw it when it returns
        if self.exit_now:
            return True
        if self.state in ("thawed", "failed") and not self.frozen:
            if not self.hold and not self.owner_alive:
                return True
            if self.thawed_mono is not None and now >= self.thawed_mono + self.grace:
                return True
        if self.state == "ready" and not self.owner_alive:
            return True
        return False

    def run(self):
        self.conns[self.owner.fileno()] = [self.owner, b"", True]
        mask = select.POLLIN | select.POLLHUP | select.POLLERR
        self.poller.register(self.owner.fileno(), mask)
        self.poller.register(self.listener.fileno(), select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        self.poller.register(self.done_r, select.POLLIN)
        while True:
            now = time.monotonic()
            if self.state == "frozen" and now >= self.deadline_mono:
                self.do_thaw("deadline")
            if self.should_exit(now):
                return
            timeout = None
            if self.state == "frozen":
                timeout = max(0.0, self.deadline_mono - now)
            elif self.thawed_mono is not None:
                timeout = max(0.0, self.thawed_mono + self.grace - now)
            events = self.poller.poll(None if timeout is None else int(timeout * 1000.0) + 1)
            for fd, event in events:
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except OSError:
                        pass
                    if self.state == "frozen":
                        self.do_thaw("signal")
                    self.exit_now = True
                elif fd == self.done_r:
                    try:
                        os.read(self.done_r, 512)
                    except OSError:
                        pass
                    self.collect_late()
                elif fd == self.listener.fileno():
                    self.accept()
                elif fd in self.conns:
                    if event & select.POLLIN:
                        self.readable(fd)
                    elif event & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                        self.drop(fd)
                if self.exit_now:
                    break


def _on_signal(_signum, _frame):
    # The wakeup fd does the work; the handler must exist for it to be written.
    return None


def _guardian_main(owner, fds, plan, token, deadline, hold, grace, waves=None, app=None):
    """Body of the guardian process. Never returns."""
    code = 0
    listener = None
    try:
        gc.disable()  # objects inherited from the parent must never close fds we reuse
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN,
                       signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM):
            signal.signal(signum, signal.SIG_IGN)
        os.chdir("/")
        os.umask(0o077)
        null = os.open("/dev/null", os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        if null > 2:
            os.close(null)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        done_r, done_w = os.pipe()  # freeze threads wake the main thread through it
        os.set_blocking(done_w, False)
        os.set_blocking(done_r, False)
        signal.signal(signal.SIGTERM, _on_signal)
        signal.set_wakeup_fd(wake_w)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(_socket_name(token))
        except OSError as exc:
            raise StillpointError("token %s is already in use by another guardian (%s)" % (token, exc.strerror))
        listener.listen(16)
        close_fds_except({owner.fileno(), listener.fileno(), wake_r, wake_w, done_r, done_w} | set(fds))
        try:
            adj = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
            try:
                os.write(adj, b"-1000")
            finally:
                os.close(adj)
        except OSError:
            pass
        owner.settimeout(5.0)
        guardian = _GuardianProcess(owner, listener, wake_r, fds, plan, token, deadline, hold, grace, waves=waves,
                                    done=(done_r, done_w), app=app)
        _send(owner, {"ready": True, "pid": os.getpid(), "token": token})
        guardian.run()
    except StillpointError as exc:
        code = 2
        try:
            _send(owner, {"ready": False, "msg": exc.msg})
        except BaseException:
            pass
    except BaseException as exc:  # never let a traceback (which reads source files) happen here
        code = 3
        try:
            _send(owner, {"ready": False, "msg": "guardian failed: %s: %s" % (type(exc).__name__, exc)})
        except BaseException:
            pass
    finally:
        os._exit(code)


# --------------------------------------------------------------------------------------------
# the client


def _libc_syncfs():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def presync_filesystems(mountpoints):
    """``syncfs(2)`` each filesystem (``sync`` of everything where libc has no syncfs).

    Returns the milliseconds it took. Runs in the client, before anything is frozen.
    """
    t0 = time.monotonic()
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
    else:
        for mountpoint in mountpoints:
            try:
                fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue  # the guardian reports unusable mountpoints
            try:
                syncfs(fd)
            finally:
                os.close(fd)
    return round((time.monotonic() - t0) * 1000.0, 3)


def _spawn_detached(main, close_in_child=None):
    """``main()`` (which never returns) in a grandchild in a session of its own: a double fork, so that it is
    nobody's zombie and has no controlling terminal. Returns once the intermediate child has exited.
    ``close_in_child``: a socket of this process the new one must not hold."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    pid = os.fork()
    if pid == 0:  # intermediate child
        try:
            if close_in_child is not None:
                close_in_child.close()
            os.setsid()
            if os.fork() == 0:
                main()
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class _GuardianLost(Exception):
    pass


def _freeze_error(reply):
    mountpoint = reply.get("mountpoint")
    undone = reply.get("rolled_back") or []
    undo = ("the %d other filesystem(s) this call had frozen (%s) were thawed again"
            % (len(undone), ", ".join(undone))) if undone else "nothing else had been frozen"
    details = {k: reply.get(k) for k in ("mountpoint", "errno", "errname", "rolled_back", "rollback_errors", "failed",
                                         "pending") if k in reply}
    others = [f for f in reply.get("failed") or [] if f["mountpoint"] != mountpoint]
    if others:
        undo += "; FIFREEZE also failed on %s" % ", ".join("%s (%s)" % (f["mountpoint"], f["errname"]) for f in others)
    if reply.get("pending"):
        undo += ("; the guardian stays until the FIFREEZE still blocked on %s returns, and thaws it then"
                 % ", ".join(reply["pending"]))
    if reply.get("rollback_errors"):
        undo += ("; THAWING FAILED for %s: check them now and thaw with `fsfreeze -u` if they are still frozen"
                 % ", ".join(e["mountpoint"] for e in reply["rollback_errors"]))
    if reply.get("error") == "busy":
        return StillpointError(
            "%s is already frozen by someone else (FIFREEZE returned EBUSY); %s. stillpoint never thaws a "
            "freeze it did not make. Find who holds it (another backup run, an fsfreeze left behind, a "
            "device-mapper/LVM snapshot in progress) and let it finish; if you are sure nobody holds it, thaw "
            "it with `fsfreeze -u %s` (or stillpoint.snapshots.fsfreeze state=thawed force=true) and retry."
            % (mountpoint, undo, mountpoint), **details)
    if reply.get("error") == "deadline":
        return StillpointError(
            "%s; %s. Raise the deadline, or run `sync` before freezing so that less dirty data has to be "
            "written inside the freeze." % (reply.get("msg"), undo), **details)
    if reply.get("errno") == errno.EOPNOTSUPP:
        return StillpointError("%s does not support freezing (EOPNOTSUPP); %s. Leave it out of the freeze."
                               % (mountpoint, undo), **details)
    if reply.get("errno") == errno.EPERM:
        return StillpointError("not allowed to freeze %s (EPERM: needs root / CAP_SYS_ADMIN); %s. Run with "
                               "become: true." % (mountpoint, undo), **details)
    return StillpointError("%s; %s." % (reply.get("msg") or "the freeze failed", undo), **details)


class Guardian:
    """Client of a freeze guardian. Build with :meth:`start` or :meth:`connect`."""

    def __init__(self, sock, token, pid, plan, deadline_s, owner, fds=(), deadline=None):
        self._sock = sock
        self._buf = b""
        self._owner = owner
        self._fds = list(fds)
        self._frozen = []
        self._frozen_at = None
        self._deadline_mono = None
        self._record = None
        self._detached = False
        self._closed = False
        self.token = token
        self.pid = pid
        self.plan = plan
        self.deadline_s = deadline_s
        self.deadline = deadline if deadline is not None else time.time() + deadline_s
        self.waves = [[i] for i in range(len(plan or []))]
        self.app_wait = 0.0

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def start(cls, plan, deadline=DEFAULT_DEADLINE, hold_on_disconnect=True, token=None, grace=DEFAULT_GRACE,
              parallel=True, application=None):
        """Fork a guardian for ``plan`` (the output of :func:`check_mountpoints`); return its client.

        Nothing is frozen yet: call :meth:`freeze`. ``hold_on_disconnect``: after thawing on its
        own (deadline or disconnect), the guardian keeps the thaw record for ``grace`` seconds so a
        later :meth:`connect` can fetch it; False makes it exit as soon as no client is connected.
        ``parallel``: freeze (and thaw) the members of a wave at once (see :func:`freeze_waves`);
        False freezes one after another, for comparison in ``benchmarks/freeze_window.py``.
        ``application``: a held quiescer (_app_quiesce, built here, nothing started) that the guardian runs: it takes
        the application's lock in the freeze request before it freezes, and releases it after its thaw; the client
        session is the guardian's child and dies with it (controller mode, docs/applications.md).
        """
        try:
            deadline = float(deadline)
        except (TypeError, ValueError):
            raise StillpointError("deadline must be a number of seconds, not %r" % (deadline,))
        if not 0 < deadline <= MAX_DEADLINE:
            raise StillpointError("deadline %gs is out of range: give 0 < deadline <= %gs (writers block while "
                                  "frozen; VSS allows 10 s)" % (deadline, MAX_DEADLINE))
        if not plan:
            raise StillpointError("nothing to freeze: the plan is empty")
        token = token or secrets.token_hex(16)
        if not _TOKEN_RE.match(token):
            raise StillpointError("token %r is not valid: use 1-64 of A-Z a-z 0-9 _ . -" % (token,))
        plan = [dict(m) for m in plan]
        waves = freeze_waves(plan, parallel=parallel)

        fds = []
        try:
            for mount in plan:
                try:
                    fd = os.open(mount["mountpoint"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
                except OSError as exc:
                    raise StillpointError("cannot open %s: %s; nothing was frozen" % (mount["mountpoint"], exc.strerror))
                fds.append(fd)
                mnt_id = _mnt_id_of_fd(fd)
                if mount.get("mount_id") is not None and mnt_id is not None and mnt_id != mount["mount_id"]:
                    raise StillpointError(
                        "the mount table changed since the plan was made: %s is now mount %s, not %s; nothing "
                        "was frozen, check the mounts and retry" % (mount["mountpoint"], mnt_id, mount["mount_id"]))
            client_sock, guardian_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

        _spawn_detached(lambda: _guardian_main(guardian_sock, fds, plan, token, deadline, bool(hold_on_disconnect),
                                               float(grace), waves, application), close_in_child=client_sock)
        guardian_sock.close()
        client = cls(client_sock, token, None, plan, deadline, owner=True, fds=fds)
        client.waves = waves
        if application is not None:  # the session, the lock's budget and the post-lock reads before the reply
            client.app_wait = 2 * float(application.lock_wait_timeout) + 40.0
        try:
            hello = client._read_reply(_START_TIMEOUT)
        except (_GuardianLost, socket.timeout):
            client._teardown()
            raise StillpointError("the freeze guardian did not start (no answer); nothing was frozen")
        if not hello.get("ready"):
            client._teardown()
            raise StillpointError("the freeze guardian did not start: %s; nothing was frozen"
                                  % hello.get("msg", "unknown error"))
        client.pid = hello["pid"]
        return client

    @classmethod
    def connect(cls, token):
        """Connect to the running guardian of ``token`` (e.g. to thaw after a detach)."""
        if not isinstance(token, str) or not _TOKEN_RE.match(token):
            raise StillpointError("token %r is not a freeze token" % (token,))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_REPLY_TIMEOUT)
            sock.connect(_socket_name(token))
        except OSError as exc:
            sock.close()
            raise StillpointError(
                "no freeze guardian for token %s (%s): it has thawed and exited already, its grace period "
                "passed, or it was killed. If a filesystem is still frozen, thaw it with "
                "stillpoint.snapshots.fsfreeze state=thawed force=true" % (token, exc.strerror or exc),
                gone=True)
        client = cls(sock, token, None, [], DEFAULT_DEADLINE, owner=False)
        try:
            status = client.status()
        except StillpointError:
            client._teardown()
            raise
        client.pid = status["pid"]
        client.plan = status["mounts"]
        client.deadline_s = status.get("deadline_s", DEFAULT_DEADLINE)
        client.deadline = status.get("deadline")
        client._frozen_at = status.get("frozen_at")
        return client

    # -- plumbing -------------------------------------------------------------------------

    def _read_reply(self, timeout):
        """Read lines until a reply (not an event) arrives; track freeze events."""
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    message = json.loads(line.decode("utf-8"))
                except ValueError:
                    raise _GuardianLost("unreadable answer from the guardian: %r" % line[:200])
                if message.get("event") == "frozen":
                    self._frozen.append(message["index"])
                    continue
                if "event" in message:  # "thawed", for a keeper (hand_over)
                    continue
                return message
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no answer from the guardian within %gs" % timeout)
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as exc:
                raise _GuardianLost(str(exc))
            if not data:
                raise _GuardianLost("the guardian closed the connection")
            self._buf += data

    def _request(self, op, timeout=_REPLY_TIMEOUT):
        if self._closed or self._sock is None:
            raise StillpointError("this guardian client is closed")
        try:
            _send(self._sock, {"op": op})
        except OSError as exc:
            raise _GuardianLost(str(exc))
        try:
            return self._read_reply(timeout)
        except socket.timeout:
            raise StillpointError(
                "the freeze guardian (pid %s) did not answer %r within %gs; it still thaws at its deadline"
                % (self.pid, op, timeout))

    def _teardown(self):
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def _self_thaw(self, why):
        """The guardian is gone while we know it had frozen something: thaw it ourselves, one after
        another in the reverse of the freeze order (a nested filesystem after the one it is mounted in).

        What the guardian had not reported frozen is left alone: it may be someone else's freeze."""
        mounts, external, errors = [], [], []
        order = [i for wave in self.waves for i in wave]
        for index in sorted(set(self._frozen), key=lambda i: -order.index(i) if i in order else 0):
            mountpoint = self.plan[index]["mountpoint"]
            t0 = time.monotonic()
            item = {"mountpoint": mountpoint}
            try:
                _ioctl(self._fds[index], FITHAW)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    item["error"] = "was not frozen any more (the guardian had thawed it)"
                    external.append(mountpoint)
                else:
                    item["error"] = "FITHAW failed: %s" % os.strerror(exc.errno)
                    errors.append(mountpoint)
            item["thaw_ms"] = round((time.monotonic() - t0) * 1000.0, 3)
            mounts.append(item)
        end = time.monotonic()
        self._frozen = []
        record = {
            "mounts": mounts,
            "window_ms": round((end - self._frozen_at) * 1000.0, 3) if self._frozen_at is not None else None,
            "deadline_thawed": False,
            "deadline_exceeded": self._deadline_mono is not None and end > self._deadline_mono,
            "thawed_by": "client",
            "guardian_lost": True,
            "guardian_lost_reason": why,
            "frozen_at": self._frozen_at,
            "thawed_at": end,
            "deadline": self.deadline,
            "deadline_s": self.deadline_s,
            "externally_thawed": external,
            "thaw_errors": errors,
            "already_thawed": False,
        }
        if errors:
            raise StillpointError(
                "the freeze guardian died and thawing %s ourselves failed: thaw with `fsfreeze -u` NOW"
                % ", ".join(errors), record=record)
        return record

    # -- operations -----------------------------------------------------------------------

    def freeze(self):
        """Freeze the plan: the members of each wave at once, wave after wave (:func:`freeze_waves`).

        Returns ``{"mounts": [{"mountpoint", "index", "wave", "freeze_ms", "freeze_start", "freeze_end"}],
        "frozen_at", "deadline", "freeze_span_ms", "waves", "presync_ms"}``, mounts in freeze order;
        the instants are the guardian's ``time.monotonic()`` (CLOCK_MONOTONIC, the same in every process),
        ``freeze_span_ms`` runs from ``frozen_at`` to the end of the last FIFREEZE.

        If one member fails (EBUSY: someone else's freeze, or any error), every member this call froze is
        thawed again and the error names the member; what this call did not freeze is never thawed.

        Dirty data is written out first (``syncfs`` per filesystem, outside the window), so that the
        freeze itself only flushes what was written since: the window stays short under write load.
        """
        presync = presync_filesystems([p["mountpoint"] for p in self.plan])
        try:
            reply = self._request("freeze", timeout=self.deadline_s + _REPLY_TIMEOUT + self.app_wait)
        except _GuardianLost as exc:
            if self._owner and self._frozen:
                record = self._self_thaw(str(exc))
                self._record = record
                raise StillpointError("the freeze guardian (pid %s) died while freezing; the filesystems it had "
                                      "frozen were thawed by this process" % self.pid, record=record)
            raise StillpointError("the freeze guardian (pid %s) is gone (%s); nothing is frozen by it"
                                  % (self.pid, exc))
        if not reply.get("ok"):
            self._frozen = []
            if reply.get("error") == "quiesce":  # the application's lock was refused: nothing was frozen
                raise StillpointError(reply.get("msg"), application=reply.get("application"),
                                      actions=reply.get("actions") or [])
            error = _freeze_error(reply)
            for key in ("application", "actions", "application_action"):
                if key in reply:
                    error.details[key] = reply[key]
            raise error
        self._frozen_at = reply["frozen_at"]
        self._deadline_mono = reply.get("deadline_mono")
        self.deadline = reply["deadline"]
        self._frozen = [m.get("index", n) for n, m in enumerate(reply["mounts"])]
        out = {"mounts": reply["mounts"], "frozen_at": reply["frozen_at"], "deadline": reply["deadline"],
               "freeze_span_ms": reply.get("freeze_span_ms"), "waves": reply.get("waves"), "presync_ms": presync}
        for key in ("application", "actions"):
            if key in reply:
                out[key] = reply[key]
        return out

    def thaw(self):
        """Thaw in the reverse of the freeze waves, each wave at once; return the record (see the module
        docs: ``mounts`` in thaw order with ``thaw_ms``, ``thaw_start``, ``thaw_end``); idempotent."""
        if self._record is not None:
            return dict(self._record, already_thawed=True)
        if self._detached:
            raise StillpointError("this client detached from the guardian: use Guardian.connect(token).thaw()")
        try:
            reply = self._request("thaw")
        except _GuardianLost as exc:
            if self._owner and self._frozen:
                self._record = self._self_thaw(str(exc))
                return dict(self._record)
            raise StillpointError(
                "the freeze guardian (pid %s, token %s) is gone (%s): it thawed and exited already or was "
                "killed. If a filesystem is still frozen, thaw it with stillpoint.snapshots.fsfreeze "
                "state=thawed force=true" % (self.pid, self.token, exc), gone=True)
        if not reply.get("ok"):
            raise StillpointError("thaw refused by the guardian: %s" % reply.get("msg"), error=reply.get("error"))
        record = {k: v for k, v in reply.items() if k not in ("ok", "op")}
        self._record = dict(record, already_thawed=False)
        self._frozen = []
        return record

    def _owner_request(self, op, what):
        """``op`` (detach, keep), which only the client that started the guardian may ask; the deadline it answers."""
        if not self._owner:
            raise StillpointError("only the client that started the guardian can ask for a %s" % what)
        try:
            reply = self._request(op)
        except _GuardianLost as exc:
            raise StillpointError("the freeze guardian (pid %s) is gone (%s)" % (self.pid, exc))
        if not reply.get("ok"):
            raise StillpointError("%s refused by the guardian: %s" % (what, reply.get("msg")))
        self.deadline = reply.get("deadline", self.deadline)

    def detach(self):
        """Hand the freeze over to the guardian: only the deadline or a later connect()+thaw() ends it."""
        self._owner_request("detach", "detach")
        self._detached = True
        self._teardown()

    def hand_over(self):
        """Like :meth:`detach` (this process may exit, the freeze stays), but the owner's end of the connection
        goes to a **keeper**: a process of its own (double fork, ``setsid``, stdio on /dev/null) that holds it and
        the directory fds, and waits. The guardian tells it when it thawed, and it exits. If the guardian dies
        without saying so (SIGKILL) the keeper thaws, through its own fds, what the guardian had frozen (as a
        connected client does); if the keeper dies, the guardian sees its owner gone and thaws (and releases
        the application). Used in controller mode with a held application: neither process alone can leave the
        filesystems frozen or the application locked."""
        self._owner_request("keep", "hand-over")
        _spawn_detached(self._keeper_main)
        self._detached = True
        self._teardown()  # this process's copies; the keeper holds its own

    def _keeper_main(self):
        """Body of the keeper (see :meth:`hand_over`). Never returns; imports nothing, opens no frozen path."""
        code = 0
        try:
            gc.disable()
            for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN,
                           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGALRM):
                signal.signal(signum, signal.SIG_IGN)
            os.chdir("/")
            null = os.open("/dev/null", os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)
            close_fds_except({self._sock.fileno()} | set(fd for fd in self._fds if fd >= 0))
            self._sock.settimeout(None)
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self._buf += data
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    try:
                        message = json.loads(line.decode("utf-8"))
                    except ValueError:
                        continue
                    if message.get("event") == "thawed":
                        os._exit(0)
            # the connection ended and the guardian never said it thawed: it died while holding the freeze
            if self._frozen:
                self._self_thaw("the guardian died while it held the freeze (the keeper thawed)")
        except BaseException:  # never a traceback here
            code = 3
        finally:
            os._exit(code)

    def status(self):
        """The guardian's state: ``state`` (ready|frozen|thawed|failed), ``mounts`` with ``frozen``, ``deadline``..."""
        try:
            reply = self._request("status")
        except _GuardianLost as exc:
            raise StillpointError("the freeze guardian (pid %s, token %s) is gone (%s)"
                                  % (self.pid or "unknown", self.token, exc), gone=True)
        return {k: v for k, v in reply.items() if k not in ("ok", "op")}

    @property
    def detached(self):
        return self._detached

    def close(self):
        """End this client. If it owns a freeze it did not hand over, the freeze is thawed first."""
        if self._closed:
            return
        try:
            if self._owner and not self._detached and self._frozen and self._record is None:
                try:
                    self.thaw()
                except StillpointError:
                    pass  # closing the connection below makes the guardian thaw
        finally:
            self._teardown()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def force_thaw(mountpoints, mountinfo=None):
    """FITHAW each mountpoint, for an admin recovering a freeze left behind by someone else.

    Each path must be a mountpoint exactly (``/`` is allowed: a frozen root is what this is for).
    Returns ``[{"mountpoint", "thawed": bool, "thaw_ms"}]``; EINVAL means "was not frozen".
    """
    if mountinfo is None:
        mountinfo = read_mountinfo()
    visible = visible_mounts(mountinfo)
    refused, targets = [], []
    for raw in mountpoints or ():
        path = _norm(raw) if isinstance(raw, str) and os.path.isabs(os.path.expanduser(raw)) else None
        if path is None:
            refused.append("%r is not an absolute path" % (raw,))
        elif path not in visible:
            holder = containing_mount(path, visible)
            refused.append("%s is not a mountpoint%s" % (raw, " (it is on %s)" % holder["mountpoint"] if holder else ""))
        elif path not in targets:
            targets.append(path)
    if refused:
        raise StillpointError("refusing to thaw, nothing was thawed: %s; name mountpoints exactly" % "; ".join(refused))
    if not targets:
        raise StillpointError("no mountpoints to thaw were given")
    results = []
    for path in targets:
        t0 = time.monotonic()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise StillpointError("cannot open %s: %s" % (path, exc.strerror), results=results)
        try:
            _ioctl(fd, FITHAW)
            thawed = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise StillpointError("FITHAW on %s failed: %s" % (path, os.strerror(exc.errno)),
                                      errno=exc.errno, results=results)
            thawed = False
        finally:
            os.close(fd)
        results.append({"mountpoint": path, "thawed": thawed, "thaw_ms": round((time.monotonic() - t0) * 1000.0, 3)})
    return results


def _freeze_now(params, check_mode, protect_paths, result, warnings):
    plan = check_mountpoints(params["mountpoints"], protect_paths=protect_paths)
    result.update(plan=plan, python=sys.executable)
    # a held application (controller mode): built and checked here, run by the guardian (nothing started yet)
    app = _app_quiesce.from_params(dict(params, pre_hook=None, post_hook=None),
                                   mountpoints=[m["mountpoint"] for m in plan]) if params.get("application") else None
    if check_mode:
        result.update(changed=True, msg="check mode: would %sfreeze %s" % (
            "take the %s lock, " % params["application"] if app else "", ", ".join(m["mountpoint"] for m in plan)))
        return
    guardian = Guardian.start(plan, deadline=params["deadline"], application=app)
    try:
        frozen = guardian.freeze()
        if app is None:
            guardian.detach()
        else:
            guardian.hand_over()  # a keeper: the guardian's death thaws too (its client, and the lock, die with it)
    except BaseException:
        guardian.close()  # thaws whatever is still frozen (and the guardian releases the application)
        raise
    result.update(changed=True, token=guardian.token, guardian_pid=guardian.pid, deadline=guardian.deadline,
                  mounts=frozen["mounts"], frozen_at=frozen["frozen_at"], freeze_span_ms=frozen["freeze_span_ms"],
                  msg="frozen %s until the thaw or the deadline (%gs)" % (", ".join(m["mountpoint"] for m in plan),
                                                                          params["deadline"]))
    if app is not None:
        result.update(application=frozen.get("application"), actions=frozen.get("actions") or [])
        if not frozen["application"]["locked"]:
            warnings.append("the %s lock was not taken (on_quiesce_failure=continue): %s; frozen at the filesystem "
                            "level only" % (params["application"], frozen["application"].get("problem")))


def _thaw_token(token, check_mode, result, warnings):
    try:
        guardian = Guardian.connect(token)
    except StillpointError as exc:
        if not exc.details.get("gone"):
            raise
        result.update(changed=False, guardian="gone", already_thawed=True, mounts=[])
        warnings.append(
            "no guardian for token %s any more: it thawed and exited (after a reported thaw, or %gs after thawing on its "
            "own), or it was killed. Nothing to thaw through it; if a filesystem is still frozen, use force=true with "
            "its mountpoint." % (token, DEFAULT_GRACE))
        return
    with guardian:
        result.update(guardian_pid=guardian.pid, guardian="running")
        if check_mode:
            status = guardian.status()
            result.update(changed=status["state"] == "frozen", state=status["state"], mounts=status["mounts"])
            return
        record = guardian.thaw()
    result.update(record)
    result["changed"] = not record.get("already_thawed", False)
    if record.get("deadline_thawed"):
        warnings.append(
            "the freeze outlived its budget: the guardian thawed at the deadline (%gs) before this thaw. Anything taken "
            "after the deadline is only crash-consistent." % record.get("deadline_s", 0))
    for mount in record.get("mounts", []):
        if mount.get("error"):
            warnings.append("%s: %s" % (mount["mountpoint"], mount["error"]))


def fsfreeze(params, check_mode=False, protect_paths=(), warn=None):
    """The fsfreeze module: ``state=frozen`` freezes ``mountpoints`` under a new guardian (detached: the
    result carries its ``token``); ``state=thawed`` thaws the freeze of ``token``, or with ``force`` runs a
    plain FITHAW on ``mountpoints``. Returns the module's result; ``warn(text)`` gets each warning."""
    result, warnings = dict(changed=False), []
    try:
        _fsfreeze(params, check_mode, protect_paths, result, warnings)
    except StillpointError as exc:
        for key, value in result.items():  # what was known before the failure (the plan...)
            exc.details.setdefault(key, value)
        raise
    finally:
        for warning in warnings:
            (warn or (lambda text: None))(warning)
    return result


def _fsfreeze(params, check_mode, protect_paths, result, warnings):
    if params["state"] == "frozen":
        if params["token"] or params["force"]:
            raise StillpointError("token and force only go with state=thawed")
        _freeze_now(params, check_mode, protect_paths, result, warnings)
    elif params.get("application"):
        raise StillpointError("application goes with state=frozen (the guardian takes the lock before it freezes); the "
                              "thaw with the token releases it")
    elif params["token"]:
        if params["force"]:
            raise StillpointError("give either token (thaw the freeze it names) or force=true with mountpoints "
                                  "(plain thaw), not both")
        _thaw_token(params["token"], check_mode, result, warnings)
    elif not params["force"]:
        raise StillpointError("state=thawed needs token (from state=frozen), or force=true with mountpoints to "
                              "thaw a freeze made by something else")
    elif not params["mountpoints"]:
        raise StillpointError("force=true needs mountpoints: the filesystems to thaw")
    elif check_mode:
        result.update(changed=True, msg="check mode: would thaw %s if frozen" % ", ".join(params["mountpoints"]))
    else:
        result["mounts"] = force_thaw(params["mountpoints"])
        result["changed"] = any(r["thawed"] for r in result["mounts"])


RAW_THAW_SCRIPT = r"""
import json, socket, sys
def out(obj, rc):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(rc)
if len(sys.argv) < 2:
    out({"msg": "usage: python3 -c SCRIPT TOKEN [thaw|status]"}, 1)
token = sys.argv[1]
op = sys.argv[2] if len(sys.argv) > 2 else "thaw"
if op not in ("thaw", "status"):
    out({"msg": "unknown operation %s: use thaw or status" % op}, 1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect("\0stillpoint-freeze-" + token)
except OSError as e:
    out({"msg": "no freeze guardian for token %s (%s): it thawed and exited already, or it was killed; if a "
         "filesystem is still frozen, thaw it with stillpoint.snapshots.fsfreeze state=thawed force=true"
         % (token, e), "gone": True}, 1)
try:
    s.sendall((json.dumps({"op": op}) + "\n").encode())
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            reply = json.loads(line.decode())
            if "event" in reply:
                continue
            if reply.get("ok"):
                out(reply, 0)
            reply.setdefault("msg", "the guardian refused %s" % op)
            out(reply, 1)
        data = s.recv(65536)
        if not data:
            out({"msg": "the guardian closed the connection without answering"}, 1)
        buf += data
except (OSError, ValueError) as e:
    out({"msg": "talking to the freeze guardian failed: %s" % e}, 1)
"""
