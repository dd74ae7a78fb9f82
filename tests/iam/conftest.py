# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One strict endpoint with IAM enforcement on (``Endpoint.start(iam=True)``) for the IAM tests, and
the external tools (parliament's virtualenv, the npm install of tests/iam/package.json) they drive.

The tools are found under .build (``IAM_PARLIAMENT``, ``IAM_NODE_DIR`` override); a test whose tool is
missing skips, unless ``STILLPOINT_IAM_REQUIRED=1`` (tests/iam/run.sh, make iam-check), where it fails.
"""

from __future__ import annotations

import itertools
import os
import shutil

import pytest

from tests.ec2_endpoint import Endpoint
from tests.iam import policies

BUILD = os.path.join(policies.ROOT, ".build")
_names = itertools.count()


@pytest.fixture(scope="session")
def iam_endpoint(tmp_path_factory):
    endpoint = Endpoint()
    try:
        endpoint.start(tmp_path_factory.mktemp("ec2_endpoint_iam"), pending_seconds=0.3, attach_seconds=0.1,
                       detach_seconds=0.1, iam=True)
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture
def ec2i(iam_endpoint):
    iam_endpoint.reset()
    yield iam_endpoint


@pytest.fixture(scope="session")
def make_user(iam_endpoint):
    """``make_user(policy_document, label)`` -> the env of a new IAM user holding exactly that policy."""
    def make(document, label="u"):
        return iam_endpoint.iam_user("%s-%d" % (label.replace("_", "-")[:40], next(_names)), document)
    return make


def _tool(env, default, what):
    path = os.environ.get(env) or default
    if os.path.exists(path):
        return path
    msg = "%s not installed at %s (tests/iam/run.sh installs it)" % (what, path)
    if os.environ.get("STILLPOINT_IAM_REQUIRED") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def parliament_bin():
    return _tool("IAM_PARLIAMENT", os.path.join(BUILD, "parliament", "bin", "parliament"), "parliament")


@pytest.fixture(scope="session")
def iam_node_dir():
    if shutil.which("node") is None and os.environ.get("STILLPOINT_IAM_REQUIRED") != "1":
        pytest.skip("node is not installed")
    directory = _tool("IAM_NODE_DIR", os.path.join(BUILD, "iam-node"), "@cloud-copilot/iam-simulate")
    _tool("IAM_NODE_DIR", os.path.join(directory, "node_modules", "@cloud-copilot", "iam-simulate"),
          "@cloud-copilot/iam-simulate")
    return directory
