# -*- coding: utf-8 -*-
"""Modules that never call EC2 do not import botocore.

Every module run compiles and imports what it imports: on a small node (and in the lab's TCG guests,
measured at 2-2.6 s per task) botocore is the most expensive import there is. DRBD's and CLUSTERPRO's
read and control modules run many times per procedure (polls, waits), so the EC2 proofs import it only
when a proof is asked for; ebs_mount_info (the host side of a set's discovery) never calls EC2.
"""

import subprocess
import sys

import pytest

from tests.support.world import COLLECTIONS

NO_EC2 = ("array_host", "clusterpro_control", "clusterpro_info", "drbd_info", "ebs_mount_info", "fsfreeze",
          "lvm_snapshot_set", "lvm_snapshot_set_info")


@pytest.mark.parametrize("module", NO_EC2)
def test_module_without_ec2_calls_does_not_import_botocore(module):
    code = ("import sys; sys.path.insert(0, %r); import importlib; "
            "importlib.import_module('ansible_collections.stillpoint.snapshots.plugins.modules.%s'); "
            "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))" % (COLLECTIONS, module))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", "%s imports %s" % (module, out.strip())
