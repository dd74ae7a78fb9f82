# -*- coding: utf-8 -*-
"""application=held_hook end to end (ansible-playbook on localhost, real freezes of loop filesystems the test made,
the local EC2 endpoint): the generic held hook decides the level by holding on.

- a hook that prints READY, waits for its stdin to close and exits 0: the set is application;
- a hook that prints READY and exits at once (died early, before the thaw): its lock may have gone during the call,
  so the level drops - with on_quiesce_failure=continue the set is kept at filesystem with a warning, with abort
  (the default) the set is rolled back, no snapshot left;
- a hook that never prints READY: refused within lock_wait_timeout, the hook stopped, nothing frozen, no
  CreateSnapshots, no snapshot."""

import time

import pytest

from tests.support.loopfs import missing_requirements
from tests.support.loopfs import probe_frozen
from tests.support.world import EmulatedInstance
from tests.support.world import own_snapshots
from tests.support.world import run_playbook
from tests.support.world import write_playbook
from tests.support.procs import alive

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

TASK = "take set"


def run(tmp_path, ec2, inst, name, **args):
    params = {"mountpoints": inst.mountpoints, "by_id_dir": inst.by_id_dir, "endpoint_url": ec2.url,
              "region": ec2.region, "poll_interval": 0.2, "name": name, "application": "held_hook"}
    params.update(args)
    book = write_playbook(tmp_path, [{"name": TASK, "stillpoint.snapshots.ebs_snapshot_set": params, "register": "out"}],
                          name="%s.yml" % name)
    t0 = time.monotonic()
    rc, results, _raw = run_playbook(book, ec2)
    return rc, results[TASK], time.monotonic() - t0


def test_held_hook_level_follows_the_hook(tmp_path, ec2):
    with EmulatedInstance(ec2, n=2) as inst:
        try:
            # holds until told: application
            released = tmp_path / "released"
            rc, res, ok_s = run(tmp_path, ec2, inst, "hook-ok", application_hook=[
                "sh", "-c", "echo READY; cat >/dev/null; echo released > %s" % released])
            assert rc == 0 and res["level"] == "application", res
            assert res["application"]["confirmed"] is True and released.read_text().strip() == "released"

            # dies right after READY: the level drops to filesystem (continue) ...
            early = ["sh", "-c", "echo READY; exit 0"]
            rc, res, _s = run(tmp_path, ec2, inst, "hook-early-continue", application_hook=early,
                              on_quiesce_failure="continue")
            assert rc == 0 and res["level"] == "filesystem" and res["state"] == "complete", res
            assert res["application"]["confirmed"] is False and "before the thaw" in res["application"]["problem"], res
            assert any("recorded at level filesystem" in str(w) for w in res.get("warnings", [])), res.get("warnings")

            # ... or the set is rolled back (abort, the default): no snapshot of it is left
            before = own_snapshots(ec2)
            ec2.clear_calls()
            rc, res, early_s = run(tmp_path, ec2, inst, "hook-early-abort", application_hook=early)
            assert rc != 0 and "rolled back" in res["msg"], res
            assert len(ec2.calls("CreateSnapshots")) == 1 and own_snapshots(ec2) == before

            # never READY: refused within the budget, the hook stopped, nothing frozen or created
            pid_file = tmp_path / "hook.pid"
            ec2.clear_calls()
            rc, res, never_s = run(tmp_path, ec2, inst, "hook-never", lock_wait_timeout=2,
                                   application_hook=["sh", "-c", "echo $$ > %s; exec sleep 60" % pid_file])
            assert rc != 0 and "did not print READY within lock_wait_timeout=2s" in res["msg"], res
            assert "nothing was frozen or snapshotted" in res["msg"], res["msg"]
            assert ec2.calls("CreateSnapshots") == [] and own_snapshots(ec2) == before
            assert not alive(int(pid_file.read_text())), "the hook was left running"
            assert not any(probe_frozen(m) for m in inst.mountpoints)
            print("\nheld hook: ok -> application (%.1f s); died early -> filesystem (continue) / rolled back (abort, "
                  "%.1f s); never READY -> refused, whole playbook %.1f s with a 2 s budget" % (ok_s, early_s, never_s))
        finally:
            for mp in inst.mountpoints:
                assert not probe_frozen(mp), "%s left frozen" % mp
