# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""No EC2 answer at all: the modules of the aws action group, and ebs_snapshot_set's action plugin in
controller mode, pointed at a 127.0.0.1 port where nothing listens. Each fails with a message that names
the EC2 call and says what to check (botocore's EndpointConnectionError through _ebs.aws_error), never
with a traceback, and changes nothing."""

import socket

import pytest

from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_info
from ansible_collections.stillpoint.snapshots.plugins.modules import backup_set_prune
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_snapshot_set
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_volume_restore
from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_volume_swap
from tests.support.world import run_playbook
from tests.support.world import write_playbook
from tests.unit.utils import run_module

CHECK = "check endpoint_url, the credentials and the region"
INSTANCE = "i-0123456789abcdef0"
SET_ID = "bs-20240302T020000Z-d4e5f6"


@pytest.fixture
def dead_url(monkeypatch):
    """A 127.0.0.1 URL where nothing listens (the port was bound once and let go); botocore tries once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return "http://127.0.0.1:%d" % port


def aws(url):
    return dict(endpoint_url=url, region="eu-west-1", access_key="testing", secret_key="testing")


def assert_names_call_and_check(result, call, url, playbook=False):
    assert result["failed"], result
    assert result["msg"].startswith(call + " "), result["msg"]
    assert "EndpointConnectionError" in result["msg"] and url.split("//")[1] in result["msg"], result["msg"]
    assert result["msg"].endswith("(%s)" % CHECK), result["msg"]
    # ansible-playbook (2.19) marks every failed result "(traceback unavailable)"; a module run has none
    assert "Traceback" not in result.get("exception", "") + result["msg"] and (playbook or "exception" not in result)
    assert result.get("changed") in (None, False)


@pytest.mark.parametrize("module, args, call", [
    (ebs_snapshot_set, dict(instance_id=INSTANCE), "DescribeInstances"),
    (ebs_snapshot_set, dict(instance_id=INSTANCE, set_id=SET_ID), "DescribeSnapshots"),
    (backup_set_info, dict(name="nightly"), "DescribeSnapshots"),
    (backup_set_prune, dict(keep_last=3), "DescribeSnapshots"),
    (ebs_volume_restore, dict(set_id=SET_ID, availability_zone="eu-west-1a"), "DescribeAvailabilityZones"),
    (ebs_volume_restore, dict(set_id=SET_ID, instance_id=INSTANCE), "DescribeInstances"),
    (ebs_volume_swap, dict(instance_id=INSTANCE, set_id=SET_ID, restore_id="rs-0123456789ab"), "DescribeSnapshots"),
], ids=["snapshot_set", "snapshot_set-rerun", "info", "prune", "restore-zone", "restore-instance", "swap"])
def test_module_without_ec2_answer_names_the_call(monkeypatch, dead_url, module, args, call):
    result = run_module(monkeypatch, module.main, dict(args, **aws(dead_url)))
    assert_names_call_and_check(result, call, dead_url)


def test_action_plugin_controller_mode_without_ec2_answer(tmp_path, ec2, dead_url):
    task = {"name": "take set", "register": "out", "stillpoint.snapshots.ebs_snapshot_set": dict(
        mode="controller", instance_id=INSTANCE, mountpoints=[], **aws(dead_url))}
    rc, results, _raw = run_playbook(write_playbook(tmp_path, [task]), ec2, env={"AWS_MAX_ATTEMPTS": "1"})
    assert rc != 0
    assert_names_call_and_check(results["take set"], "DescribeInstances", dead_url, playbook=True)
    assert ec2.calls("CreateSnapshots") == []  # the real endpoint was never asked either
