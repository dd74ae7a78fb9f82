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


# ---------------------------------------------------------------- controller mode: the guardian's side and the controller's
def test_guardian_takes_and_releases_a_held_hook_with_a_client_thaw():
    q = hook(HOLDS, lock_wait_timeout=5)
    go, fields = app.take_in_guardian(q)
    assert go and fields["application"]["locked"] is True and fields["actions"][0]["rc"] == 0
    out = app.release_in_guardian(q, "client")
    assert out["application"]["confirmed"] is True and out["application_record"]["confirmed"] is True
    assert out["application_action"]["rc"] == 0
    # a second thaw record (already thawed) does not release twice
    again = app.release_in_guardian(q, "client")
    assert again["application_action"] is None and again["application"]["confirmed"] is True


@pytest.mark.parametrize("by", ["deadline", "disconnect", "signal", "freeze_failed"])
def test_a_thaw_the_run_did_not_ask_for_never_confirms(by):
    q = hook(HOLDS, lock_wait_timeout=5)
    assert app.take_in_guardian(q)[0]
    out = app.release_in_guardian(q, by)
    assert not q.co.alive()  # released all the same
    assert out["application"]["confirmed"] is False and out["application_record"]["confirmed"] is False
    assert ("thawed on its own (%s)" % by) in out["application"]["problem"]


def test_guardian_refusal_carries_the_summary_and_the_action():
    q = hook("import time; time.sleep(30)", lock_wait_timeout=0.3)
    go, fields = app.take_in_guardian(q)
    assert not go and fields["error"] == "quiesce" and "did not print READY" in fields["msg"]
    assert fields["application"]["locked"] is False and fields["actions"][0]["what"].startswith("held hook")
    assert not q.co.alive()


def test_guardian_continue_freezes_without_the_lock():
    q = hook("import sys; sys.exit(2)", lock_wait_timeout=2, on_failure="continue")
    go, fields = app.take_in_guardian(q)
    assert go and fields["application"]["locked"] is False
    out = app.release_in_guardian(q, "client")
    assert out["application_record"] is None and out["application_action"] is None


def test_guardian_turns_an_unexpected_error_into_a_refusal():
    class Broken(app.HeldQuiescer):
        kind = "broken"

        def pre(self):
            raise KeyError("x")
    go, fields = app.take_in_guardian(Broken())
    assert not go and "KeyError" in fields["msg"] and "nothing was frozen" in fields["msg"]


SUMMARY = {"kind": "mariadb", "lock": "backup_stage", "locked": True, "confirmed": False, "held_ms": None,
           "recorded": {"binlog_file": "bin.000001", "binlog_position": 4242}}
LOCK = {"what": "mariadb: open a session and take the backup lock", "cmd": ["/usr/bin/mariadb"], "rc": 0, "ms": 20.0}
RELEASE = {"what": "mariadb: confirm the lock on the same session, then release it", "cmd": ["/usr/bin/mariadb"],
           "rc": 0, "ms": 5.0}


def thaw_record(confirmed=True, by="client"):
    return {"window_ms": 300.0, "thawed_by": by, "application": dict(SUMMARY, confirmed=confirmed, held_ms=410.0),
            "application_record": {"kind": "mariadb", "lock": "backup_stage", "confirmed": confirmed, "held_ms": 410.0,
                                   "binlog_file": "bin.000001", "binlog_position": 4242},
            "application_action": RELEASE}


def test_controller_view_confirms_only_a_confirmed_release_after_the_runs_thaw():
    g = app.GuardedQuiescer("mariadb", "abort")
    assert g.held and g.pre() == (True, None)
    g.frozen({"application": SUMMARY, "actions": [LOCK]})
    g.thawed(thaw_record())
    ok, action = g.post()
    assert ok and g.confirmed and g.summary()["held_ms"] == 410.0
    assert action["lock"] == LOCK and action["release"] == RELEASE and action["ms"] == 25.0
    assert g.catalog_record()["binlog_position"] == 4242 and g.catalog_record()["confirmed"] is True


def test_controller_view_lost_lock_or_guardian_never_confirms():
    g = app.GuardedQuiescer("mariadb", "continue")
    g.frozen({"application": SUMMARY, "actions": [LOCK]})
    g.thawed(dict(thaw_record(confirmed=False), application=dict(SUMMARY, problem="the binary log moved")))
    assert g.post()[0] is False and g.problem == "the binary log moved"
    assert g.catalog_record()["confirmed"] is False

    g = app.GuardedQuiescer("mariadb", "abort")  # the guardian was SIGKILLed: fsfreeze found no guardian
    g.frozen({"application": SUMMARY, "actions": [LOCK]})
    g.thawed({"changed": False, "guardian": "gone", "already_thawed": True, "mounts": []})
    assert g.post()[0] is False and "killed?" in g.problem and g.summary()["confirmed"] is False
    assert g.catalog_record() == {"kind": "mariadb", "lock": "backup_stage", "held_ms": None, "confirmed": False}

    g = app.GuardedQuiescer("mariadb", "abort")  # a confirmed release after a deadline thaw does not count
    g.frozen({"application": SUMMARY, "actions": [LOCK]})
    g.thawed(thaw_record(by="deadline"))
    assert g.post()[0] is False and "deadline" in g.problem


def test_controller_view_of_a_lock_never_taken():
    g = app.GuardedQuiescer("postgresql", "continue")
    g.frozen({"application": dict(SUMMARY, kind="postgresql", locked=False, problem="no session"), "actions": [LOCK]})
    g.thawed({"window_ms": 5.0, "thawed_by": "client", "application": dict(SUMMARY, locked=False)})
    ok, action = g.post()
    assert not ok and g.problem == "no session" and action["release"] is None
    with pytest.raises(StillpointError):
        app.GuardedQuiescer("mariadb", "sometimes")


def test_controller_passes_the_application_options_and_counts_a_thaw_it_did_not_ask_for_as_the_deadline():
    from ansible_collections.stillpoint.snapshots.plugins.plugin_utils import _remote_host as remote
    assert remote.application_args(dict(PARAMS)) == {}
    args = remote.application_args(dict(PARAMS, application="mariadb", application_login_password="pw",
                                        application_login_unix_socket="/run/mysqld/mysqld.sock"))
    # only to fsfreeze, which declares the password no_log; unset options are left to fsfreeze's defaults
    assert args == {"application": "mariadb", "lock_wait_timeout": 1.0, "on_quiesce_failure": "abort",
                    "application_login_password": "pw", "application_login_unix_socket": "/run/mysqld/mysqld.sock"}
    assert set(args) <= set(remote.APPLICATION_ARGS)
    assert remote.ended_by_the_run({"thawed_by": "client", "window_ms": 1.0}).get("deadline_thawed") is None
    for by in ("disconnect", "signal", "deadline"):
        assert remote.ended_by_the_run({"thawed_by": by, "window_ms": 1.0})["deadline_thawed"] is True
    assert remote.without_invocation({"invocation": {"module_args": {}}, "msg": "x"}) == {"msg": "x"}
