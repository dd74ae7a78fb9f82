# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""stillpoint.snapshots.fsfreeze for real: in-process runs on loop filesystems, and one
ansible-playbook run through the real module transport. Only loop filesystems are frozen.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.stillpoint.snapshots.plugins.modules import fsfreeze
# the loopfs fixture
from tests.support.loopfs import loopfs  # noqa: F401 pylint: disable=unused-import
from tests.support.loopfs import probe_frozen
from tests.unit.utils import AnsibleExitJson
from tests.unit.utils import AnsibleFailJson
from tests.unit.utils import patched_exits
from tests.unit.utils import set_module_args
from tests.support.procs import alive
from tests.support.procs import wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_module(monkeypatch, args, check_mode=False):
    """Run the module in this process; returns (failed, result)."""
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    with set_module_args(args), patched_exits(monkeypatch):
        try:
            fsfreeze.main()
        except AnsibleExitJson as done:
            return False, done.result
        except AnsibleFailJson as failed:
            return True, failed.result
    raise AssertionError("the module neither exited nor failed")


@pytest.fixture
def guardian_pids():
    """Guardians a test started through the module: SIGTERM (thaw + exit) any left at the end."""
    pids = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_gone(pid, 3.0)


def test_check_mode_validates_and_touches_nothing(monkeypatch, loopfs):
    paths = [fs.mountpoint for fs in loopfs(2)]
    failed, result = run_module(monkeypatch, {"mountpoints": paths}, check_mode=True)
    assert not failed, result
    assert result["changed"] is True
    assert [m["mountpoint"] for m in result["plan"]] == paths
    assert "token" not in result and "guardian_pid" not in result
    assert not any(probe_frozen(p) for p in paths)


def test_frozen_then_thawed_by_token_then_thawed_again(monkeypatch, loopfs, guardian_pids):
    paths = [fs.mountpoint for fs in loopfs(2)]
    failed, frozen = run_module(monkeypatch, {"mountpoints": paths, "deadline": 20})
    assert not failed, frozen
    guardian_pids.append(frozen["guardian_pid"])
    assert frozen["changed"] is True and frozen["python"] == sys.executable
    assert [m["mountpoint"] for m in frozen["mounts"]] == paths
    assert frozen["deadline"] > time.time() + 15
    assert all(probe_frozen(p) for p in paths), "the freeze must outlive the module run (detached)"

    failed, checked = run_module(monkeypatch, {"state": "thawed", "token": frozen["token"]}, check_mode=True)
    assert not failed and checked["changed"] is True and checked["state"] == "frozen"
    assert all(probe_frozen(p) for p in paths), "check mode must not thaw"

    failed, thawed = run_module(monkeypatch, {"state": "thawed", "token": frozen["token"]})
    assert not failed, thawed
    assert thawed["changed"] is True and thawed["thawed_by"] == "client" and thawed["deadline_thawed"] is False
    assert [m["mountpoint"] for m in thawed["mounts"]] == list(reversed(paths))
    assert thawed["window_ms"] > 0
    assert not any(probe_frozen(p) for p in paths)

    wait_gone(frozen["guardian_pid"], 3.0)
    failed, again = run_module(monkeypatch, {"state": "thawed", "token": frozen["token"]})
    assert not failed, again
    assert again["changed"] is False and again["guardian"] == "gone"


def test_thaw_after_the_deadline_reports_it(monkeypatch, loopfs, guardian_pids):
    paths = [fs.mountpoint for fs in loopfs(1)]
    failed, frozen = run_module(monkeypatch, {"mountpoints": paths, "deadline": 0.5})
    assert not failed, frozen
    guardian_pids.append(frozen["guardian_pid"])
    time.sleep(1.0)
    assert not probe_frozen(paths[0])
    failed, thawed = run_module(monkeypatch, {"state": "thawed", "token": frozen["token"]})
    assert not failed, thawed
    assert thawed["changed"] is False and thawed["already_thawed"] is True
    assert thawed["deadline_thawed"] is True and thawed["thawed_by"] == "deadline"


def test_refuses_root_and_freezes_nothing(monkeypatch, loopfs):
    paths = [fs.mountpoint for fs in loopfs(1)]
    failed, result = run_module(monkeypatch, {"mountpoints": [paths[0], "/"]})
    assert failed
    assert "/ is the root filesystem" in result["msg"] and "nothing was frozen" in result["msg"]
    assert [r["path"] for r in result["refused"]] == ["/"]
    assert not probe_frozen(paths[0])


def test_refuses_the_filesystem_holding_the_remote_tmp(monkeypatch, loopfs):
    fs = loopfs(1)[0]
    failed, result = run_module(monkeypatch, {"mountpoints": [fs.mountpoint],
                                              "_ansible_remote_tmp": fs.mountpoint + "/.ansible/tmp"})
    assert failed
    assert "Ansible's remote tmp dir" in result["msg"]
    assert not fs.is_frozen()


def test_refuses_protect_paths(monkeypatch, loopfs):
    fs = loopfs(1)[0]
    failed, result = run_module(monkeypatch, {"mountpoints": [fs.mountpoint],
                                              "protect_paths": [fs.mountpoint + "/app/logs"]})
    assert failed and "listed in protect_paths" in result["msg"]
    assert not fs.is_frozen()


def test_busy_filesystem_fails_and_stays_frozen_by_its_owner(monkeypatch, loopfs):
    fss = loopfs(2)
    fss[1].freeze()
    try:
        failed, result = run_module(monkeypatch, {"mountpoints": [fs.mountpoint for fs in fss]})
        assert failed
        assert "already frozen by someone else" in result["msg"]
        assert result["rolled_back"] == [fss[0].mountpoint]
        assert not fss[0].is_frozen()
        assert fss[1].is_frozen()
    finally:
        fss[1].thaw()


def test_force_thaw_recovers_a_foreign_freeze(monkeypatch, loopfs):
    fss = loopfs(2)
    fss[0].freeze()
    try:
        paths = [fs.mountpoint for fs in fss]
        failed, checked = run_module(monkeypatch, {"state": "thawed", "force": True, "mountpoints": paths},
                                     check_mode=True)
        assert not failed and checked["changed"] is True
        assert fss[0].is_frozen(), "check mode must not thaw"
        failed, result = run_module(monkeypatch, {"state": "thawed", "force": True, "mountpoints": paths})
        assert not failed, result
        assert result["changed"] is True
        assert [(m["mountpoint"], m["thawed"]) for m in result["mounts"]] == [(paths[0], True), (paths[1], False)]
        assert not fss[0].is_frozen()
        failed, again = run_module(monkeypatch, {"state": "thawed", "force": True, "mountpoints": paths})
        assert not failed and again["changed"] is False
    finally:
        if fss[0].is_frozen():
            fss[0].thaw()


def test_force_thaw_refuses_non_mountpoints(monkeypatch, loopfs):
    fs = loopfs(1)[0]
    os.mkdir(os.path.join(fs.mountpoint, "inner"))
    failed, result = run_module(monkeypatch, {"state": "thawed", "force": True,
                                              "mountpoints": [os.path.join(fs.mountpoint, "inner")]})
    assert failed and "is not a mountpoint (it is on %s)" % fs.mountpoint in result["msg"]


@pytest.mark.parametrize("args,message", [
    ({"state": "thawed"}, "state=thawed needs token"),
    ({"state": "thawed", "force": True}, "force=true needs mountpoints"),
    ({"state": "thawed", "force": True, "token": "abc", "mountpoints": ["/x"]}, "not both"),
    ({"state": "frozen", "mountpoints": ["/x"], "token": "abc"}, "only go with state=thawed"),
])
def test_option_combinations_are_refused(monkeypatch, args, message):
    failed, result = run_module(monkeypatch, args)
    assert failed and message in result["msg"]


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  vars:
    mps: {mps}
    probe: >-
      {python} -c "import sys; sys.path.insert(0, '{root}');
      from tests.support.loopfs import probe_frozen; print(any(probe_frozen(m) for m in sys.argv[1:]))"
  tasks:
    - name: check mode
      stillpoint.snapshots.fsfreeze:
        mountpoints: "{{{{ mps }}}}"
      check_mode: true
      register: r_check
    - name: probe after check mode
      ansible.builtin.command: "{{{{ probe }}}} {{{{ mps | join(' ') }}}}"
      register: p_check
    - name: freeze
      stillpoint.snapshots.fsfreeze:
        mountpoints: "{{{{ mps }}}}"
        deadline: 30
      register: r_freeze
    - name: probe while frozen
      ansible.builtin.command: "{{{{ probe }}}} {{{{ mps | join(' ') }}}}"
      register: p_frozen
    - name: thaw
      stillpoint.snapshots.fsfreeze:
        state: thawed
        token: "{{{{ r_freeze.token }}}}"
      register: r_thaw
    - name: probe after thaw
      ansible.builtin.command: "{{{{ probe }}}} {{{{ mps | join(' ') }}}}"
      register: p_thawed
    - name: thaw again
      stillpoint.snapshots.fsfreeze:
        state: thawed
        token: "{{{{ r_freeze.token }}}}"
      register: r_thaw2
    - name: root is refused
      stillpoint.snapshots.fsfreeze:
        mountpoints: [/]
      register: r_root
      ignore_errors: true
    - name: the filesystem of the remote tmp is refused
      stillpoint.snapshots.fsfreeze:
        mountpoints: ["{{{{ mps[0] }}}}"]
      vars:
        ansible_remote_tmp: "{{{{ mps[0] }}}}/.ansible-tmp"
      register: r_tmp
      ignore_errors: true
    - name: save
      ansible.builtin.copy:
        dest: "{out}"
        content: "{{{{ dict(check=r_check, p_check=p_check.stdout, freeze=r_freeze, p_frozen=p_frozen.stdout,
                   thaw=r_thaw, p_thawed=p_thawed.stdout, thaw2=r_thaw2, root=r_root, tmp=r_tmp) | to_json }}}}"
"""


def test_through_ansible_playbook(loopfs, tmp_path, guardian_pids):
    if not os.path.exists(os.path.join(ROOT, ".build", "collections", "ansible_collections", "stillpoint")):
        pytest.skip("the collection is not linked into .build/collections")
    paths = [fs.mountpoint for fs in loopfs(2)]
    out = tmp_path / "results.json"
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent(PLAYBOOK.format(mps=json.dumps(paths), python=sys.executable,
                                                        root=ROOT, out=out)))
    inventory = tmp_path / "hosts"
    inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TMP=str(tmp_path / "remote"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="0")
    ansible_playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    try:
        proc = subprocess.run([ansible_playbook, "-i", str(inventory), str(playbook)], env=env, cwd=str(tmp_path),
                              capture_output=True, text=True, timeout=240, check=False)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        res = json.loads(out.read_text())
    finally:
        if out.exists():
            token_pid = json.loads(out.read_text()).get("freeze", {}).get("guardian_pid")
            if token_pid:
                guardian_pids.append(token_pid)
    assert res["check"]["changed"] is True and "token" not in res["check"]
    assert res["p_check"] == "False"
    assert res["freeze"]["changed"] is True and res["freeze"]["token"]
    assert [m["mountpoint"] for m in res["freeze"]["mounts"]] == paths
    assert res["p_frozen"] == "True"
    assert res["thaw"]["changed"] is True and res["thaw"]["thawed_by"] == "client"
    assert res["thaw"]["deadline_thawed"] is False
    assert [m["mountpoint"] for m in res["thaw"]["mounts"]] == list(reversed(paths))
    assert res["p_thawed"] == "False"
    assert res["thaw2"]["changed"] is False and res["thaw2"]["guardian"] == "gone"
    assert any("no guardian for token" in w for w in res["thaw2"].get("warnings", []))
    assert res["root"]["failed"] is True and "root filesystem" in res["root"]["msg"]
    assert res["tmp"]["failed"] is True and "Ansible's remote tmp dir" in res["tmp"]["msg"]
    assert not any(probe_frozen(p) for p in paths)
