# -*- coding: utf-8 -*-
"""The ebs_snapshot_set module SIGKILLed while it holds the freeze, 20 times.

The module runs as Ansible runs it (its own Python process, arguments from a JSON file), in host
mode against the local EC2 endpoint, whose CreateSnapshots is slowed down so the kill lands inside
the frozen window. Half the kills hit the module process alone, half its whole process group (as
when ansible-playbook or the SSH session dies). Every filesystem must be thawed within the
deadline + 1 s, and no snapshot may be left behind.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import wait_thawed
from tests.support.world import COLLECTIONS
from tests.support.world import ROOT
from tests.support.world import EmulatedInstance
from tests.support.world import own_snapshots

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

MODULE = os.path.join(ROOT, "plugins", "modules", "ebs_snapshot_set.py")
DEADLINE = 5.0
KILLS = 20


def write_blocked(mountpoint, wait=0.3):
    """True when an append+fsync on ``mountpoint`` does not finish within ``wait`` s (frozen).

    A write only waits for the freeze; unlike a FIFREEZE probe it cannot race with the module's own
    freeze. A blocked writer finishes by itself after the thaw; the caller reaps it.
    """
    code = ("import os,sys; fd=os.open(os.path.join(sys.argv[1], 'probe'), os.O_WRONLY|os.O_CREAT|os.O_APPEND);"
            "os.write(fd, b'x'); os.fsync(fd)")
    proc = subprocess.Popen([sys.executable, "-c", code, mountpoint])
    try:
        proc.wait(timeout=wait)
        return False, None
    except subprocess.TimeoutExpired:
        return True, proc


def test_module_sigkilled_mid_freeze_twenty_times(tmp_path, ec2):
    with EmulatedInstance(ec2, n=2) as inst:
        before = own_snapshots(ec2)
        args = tmp_path / "args.json"
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
            "mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
            "region": ec2.region, "freeze_deadline": DEADLINE, "wait": False, "name": "killed",
            "instance_id": inst.instance_id,
            "_ansible_remote_tmp": str(tmp_path), "_ansible_keep_remote_files": False,
        }}))
        env = dict(os.environ, **ec2.env())
        env["PYTHONPATH"] = os.pathsep.join([COLLECTIONS, ROOT])
        env["AWS_EC2_METADATA_DISABLED"] = "false"
        # each call stays in flight this long: the kill that follows its arrival has seconds to spare
        ec2.latency("CreateSnapshots", 6000)
        thaw_times, writers = [], []
        for attempt in range(KILLS):
            ec2.fail_next("CreateSnapshots", "InternalError", "killed run: create nothing")
            proc = subprocess.Popen([sys.executable, MODULE, str(args)], env=env, cwd=str(tmp_path),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            try:
                t0 = time.monotonic()
                while True:
                    frozen, writer = write_blocked(inst.mountpoints[0])
                    if frozen:
                        writers.append(writer)
                        break
                    if proc.poll() is not None:
                        out, err = proc.communicate()
                        raise AssertionError("kill %d: the module ended before freezing (rc=%s): %s %s"
                                             % (attempt, proc.returncode, out.decode()[-2000:], err.decode()[-2000:]))
                    assert time.monotonic() - t0 < 30, "the module never froze"
                # ... and the kill lands while its CreateSnapshots is in flight: what happened is
                # checked (the endpoint saw the call arrive), not assumed from a delay
                while ec2.received("CreateSnapshots") < attempt + 1:
                    assert proc.poll() is None, "kill %d: the module ended before its CreateSnapshots" % attempt
                    assert time.monotonic() - t0 < 120, "kill %d: no CreateSnapshots call arrived" % attempt
                    time.sleep(0.02)
                if attempt % 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                t_kill = time.monotonic()
                proc.communicate(timeout=10)
                waited = wait_thawed(inst.mountpoints, timeout=DEADLINE + 1.0)
                assert waited is not None, "kill %d: still frozen %.1f s after SIGKILL" % (attempt, DEADLINE + 1)
                thaw_times.append(time.monotonic() - t_kill)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for writer in writers:
            assert writer.wait(timeout=10) == 0  # the blocked writes went through after the thaw
        assert len(thaw_times) == KILLS
        assert max(thaw_times) <= DEADLINE + 1.0
        # the slowed-down calls of the killed runs all ended in the injected error: no snapshot left
        deadline = time.monotonic() + 60
        while len(ec2.calls("CreateSnapshots")) < KILLS and time.monotonic() < deadline:
            time.sleep(0.2)
        calls = ec2.calls("CreateSnapshots")
        assert [c["error_code"] for c in calls] == ["InternalError"] * KILLS
        assert own_snapshots(ec2) == before
