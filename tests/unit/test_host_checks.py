# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 14's host checks without a playbook run.

- ``_imds.check_instance`` and ``ebs_mount_info expect_instance_id``: a host proves which instance it is
  from its own IMDSv2 identity (the emulator on 127.0.0.1, never 169.254.169.254);
- ``array_restore`` asks for that proof on the play host before its first changing task;
- every entry playbook that runs on inventory hosts names them by a required variable: no default, and
  a first play on localhost that refuses a run without it.
"""

from __future__ import annotations

import os
import re

import pytest

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._imds import check_instance
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_mount_info
from tests.ec2_endpoint.imds import ImdsServer
from tests.unit import test_imds
from tests.unit.test_roles import PLAYBOOKS, ROOT, load
from tests.unit.utils import run_module

# test_imds's fixtures: no AWS metadata settings from the environment (autouse), a port nothing listens on
clean_env = test_imds.clean_env
closed_port = test_imds.closed_port

HERE = "i-0aaaaaaaaaaaaaaaa"
OTHER = "i-0bbbbbbbbbbbbbbbb"


@pytest.fixture
def imds():
    srv = ImdsServer(instance_id=HERE, region="eu-west-1").start()
    try:
        yield srv
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- library

def test_check_instance_returns_the_identity_of_the_right_host(imds):
    identity = check_instance(HERE, imds.url)
    assert identity == {"instance_id": HERE, "region": "eu-west-1", "availability_zone": "eu-west-1a",
                        "endpoint": imds.url}
    # IMDSv2: a token first, then the identity document with it
    assert [(m, p) for m, p, _s in imds.requests] == [("PUT", "/latest/api/token"),
                                                      ("GET", "/latest/dynamic/instance-identity/document")]


def test_check_instance_refuses_another_instance_naming_both(imds):
    with pytest.raises(StillpointError) as info:
        check_instance(OTHER, imds.url)
    err = info.value
    assert err.msg == "This host is instance %s (instance metadata at %s), not %s." % (HERE, imds.url, OTHER)
    assert err.details["instance"]["instance_id"] == HERE
    assert err.details["expected_instance_id"] == OTHER


def test_check_instance_follows_the_environment(imds, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    assert check_instance(HERE)["endpoint"] == imds.url
    imds.set_identity(instance_id=OTHER)
    with pytest.raises(StillpointError, match="This host is instance %s" % OTHER):
        check_instance(HERE)


def test_check_instance_without_a_metadata_service_refuses_and_says_where_it_asked(closed_port):
    url = "http://127.0.0.1:%d" % closed_port
    with pytest.raises(StillpointError) as info:
        check_instance(HERE, url, timeout=0.5)
    err = info.value
    assert err.msg.startswith("Could not prove that this host is instance %s: " % HERE)
    assert url in err.msg and "not reachable" in err.msg
    assert "imds_endpoint" in err.msg and "Pass instance_id" not in err.msg  # the remedy of this caller
    assert err.details["instance"] is None


def test_check_instance_when_metadata_is_disabled(imds, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StillpointError, match="Could not prove that this host is instance .*disabled"):
        check_instance(HERE, imds.url)
    assert imds.requests == []


@pytest.mark.parametrize("expected", ["", "  ", "vol-0123", "i-", None])
def test_check_instance_refuses_a_non_instance_id(imds, expected):
    with pytest.raises(StillpointError, match="Invalid instance id"):
        check_instance(expected, imds.url)
    assert imds.requests == []


def test_check_instance_refuses_a_bad_endpoint():
    with pytest.raises(StillpointError, match="Could not prove .*Invalid instance metadata endpoint"):
        check_instance(HERE, "169.254.169.254")


# ---------------------------------------------------------------------------------------------- module

def test_module_right_host(imds, monkeypatch, tmp_path):
    result = run_module(monkeypatch, ebs_mount_info.main, {"expect_instance_id": HERE, "imds_endpoint": imds.url,
                                                           "by_id_dir": str(tmp_path)})
    assert not result.get("failed"), result
    assert result["instance"]["instance_id"] == HERE and result["changed"] is False
    assert result["mounts"] == [] and result["volumes"] == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_wrong_host_fails_naming_both(imds, monkeypatch, tmp_path, check_mode):
    result = run_module(monkeypatch, ebs_mount_info.main, {"expect_instance_id": OTHER, "imds_endpoint": imds.url,
                                                           "by_id_dir": str(tmp_path), "mountpoints": ["/"]},
                        check_mode=check_mode)
    assert result["failed"] is True
    assert HERE in result["msg"] and OTHER in result["msg"]
    assert result["instance"]["instance_id"] == HERE
    assert "mounts" not in result  # looked at nothing else


def test_module_without_expect_instance_id_never_asks_imds(imds, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url)
    result = run_module(monkeypatch, ebs_mount_info.main, {"by_id_dir": str(tmp_path)})
    assert "instance" not in result and not result.get("failed"), result
    assert imds.requests == []


# ---------------------------------------------------------------------------------------------- the role

def _flat(tasks):
    for task in tasks or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _flat(task.get(key))


CHANGING = ("stillpoint.snapshots.ebs_volume_restore", "stillpoint.snapshots.ebs_volume_swap",
            "stillpoint.snapshots.array_host")


def test_array_restore_proves_the_host_before_its_first_changing_task():
    tasks = list(_flat(load("roles", "array_restore", "tasks", "main.yml")))
    names = [t.get("name") for t in tasks]
    prove = next(i for i, t in enumerate(tasks) if "stillpoint.snapshots.ebs_mount_info" in t)
    refuse = next(i for i, t in enumerate(tasks)
                  if "__array_restore_host_id" in str((t.get("ansible.builtin.assert") or {}).get("that")))
    first_change = min(i for i, t in enumerate(tasks) if any(m in t for m in CHANGING)
                       or (t.get("stillpoint.snapshots.win_array_host") or {}).get("state") in ("down", "up"))
    assert prove < refuse < first_change, names
    probe = tasks[prove]
    assert "delegate_to" not in probe  # on the play host itself, in host and controller mode
    assert probe["stillpoint.snapshots.ebs_mount_info"]["expect_instance_id"] == "{{ __array_restore_instance }}"
    assert "check_mode" not in probe and "check_mode" not in tasks[refuse]  # check mode refuses too
    for task in (probe, tasks[refuse]):  # Linux sets; a Windows set is proved by win_array_host (below)
        assert task["when"] == "__array_restore_in.check_host and not __array_restore_windows"
    windows = next(i for i, t in enumerate(tasks) if "stillpoint.snapshots.win_array_host" in t)
    assert windows < first_change, names
    proof = tasks[windows]
    assert proof["when"] == "__array_restore_windows and __array_restore_in.check_host"
    assert proof["stillpoint.snapshots.win_array_host"]["state"] == "info"
    assert proof["stillpoint.snapshots.win_array_host"]["expect_instance_id"] == "{{ __array_restore_instance }}"
    assert "delegate_to" not in proof and "check_mode" not in proof and "failed_when" not in proof
    message = str(tasks[refuse]["vars"])
    for needed in ("__array_restore_host_id", "__array_restore_target", "array_restore_instance_id",
                   "array_restore_check_host", "array_restore_imds_endpoint"):
        assert needed in message, needed


def test_array_restore_checks_the_host_by_default():
    defaults = load("roles", "array_restore", "defaults", "main.yml")
    assert defaults["array_restore_check_host"] is True


# ---------------------------------------------------------------------------------------------- playbooks

# undefined: no host (only when --limit leaves out the check play), never a default pattern
HOST_VARIABLE = re.compile(r"^\{\{\s*(\w+)\s*\|\s*default\(\[\]\)\s*\}\}$")


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_hosts_are_named_by_a_required_variable(playbook):
    plays = load(playbook)
    for index, play in enumerate(plays):
        hosts = str(play["hosts"])
        assert "all" not in hosts, "%s: play %d runs on %r" % (playbook, index, hosts)
        if hosts == "localhost":
            continue
        found = HOST_VARIABLE.match(hosts)
        assert found, "%s: play %d: hosts %r is not one variable" % (playbook, index, hosts)
        variable = found.group(1)
        # a play on localhost before it refuses a run without the variable, naming it
        guards = [t["ansible.builtin.assert"] for p in plays[:index] if p["hosts"] == "localhost"
                  for t in p.get("tasks") or [] if "ansible.builtin.assert" in t]
        assert any(variable in str(g["that"]) and g["fail_msg"].startswith(variable + " is required")
                   for g in guards), "%s: no check of %s before play %d" % (playbook, variable, index)
        header = open(os.path.join(ROOT, playbook)).read().split("\n- name:", 1)[0]
        assert "-e %s=" % variable in header and "required" in header, playbook
