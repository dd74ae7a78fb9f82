# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parallel freeze: the filesystems of a set frozen at once, in waves where one is mounted inside another.

Only loop filesystems made by these tests are ever frozen. Nothing here assumes a quiet machine:

* what happened when is read from clocks, not from sleeps: the guardian reports each member's
  FIFREEZE/FITHAW instants on CLOCK_MONOTONIC (``time.monotonic()``, the same clock in every process),
  and the writer processes stamp each write with the same clock;
* "in the middle of a freeze" is made, not waited for: a *blocker* process splices from an empty pipe
  into a file on a filesystem. The splice holds that filesystem's write reference (sb_start_write)
  while it waits for pipe data, so a FIFREEZE of that filesystem waits inside the kernel (D state in
  freeze_super) until the test writes a byte into the pipe. Until then the freeze of that member is
  in progress, for as long as the test wants;
* every wait has a generous bound that only decides how long a broken build takes to fail.
"""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
# the loopfs fixture
from tests.support.loopfs import alive
from tests.support.loopfs import guardians  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import loopfs  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import probe_frozen

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD_ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))
BOUND = 60.0  # how long a broken build may take to fail a wait; never reached when things work

# Writes 4 KiB + fsync in a loop (or once); before each write "I <issued>", after it "D <issued> <done>"
# (monotonic).
WRITER = r"""
import os, sys, time
once = sys.argv[2] == "once"
# the one-shot writer starts on a frozen filesystem: its file exists already (O_CREAT would wait for the thaw)
fd = os.open(os.path.join(sys.argv[1], "once.dat" if once else "writer.dat"), os.O_WRONLY | (0 if once else os.O_CREAT),
             0o600)
block = b"w" * 4096
n = 0
while n == 0 or not once:
    t0 = time.monotonic()
    os.write(1, b"I %.9f\n" % t0)
    os.pwrite(fd, block, (n % 64) * 4096)
    os.fsync(fd)
    os.write(1, b"D %.9f %.9f\n" % (t0, time.monotonic()))
    n += 1
"""

# Holds the filesystem's write reference: splice from the inherited pipe fd into a file on it.
BLOCKER = r"""
import os, sys
fd = os.open(os.path.join(sys.argv[2], "blocker.dat"), os.O_WRONLY | os.O_CREAT, 0o600)
os.write(1, b"ready\n")
os.splice(int(sys.argv[1]), fd, 1)
"""

# The module's side: start the guardian, ask for the freeze, report the members the guardian said
# it froze, then block in freeze() until killed.
CLIENT = r"""
import json, os, sys, threading, time
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
mountpoints, want = json.loads(sys.argv[1]), int(sys.argv[2])
g = _freeze.Guardian.start(_freeze.check_mountpoints(mountpoints), deadline=120, hold_on_disconnect=False)
def report():
    while len(g._frozen) < want:
        time.sleep(0.005)
    os.write(1, (json.dumps({"pid": g.pid, "token": g.token, "frozen": sorted(g._frozen)}) + "\n").encode())
threading.Thread(target=report, daemon=True).start()
g.freeze()
os.write(1, b'{"unexpected": "freeze returned"}\n')
time.sleep(600)
"""


class Lines:
    """The stdout lines of a child process, read without blocking."""

    def __init__(self, proc):
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""
        self.lines = []

    def pump(self, timeout=0.0):
        if select.select([self.fd], [], [], timeout)[0]:
            data = os.read(self.fd, 65536)
            self.buf += data
            *done, self.buf = self.buf.split(b"\n")
            self.lines.extend(line.decode() for line in done)
            return bool(data)
        return False


def wait_for(what, check, pumps=(), bound=BOUND):
    end = time.monotonic() + bound
    while not check():
        assert time.monotonic() < end, "waited %gs for %s" % (bound, what)
        if pumps:
            select.select([p.fd for p in pumps], [], [], 0.05)
            for p in pumps:
                p.pump()
        else:
            time.sleep(0.005)


def in_freeze_super(pid):
    """True when a thread of ``pid`` sleeps in the kernel's freeze_super (a FIFREEZE under way)."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return False
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/wchan" % (pid, tid)) as handle:
                if "freeze_super" in handle.read():
                    return True
        except OSError:
            pass
    return False


class Blocker:
    """Keeps any FIFREEZE of ``mountpoint`` waiting until :meth:`release`."""

    def __init__(self, mountpoint):
        self.read_fd, self.write_fd = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", BLOCKER, str(self.read_fd), mountpoint],
                                     pass_fds=(self.read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        os.close(self.read_fd)
        assert self.proc.stdout.readline() == b"ready\n"
        wait_for("the blocker's splice to wait for pipe data", lambda: "pipe" in self._wchan())

    def _wchan(self):
        try:
            with open("/proc/%d/wchan" % self.proc.pid) as handle:
                return handle.read()
        except OSError:
            return ""

    def release(self):
        if self.write_fd is not None:
            os.write(self.write_fd, b"x")
            os.close(self.write_fd)
            self.write_fd = None
        self.proc.wait(timeout=BOUND)
        self.proc.stdout.close()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()  # the splice waits interruptibly: this ends it too
        self.release()


class Writers:
    """One WRITER process per mountpoint."""

    def __init__(self, mountpoints, mode="loop"):
        self.mountpoints = list(mountpoints)
        self.procs = [subprocess.Popen([sys.executable, "-c", WRITER, m, mode], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE) for m in self.mountpoints]
        self.out = [Lines(p) for p in self.procs]

    def issued(self, n):
        return [float(line.split()[1]) for line in self.out[n].lines if line.startswith("I ")]

    def done(self, n):
        return [(float(a), float(b)) for _d, a, b in (line.split() for line in self.out[n].lines if line.startswith("D "))]

    def wait(self, what, check):
        wait_for(what, check, pumps=self.out)

    def outstanding(self, n):
        """The issue instant of a write that has not completed (None if there is none)."""
        issued, done = self.issued(n), self.done(n)
        return issued[-1] if len(issued) > len(done) else None

    def close(self):
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=BOUND)
            proc.stdout.close()


def write_completes(mountpoint, bound=BOUND):
    """Append + fsync one byte on ``mountpoint`` in a separate process; True when it finished in ``bound``."""
    code = ("import os,sys; fd=os.open(os.path.join(sys.argv[1], 'probe'), os.O_WRONLY|os.O_CREAT|os.O_APPEND);"
            "os.write(fd, b'x'); os.fsync(fd)")
    proc = subprocess.Popen([sys.executable, "-c", code, mountpoint])
    try:
        return proc.wait(timeout=bound) == 0
    except subprocess.TimeoutExpired:
        return False  # blocked on a frozen filesystem: it finishes by itself after the thaw
    finally:
        if proc.poll() is None:
            proc.kill()  # SIGKILL is delivered once the write leaves the frozen wait


def freeze_in_thread(guardian):
    """Run ``guardian.freeze()`` in a thread (it waits for the blocked member); returns (thread, box)."""
    box = {}

    def run():
        try:
            box["result"] = guardian.freeze()
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def by_mountpoint(mounts):
    return dict((m["mountpoint"], m) for m in mounts)


# ------------------------------------------------------------------------------------------


def test_writers_on_eight_filesystems_block_while_frozen_and_resume_after_the_thaw(loopfs, guardians):
    """A looping writer on each of 8 filesystems, and once frozen one more write per filesystem issued by a
    fresh process (so issued after the freeze for sure). Every write issued after its filesystem's freeze
    ended completes only after its thaw began, on the one CLOCK_MONOTONIC of the guardian and the writers."""
    paths = [fs.mountpoint for fs in loopfs(8)]
    writers = Writers(paths)
    late = None
    g = None
    try:
        writers.wait("a first write on every filesystem", lambda: all(writers.done(n) for n in range(8)))
        for p in paths:
            with open(os.path.join(p, "once.dat"), "wb"):
                pass
        g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=BOUND + 60)
        guardians.append(g.pid)
        frozen = g.freeze()
        assert frozen["waves"] == 1 and [m["mountpoint"] for m in frozen["mounts"]] == paths
        fz = by_mountpoint(frozen["mounts"])
        assert all(frozen["frozen_at"] <= fz[p]["freeze_start"] <= fz[p]["freeze_end"] for p in paths)
        assert frozen["freeze_span_ms"] >= max(m["freeze_ms"] for m in frozen["mounts"])
        late = Writers(paths, mode="once")
        # each looping writer ends up inside a write it cannot finish, and each late writer has issued its write
        wait_for("a write under way on every filesystem", lambda: all(
            writers.outstanding(n) is not None and late.outstanding(n) is not None for n in range(8)),
            pumps=writers.out + late.out)
        assert all(late.issued(n)[0] > fz[p]["freeze_end"] for n, p in enumerate(paths))
        record = g.thaw()
        th = by_mountpoint(record["mounts"])
        assert set(th) == set(paths) and all("error" not in m for m in record["mounts"])
        for p in paths:
            assert th[p]["freeze_end"] == fz[p]["freeze_end"] and th[p]["thaw_start"] >= fz[p]["freeze_end"]
        late.wait("the late writes to complete after the thaw", lambda: all(late.done(n) for n in range(8)))
        # the looping writers resume: a write issued after the thaw completes on every filesystem
        writers.wait("writes issued after the thaw on every filesystem to complete",
                     lambda: all(any(t0 > th[p]["thaw_end"] for t0, _t1 in writers.done(n)) for n, p in enumerate(paths)))
        for n, p in enumerate(paths):
            during = [(t0, t1) for t0, t1 in writers.done(n) + late.done(n) if t0 > fz[p]["freeze_end"]
                      and t0 < th[p]["thaw_start"]]
            assert during, "%s: no write was issued while it was frozen" % p
            early = [(t0, t1) for t0, t1 in during if t1 < th[p]["thaw_start"]]
            assert not early, "%s: writes issued while frozen completed before the thaw: %s" % (p, early)
    finally:
        if g is not None:
            g.close()
        writers.close()
        if late is not None:
            late.close()


def test_a_member_whose_freeze_blocks_does_not_hold_the_others(loopfs, guardians):
    """The proof of concurrency: the first member's FIFREEZE is held in the kernel, the others freeze meanwhile."""
    fss = loopfs(4)
    paths = [fs.mountpoint for fs in fss]
    blocker = Blocker(paths[0])
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=BOUND + 60)
    guardians.append(g.pid)
    try:
        thread, box = freeze_in_thread(g)
        wait_for("the guardian to report members 1-3 frozen", lambda: sorted(g._frozen) == [1, 2, 3] or box)
        assert not box, box
        assert in_freeze_super(g.pid), "the first member's FIFREEZE must still be under way"
        blocker.release()
        thread.join(BOUND)
        assert "result" in box, box
        fz = by_mountpoint(box["result"]["mounts"])
        assert all(fz[p]["freeze_end"] < fz[paths[0]]["freeze_end"] for p in paths[1:])
        assert fz[paths[0]]["freeze_start"] < min(fz[p]["freeze_end"] for p in paths[1:])
        assert all(probe_frozen(p) for p in paths)
        record = g.thaw()
        assert sorted(m["mountpoint"] for m in record["mounts"]) == sorted(paths)
        assert not any(probe_frozen(p) for p in paths)
    finally:
        blocker.close()
        g.close()


def test_module_killed_mid_freeze_the_guardian_thaws_all(loopfs, guardians):
    """The module (the guardian's client) is SIGKILLed while a member's FIFREEZE is still under way: the
    guardian thaws the frozen ones at once, and the late one the moment its FIFREEZE returns."""
    fss = loopfs(4)
    paths = [fs.mountpoint for fs in fss]
    blocker = Blocker(paths[0])
    client = subprocess.Popen([sys.executable, "-c", CLIENT, json.dumps(paths), "3"], env=CHILD_ENV,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
    try:
        out = Lines(client)
        wait_for("the client to report members 1-3 frozen", lambda: out.lines or client.poll() is not None, pumps=[out])
        info = json.loads(out.lines[0])
        guardians.append(info["pid"])
        assert info["frozen"] == [1, 2, 3], info
        assert in_freeze_super(info["pid"]), "the first member's FIFREEZE must still be under way"
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(timeout=BOUND)
        # the others thaw while the blocked FIFREEZE is still in the kernel: a write completes on each
        for p in paths[1:]:
            assert write_completes(p), "%s still frozen after the module died" % p
        with _freeze.Guardian.connect(info["token"]) as other:
            status = other.status()
        assert status["state"] == "thawed" and status["thawed_by"] == "disconnect", status
        assert status["record"]["aborted_freeze"] is True and status["pending"] == [paths[0]], status
        assert sorted(m["mountpoint"] for m in status["record"]["mounts"]) == sorted(paths[1:])
        assert in_freeze_super(info["pid"]) and alive(info["pid"]), "the guardian must stay for the late FIFREEZE"
        blocker.release()
        # the late FIFREEZE returned: its thread thawed it, then the guardian exits
        assert write_completes(paths[0]), "the member whose freeze was under way is still frozen"
        wait_for("the guardian to exit", lambda: not alive(info["pid"]))
        assert not any(probe_frozen(p) for p in paths)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        client.stdout.close()
        blocker.close()


def test_guardian_killed_mid_freeze_the_client_thaws_what_it_was_told(loopfs, guardians):
    """The guardian SIGKILLed while a member's FIFREEZE is under way: the safety net is as before the parallel
    freeze. The client thaws, through its own fds, the members the guardian reported frozen; the member whose
    FIFREEZE was under way completes its freeze after the kill and is left frozen, because the client cannot
    tell it from someone else's freeze (the same as the sequential guardian killed inside a FIFREEZE)."""
    fss = loopfs(4)
    paths = [fs.mountpoint for fs in fss]
    blocker = Blocker(paths[0])
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=BOUND + 60)
    guardians.append(g.pid)
    try:
        thread, box = freeze_in_thread(g)
        wait_for("the guardian to report members 1-3 frozen", lambda: sorted(g._frozen) == [1, 2, 3] or box)
        os.kill(g.pid, signal.SIGKILL)
        # a process dies only once its thread sleeping in freeze_super returns: that needs the release
        blocker.release()
        thread.join(BOUND)
        error = box.get("error")
        assert isinstance(error, StillpointError) and "died while freezing" in error.msg, box
        record = error.details["record"]
        assert record["guardian_lost"] is True and record["thawed_by"] == "client"
        assert [m["mountpoint"] for m in record["mounts"]] == list(reversed(paths[1:]))
        for p in paths[1:]:
            assert write_completes(p), "%s: the client did not thaw it" % p
        wait_for("the guardian to be gone", lambda: not alive(g.pid))
        assert fss[0].is_frozen(), "unchanged behaviour: a FIFREEZE that completes after the guardian's death stays"
    finally:
        blocker.close()
        g.close()
        fss[0].thaw()  # from a separate fsfreeze -u process
    assert not fss[0].is_frozen()


def test_already_frozen_members_are_refused_and_the_others_thawed(loopfs, guardians):
    fss = loopfs(5)
    paths = [fs.mountpoint for fs in fss]
    fss[1].freeze()  # someone else's freezes, by separate fsfreeze processes
    fss[3].freeze()
    try:
        with _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=BOUND) as g:
            guardians.append(g.pid)
            with pytest.raises(StillpointError) as info:
                g.freeze()
        msg, details = info.value.msg, info.value.details
        assert msg.startswith("%s is already frozen by someone else" % paths[1]), msg
        assert "FIFREEZE also failed on %s (EBUSY)" % paths[3] in msg
        assert "never thaws a freeze it did not make" in msg
        assert details["mountpoint"] == paths[1] and details["errname"] == "EBUSY"
        assert [f["mountpoint"] for f in details["failed"]] == [paths[1], paths[3]]
        assert sorted(details["rolled_back"]) == sorted([paths[0], paths[2], paths[4]])
        for p in (paths[0], paths[2], paths[4]):
            assert write_completes(p), "%s was not thawed again" % p
        assert fss[1].is_frozen() and fss[3].is_frozen(), "someone else's freezes must be left alone"
        wait_for("the guardian to exit", lambda: not alive(g.pid))
        assert fss[1].is_frozen() and fss[3].is_frozen()
    finally:
        fss[1].thaw()
        fss[3].thaw()
    assert not fss[1].is_frozen() and not fss[3].is_frozen()


def _mount_at(fs, where):
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", fs.fstype, fs.device, where], check=True, timeout=60)


def _unmount(fs, where):
    fs.thaw()  # never unmount a frozen filesystem (it would hang): thaw from a separate process first
    for _attempt in range(10):
        if subprocess.run(["umount", where], check=False, timeout=60).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", where], check=False, timeout=60)


def test_nested_mounts_are_frozen_child_first_and_thawed_parent_first(loopfs, guardians):
    """top/ holds mid (at top/mid), mid holds leaf (at top/mid/leaf); flat is beside them. Waves: leaf and
    flat, then mid, then top; the thaw in reverse. Checked from the guardian's instants, and with the
    leaf's FIFREEZE held in the kernel: its parents stay unfrozen meanwhile."""
    top, mid, leaf, flat = loopfs(4)
    mid_at = os.path.join(top.mountpoint, "mid")
    leaf_at = os.path.join(mid_at, "leaf")
    mounted = []
    blocker = None
    try:
        _mount_at(mid, mid_at)
        mounted.append((mid, mid_at))
        _mount_at(leaf, leaf_at)
        mounted.append((leaf, leaf_at))
        paths = [top.mountpoint, mid_at, leaf_at, flat.mountpoint]  # parents named first
        plan = _freeze.check_mountpoints(paths)
        assert _freeze.freeze_waves(plan) == [[2, 3], [1], [0]]
        blocker = Blocker(leaf_at)
        g = _freeze.Guardian.start(plan, deadline=BOUND + 60)
        guardians.append(g.pid)
        with g:
            thread, box = freeze_in_thread(g)
            wait_for("the flat member to be reported frozen", lambda: g._frozen == [3] or box)
            assert not box and in_freeze_super(g.pid), box
            # leaf still freezing: neither parent may be frozen yet (the probe freezes and thaws at once)
            assert not probe_frozen(mid_at) and not probe_frozen(top.mountpoint)
            blocker.release()
            thread.join(BOUND)
            assert "result" in box, box
            fz = by_mountpoint(box["result"]["mounts"])
            assert [m["mountpoint"] for m in box["result"]["mounts"]] == [leaf_at, flat.mountpoint, mid_at,
                                                                          top.mountpoint]
            assert [fz[p]["wave"] for p in (leaf_at, flat.mountpoint, mid_at, top.mountpoint)] == [0, 0, 1, 2]
            assert fz[leaf_at]["freeze_end"] <= fz[mid_at]["freeze_start"]
            assert fz[flat.mountpoint]["freeze_end"] <= fz[mid_at]["freeze_start"]
            assert fz[mid_at]["freeze_end"] <= fz[top.mountpoint]["freeze_start"]
            record = g.thaw()
        th = by_mountpoint(record["mounts"])
        assert [m["mountpoint"] for m in record["mounts"]] == [top.mountpoint, mid_at, flat.mountpoint, leaf_at]
        assert th[top.mountpoint]["thaw_end"] <= th[mid_at]["thaw_start"]
        assert th[mid_at]["thaw_end"] <= th[leaf_at]["thaw_start"]
        assert th[mid_at]["thaw_end"] <= th[flat.mountpoint]["thaw_start"]
        assert not any(probe_frozen(p) for p in paths)
    finally:
        if blocker is not None:
            blocker.close()
        for fs, where in reversed(mounted):
            _unmount(fs, where)


def test_deadline_while_a_member_is_still_freezing(loopfs, guardians):
    """A FIFREEZE that does not return no longer holds the others past the deadline: they thaw at the
    deadline, the freeze fails naming the member still freezing, which is thawed when its FIFREEZE returns."""
    fss = loopfs(3)
    paths = [fs.mountpoint for fs in fss]
    blocker = Blocker(paths[0])
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=1.0)
    guardians.append(g.pid)
    try:
        t0 = time.monotonic()
        with pytest.raises(StillpointError) as info:
            g.freeze()
        assert time.monotonic() - t0 >= 1.0 - 0.05, "gave up before the deadline"
        details = info.value.details
        assert "took longer than the deadline of 1s (reached while %s was still freezing)" % paths[0] in info.value.msg
        assert details["pending"] == [paths[0]] and sorted(details["rolled_back"]) == sorted(paths[1:])
        for p in paths[1:]:
            assert write_completes(p), "%s still frozen after the deadline" % p
        assert alive(g.pid) and in_freeze_super(g.pid), "the guardian must stay for the FIFREEZE under way"
        blocker.release()
        assert write_completes(paths[0]), "the late FIFREEZE was not thawed"
        wait_for("the guardian to exit", lambda: not alive(g.pid))
        assert not any(probe_frozen(p) for p in paths)
    finally:
        blocker.close()
        g.close()
