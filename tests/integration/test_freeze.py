# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guardian freezing real filesystems on loop devices, and surviving its clients' deaths.

Only loop filesystems made by these tests are ever frozen. "Frozen" is probed from this
process with FIFREEZE (EBUSY = somebody holds a freeze) followed at once by FITHAW.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
# the loopfs fixture
from tests.support.loopfs import alive
from tests.support.loopfs import wait_gone
from tests.support.loopfs import guardians  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import loopfs  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import probe_frozen
from tests.support.loopfs import wait_thawed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD_ENV = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))

# A client in its own process: start the guardian, freeze, maybe detach, say so, then wait to be killed.
CHILD = r"""
import json, os, signal, sys, time
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _freeze
mountpoints, mode, deadline, hold = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "hold"
plan = _freeze.check_mountpoints(mountpoints)
if mode == "audit":
    # In the forked guardian any import, or any open of a path on the filesystems to freeze, kills it.
    parent = os.getpid()
    def hook(event, args):
        if os.getpid() == parent:
            return
        if event == "import":
            os._exit(97)
        if event == "open" and isinstance(args[0], str) and any(args[0].startswith(m) for m in mountpoints):
            os._exit(98)
    sys.addaudithook(hook)
g = _freeze.Guardian.start(plan, deadline=deadline, hold_on_disconnect=hold)
if mode == "audit":
    frozen = g.freeze()
    with _freeze.Guardian.connect(g.token) as other:
        status = other.status()
    record = g.thaw()
    sys.stdout.write(json.dumps({"pid": g.pid, "status": status, "record": record}) + "\n")
    sys.stdout.flush()
    sys.exit(0)
if mode == "request-and-die":
    sys.stdout.write(json.dumps({"token": g.token, "pid": g.pid}) + "\n")
    sys.stdout.flush()
    g._sock.sendall(b'{"op": "freeze"}\n')
    os.kill(os.getpid(), signal.SIGKILL)
frozen = g.freeze()
if mode == "detach":
    g.detach()
sys.stdout.write(json.dumps({"token": g.token, "pid": g.pid, "frozen_at": frozen["frozen_at"]}) + "\n")
sys.stdout.flush()
time.sleep(120)
"""


def spawn_client(mountpoints, mode="hold-freeze", deadline=5.0, hold=False):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(mountpoints), mode, str(deadline), "hold" if hold else "nohold"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV,
        start_new_session=True)


def read_line(proc, timeout=15.0):
    """One line from the child's stdout, or fail with its stderr."""
    fd = proc.stdout.fileno()
    data = b""
    end = time.monotonic() + timeout
    while b"\n" not in data:
        remaining = end - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    if b"\n" not in data:
        proc.kill()
        pytest.fail("client said nothing: %s" % proc.stderr.read().decode(errors="replace")[-2000:])
    return json.loads(data.split(b"\n", 1)[0])


def stdout_closes(proc, timeout=5.0):
    """True when nobody holds the child's stdout any more (the guardian must not keep it open)."""
    fd = proc.stdout.fileno()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if select.select([fd], [], [], max(0.0, end - time.monotonic()))[0] and not os.read(fd, 4096):
            return True
    return False


def mounts_of(filesystems):
    return [fs.mountpoint for fs in filesystems]


# ------------------------------------------------------------------------------------------


def test_freeze_in_order_thaw_in_reverse_with_timings(loopfs, guardians):
    fss = loopfs(3)
    paths = mounts_of(fss)
    plan = _freeze.check_mountpoints(paths)
    assert [p["mountpoint"] for p in plan] == paths
    with _freeze.Guardian.start(plan, deadline=10) as g:
        guardians.append(g.pid)
        assert g.pid != os.getpid() and alive(g.pid)
        assert not any(probe_frozen(p) for p in paths)  # start() freezes nothing
        frozen = g.freeze()
        assert [m["mountpoint"] for m in frozen["mounts"]] == paths
        assert all(m["freeze_ms"] >= 0 for m in frozen["mounts"])
        assert all(probe_frozen(p) for p in paths)
        assert abs(frozen["deadline"] - (time.time() + 10)) < 2
        status = g.status()
        assert status["state"] == "frozen" and all(m["frozen"] for m in status["mounts"])
        record = g.thaw()
    assert [m["mountpoint"] for m in record["mounts"]] == list(reversed(paths))
    assert all(m["thaw_ms"] >= 0 and "error" not in m for m in record["mounts"])
    assert record["thawed_by"] == "client" and record["deadline_thawed"] is False
    assert record["window_ms"] >= max(m["freeze_ms"] for m in frozen["mounts"])
    assert record["window_ms"] < 10000
    assert not any(probe_frozen(p) for p in paths)
    again = g.thaw()
    assert again["already_thawed"] is True and again["window_ms"] == record["window_ms"]
    assert wait_gone(g.pid), "the guardian must exit after a reported client thaw"


def test_a_writer_blocks_while_frozen_and_resumes_after(loopfs, guardians):
    fs = loopfs(1)[0]
    writer = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\n"
         "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
         "n = 0\n"
         "while True:\n"
         "    os.pwrite(fd, os.urandom(4096), (n % 64) * 4096); os.fsync(fd); n += 1\n"
         "    os.write(1, b'.')\n", os.path.join(fs.mountpoint, "progress.dat")],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = writer.stdout.fileno()

    def progress(seconds):
        count, end = 0, time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return count
            if select.select([out], [], [], remaining)[0]:
                count += len(os.read(out, 65536))

    try:
        assert progress(0.3) > 0, "the writer does not write at all"
        with _freeze.Guardian.start(_freeze.check_mountpoints([fs.mountpoint]), deadline=10) as g:
            guardians.append(g.pid)
            g.freeze()
            progress(0.1)  # an fsync already past the freeze gate may still complete
            stalled = progress(0.5)
            record = g.thaw()
        resumed = progress(0.5)
        assert stalled == 0, "the writer made progress while frozen"
        assert resumed > 0, "the writer did not resume after the thaw"
        assert record["window_ms"] >= 600
    finally:
        if fs.is_frozen():
            fs.thaw()
        writer.kill()
        writer.wait(timeout=10)


def test_ebusy_refusal_never_thaws_someone_elses_freeze(loopfs, guardians):
    fss = loopfs(3)
    paths = mounts_of(fss)
    fss[1].freeze()  # someone else's freeze, by a separate fsfreeze process
    try:
        with _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=10) as g:
            guardians.append(g.pid)
            with pytest.raises(StillpointError) as info:
                g.freeze()
        msg = info.value.msg
        assert msg.startswith("%s is already frozen by someone else" % paths[1])
        assert "never thaws a freeze it did not make" in msg
        assert "fsfreeze -u %s" % paths[1] in msg
        # the others were frozen at the same time as the busy one, and thawed again
        assert sorted(info.value.details["rolled_back"]) == sorted([paths[0], paths[2]])
        assert [f["mountpoint"] for f in info.value.details["failed"]] == [paths[1]]
        assert not probe_frozen(paths[0]) and not probe_frozen(paths[2]), "the others must be thawed again"
        assert probe_frozen(paths[1]), "someone else's freeze must be left alone"
        assert wait_gone(g.pid)
        assert probe_frozen(paths[1])
    finally:
        fss[1].thaw()
    assert not probe_frozen(paths[1])


def test_deadline_thaws_while_the_client_is_still_connected(loopfs, guardians):
    paths = mounts_of(loopfs(2))
    with _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=1.0) as g:
        guardians.append(g.pid)
        frozen = g.freeze()
        waited = wait_thawed(paths, timeout=2.5)
        assert waited is not None, "not thawed within deadline + 1 s"
        assert time.monotonic() - frozen["frozen_at"] >= 1.0 - 0.05, "thawed before the deadline"
        other = _freeze.Guardian.connect(g.token)
        try:
            status = other.status()
        finally:
            other.close()
        assert status["state"] == "thawed" and status["deadline_thawed"] is True
        assert status["thawed_by"] == "deadline"
        record = g.thaw()
    assert record["deadline_thawed"] is True and record["already_thawed"] is True
    assert 1000 <= record["window_ms"] < 2500
    assert wait_gone(g.pid)


def test_detached_freeze_is_held_until_the_deadline_then_fetched_by_token(loopfs, guardians):
    paths = mounts_of(loopfs(2))
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=1.0)
    guardians.append(g.pid)
    frozen = g.freeze()
    g.detach()
    with pytest.raises(StillpointError, match="detached"):
        g.thaw()
    g.close()
    assert all(probe_frozen(p) for p in paths), "a detached freeze must survive the client going away"
    assert wait_thawed(paths, timeout=2.5) is not None, "not thawed within deadline + 1 s"
    assert time.monotonic() - frozen["frozen_at"] >= 0.95
    with _freeze.Guardian.connect(g.token) as later:
        assert later.pid == g.pid
        record = later.thaw()
    assert record["deadline_thawed"] is True and record["thawed_by"] == "deadline"
    assert wait_gone(g.pid), "the guardian exits once its record was fetched"
    with pytest.raises(StillpointError, match="no freeze guardian"):
        _freeze.Guardian.connect(g.token)


def test_controller_thaw_through_the_raw_script(loopfs, guardians):
    paths = mounts_of(loopfs(2))
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=20)
    guardians.append(g.pid)
    g.freeze()
    g.detach()
    python3 = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

    def raw(op):
        proc = subprocess.run([python3, "-I", "-c", _freeze.RAW_THAW_SCRIPT, g.token, op],
                              capture_output=True, text=True, timeout=30, check=False)
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, proc.stdout + proc.stderr
        return proc.returncode, json.loads(lines[0])

    rc, status = raw("status")
    assert rc == 0 and status["state"] == "frozen" and status["detached"] is True
    assert all(probe_frozen(p) for p in paths)
    rc, record = raw("thaw")
    assert rc == 0 and record["thawed_by"] == "client" and record["deadline_thawed"] is False
    assert [m["mountpoint"] for m in record["mounts"]] == list(reversed(paths))
    assert not any(probe_frozen(p) for p in paths)
    assert wait_gone(g.pid)
    rc, gone = raw("thaw")
    assert rc == 1 and gone["gone"] is True and "msg" in gone


def test_other_users_cannot_talk_to_the_guardian(loopfs, guardians):
    paths = mounts_of(loopfs(1))
    with _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=10) as g:
        guardians.append(g.pid)
        g.freeze()
        proc = subprocess.run(["/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                               "-I", "-c", _freeze.RAW_THAW_SCRIPT, g.token, "thaw"],
                              capture_output=True, text=True, timeout=30, user=65534, group=65534, cwd="/", check=False)
        assert proc.returncode == 1
        reply = json.loads(proc.stdout)
        # the guardian hangs up on a peer with another uid, before or after it has sent its request
        assert "thawed_by" not in reply
        assert "without answering" in reply["msg"] or "Broken pipe" in reply["msg"] or "reset" in reply["msg"]
        assert all(probe_frozen(p) for p in paths), "a stranger's thaw must not be obeyed"
        record = g.thaw()
    assert record["thawed_by"] == "client"


def test_guardian_killed_client_thaws_itself(loopfs, guardians):
    paths = mounts_of(loopfs(2))
    g = _freeze.Guardian.start(_freeze.check_mountpoints(paths), deadline=10)
    guardians.append(g.pid)
    try:
        frozen = g.freeze()
        os.kill(g.pid, signal.SIGKILL)
        assert wait_gone(g.pid)
        assert all(probe_frozen(p) for p in paths), "FIFREEZE outlives its process: still frozen"
        record = g.thaw()
        assert record["guardian_lost"] is True and record["thawed_by"] == "client"
        assert [m["mountpoint"] for m in record["mounts"]] == list(reversed(paths))
        assert record["window_ms"] >= 0 and record["frozen_at"] == frozen["frozen_at"]
        assert not any(probe_frozen(p) for p in paths)
    finally:
        g.close()


def test_client_killed_between_freeze_request_and_reply(loopfs, guardians):
    paths = mounts_of(loopfs(2))
    proc = spawn_client(paths, mode="request-and-die", deadline=5.0, hold=True)
    hello = read_line(proc)
    guardians.append(hello["pid"])
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    end = time.monotonic() + 3.0
    while True:
        with _freeze.Guardian.connect(hello["token"]) as c:
            status = c.status()
            # done: thawed, and no FIFREEZE of a given-up wave still in flight (its thread thaws it)
            if (status["state"] in ("thawed", "failed") and not status.get("pending")) or time.monotonic() > end:
                break
        time.sleep(0.02)
    assert status["state"] == "thawed", status
    assert status["thawed_by"] == "disconnect" and status["deadline_thawed"] is False
    # The hang-up arrives with the request: the guardian sees it before or while the wave freezes. Either
    # way it thaws everything it froze (a FIFREEZE returning after the give-up is thawed by its own thread).
    record = status["record"]
    assert len(record["mounts"]) <= 2 and all("error" not in m for m in record["mounts"]), record
    assert record.get("aborted_freeze") or len(record["mounts"]) == 2, record
    assert not any(probe_frozen(p) for p in paths)
    with _freeze.Guardian.connect(hello["token"]) as c:
        assert c.thaw()["already_thawed"] is True
    assert wait_gone(hello["pid"])


def test_the_guardian_imports_nothing_and_opens_no_path_on_what_it_freezes(loopfs):
    paths = mounts_of(loopfs(2))
    proc = spawn_client(paths, mode="audit", deadline=10.0)
    out = read_line(proc)
    proc.wait(timeout=10)
    assert out["status"]["state"] == "frozen"
    assert out["record"]["thawed_by"] == "client" and "guardian_lost" not in out["record"], out["record"]
    assert wait_gone(out["pid"])
    assert not any(probe_frozen(p) for p in paths)


KILLS = [(i, "group" if i % 2 else "process", i % 4 < 2) for i in range(16)]


def test_kill_the_client_sixteen_times(loopfs, guardians):
    """SIGKILL the freezing client (alone or with its whole process group): thawed at once each time."""
    paths = mounts_of(loopfs(3))
    deadline = 5.0
    for i, target, hold in KILLS:
        proc = spawn_client(paths, deadline=deadline, hold=hold)
        info = read_line(proc)
        guardians.append(info["pid"])
        assert all(probe_frozen(p) for p in paths), "kill %d: not frozen before the kill" % i
        if target == "group":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert stdout_closes(proc), "kill %d: something (the guardian?) still holds the client's stdout" % i
        proc.stdout.close()
        proc.stderr.close()
        waited = wait_thawed(paths, timeout=deadline + 1.0)
        assert waited is not None, "kill %d (%s): still frozen %gs after the kill" % (i, target, deadline + 1)
        if hold:
            with _freeze.Guardian.connect(info["token"]) as c:
                record = c.thaw()
            assert record["thawed_by"] == "disconnect" and record["deadline_thawed"] is False, (i, record)
            assert record["window_ms"] < deadline * 1000
        assert wait_gone(info["pid"]), "kill %d: the guardian did not exit" % i


def test_kill_detached_clients_only_the_deadline_thaws(loopfs, guardians):
    """Controller style: the client detached, so its SIGKILL changes nothing; the deadline thaws."""
    fss = loopfs(4)
    deadline = 1.5
    procs = []
    for i, fs in enumerate(fss):
        proc = spawn_client([fs.mountpoint], mode="detach", deadline=deadline, hold=False)
        procs.append((i, fs, proc, read_line(proc)))
    for i, fs, proc, info in procs:
        guardians.append(info["pid"])
        if i % 2:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    for i, fs, proc, info in procs:
        if time.monotonic() < info["frozen_at"] + deadline - 0.2:
            assert fs.is_frozen(), "detached kill %d: thawed before the deadline" % i
    for i, fs, proc, info in procs:
        remaining = info["frozen_at"] + deadline + 1.0 - time.monotonic()
        assert wait_thawed([fs.mountpoint], timeout=max(0.0, remaining)) is not None, \
            "detached kill %d: still frozen at deadline + 1 s" % i
        assert time.monotonic() >= info["frozen_at"] + deadline - 0.05
        assert wait_gone(info["pid"]), "detached kill %d: guardian did not exit after the deadline thaw" % i
