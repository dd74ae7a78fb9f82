# -*- coding: utf-8 -*-
"""Held quiescers: the MariaDB helpers on real server output, and the generic held hook with real processes."""

import subprocess
import sys
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce as app
from ansible_collections.stillpoint.snapshots.plugins.module_utils import _mariadb as mariadb
from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError

PARAMS = dict(application=None, pre_hook=[], post_hook=[], application_hook=[], lock_wait_timeout=1.0,
              on_quiesce_failure="abort", application_client=None, application_config_file=None,
              application_login_user=None, application_login_password=None, application_login_host=None,
              application_login_port=None, application_login_unix_socket=None)


def test_lock_plan_by_server_version():
    # VERSION() as Debian 12's server answers, and as older / MySQL servers do
    assert mariadb.lock_plan("10.11.19-MariaDB-0+deb12u1-log")[0] == "backup_stage"
    assert mariadb.lock_plan("10.11.19-MariaDB-0+deb12u1-log")[1][-1] == "BACKUP STAGE BLOCK_COMMIT"
    assert mariadb.lock_plan("10.3.39-MariaDB-0+deb10u2")[0] == "ftwrl"
    assert mariadb.lock_plan("8.0.36-0ubuntu0.22.04.1") == ("ftwrl", ["FLUSH TABLES WITH READ LOCK"], "UNLOCK TABLES")
    with pytest.raises(StillpointError):
        mariadb.lock_plan("garbage")


def test_master_status_parse():
    # SHOW MASTER STATUS in --batch --skip-column-names mode, as captured from 10.11
    assert mariadb.parse_master_status("bin.000001\t416856\t\t\n") == ("bin.000001", 416856)
    assert mariadb.parse_master_status("") == (None, None)  # binary log off


def test_paths_outside_compares_filesystems(tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    assert mariadb.paths_outside([str(inside)], [str(tmp_path)]) == []
    assert mariadb.paths_outside([str(tmp_path / "missing")], [str(tmp_path)]) == [str(tmp_path / "missing")]
    assert mariadb.paths_outside(["/proc/self"], [str(tmp_path)]) == ["/proc/self"]


def test_client_argv_never_carries_the_password():
    params = dict(PARAMS, application="mariadb", application_client="/usr/bin/mariadb",
                  application_login_user="backup", application_login_password="pw", application_login_port=3307)
    quiescer = mariadb.from_params(params, ["/data"])
    assert "pw" not in " ".join(quiescer.argv)
    assert quiescer.argv[:3] == ["/usr/bin/mariadb", "--user=backup", "--port=3307"]
    assert quiescer.env == {"MYSQL_PWD": "pw"}


def test_application_refuses_hooks_and_needs_a_hook_command():
    with pytest.raises(StillpointError, match="drop pre_hook"):
        app.from_params(dict(PARAMS, application="mariadb", pre_hook=["true"]))
    with pytest.raises(StillpointError, match="needs application_hook"):
        app.from_params(dict(PARAMS, application="held_hook"))
    assert app.from_params(PARAMS) is None


def hook(script, **kw):
    return app.HeldHook([sys.executable, "-c", script], **kw)


HOLDS = "import sys; print('READY', flush=True); sys.stdin.read(); sys.exit(0)"


def test_held_hook_held_until_stdin_closes():
    q = hook(HOLDS, lock_wait_timeout=5)
    ok, action = q.pre()
    assert ok and action["rc"] == 0 and q.co.alive()
    time.sleep(0.1)
    assert q.co.alive()  # still holding through the "call"
    ok, action = q.post()
    assert ok and q.confirmed and action["rc"] == 0 and q.held_ms >= 100
    assert q.catalog_record()["confirmed"] is True


def test_held_hook_that_dies_early_does_not_confirm():
    q = hook("print('READY', flush=True)", lock_wait_timeout=5)
    assert q.pre()[0]
    time.sleep(0.3)
    ok, _action = q.post()
    assert not ok and not q.confirmed and "before the thaw" in q.problem


def test_held_hook_failing_exit_does_not_confirm():
    q = hook("import sys; print('READY', flush=True); sys.stdin.read(); sys.exit(3)", lock_wait_timeout=5)
    assert q.pre()[0]
    ok, action = q.post()
    assert not ok and action["rc"] == 3


def test_held_hook_never_ready_is_refused_within_the_budget():
    q = hook("import time; time.sleep(30)", lock_wait_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(StillpointError, match="did not print READY within lock_wait_timeout=0.5s") as err:
        q.pre()
    assert time.monotonic() - t0 < 5
    assert not q.co.alive()
    assert err.value.details["application"]["locked"] is False


def test_held_hook_never_ready_continue_reports_not_ok():
    q = hook("import sys; sys.exit(2)", lock_wait_timeout=2, on_failure="continue")
    ok, action = q.pre()
    assert not ok and action["rc"] == 2 and "exited (rc=2) before printing READY" in q.problem
    assert q.post() == (False, None)


def test_coprocess_dies_with_its_parent(tmp_path):
    # a process holds a hook that ignores its stdin and is SIGKILLed: the hook must go too (PR_SET_PDEATHSIG)
    pidfile = tmp_path / "pid"
    hook_script = tmp_path / "hook.py"
    hook_script.write_text("import os, time\nopen(%r, 'w').write(str(os.getpid()))\nprint('READY', flush=True)\n"
                           "time.sleep(60)\n" % str(pidfile))
    holder = tmp_path / "holder.py"
    holder.write_text("import sys, time\nsys.path[:0] = %r\n"
                      "from ansible_collections.stillpoint.snapshots.plugins.module_utils import _app_quiesce as a\n"
                      "q = a.HeldHook([sys.executable, %r], 5)\nq.pre()\nprint('held', flush=True)\ntime.sleep(60)\n"
                      % (sys.path, str(hook_script)))
    parent = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "held"
        child = int(pidfile.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while _running(child):
            assert time.monotonic() < deadline, "the hook outlived its parent"
            time.sleep(0.02)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _running(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
