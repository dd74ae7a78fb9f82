# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ebs_mount_info volume_ids on this host's real kernel: loop devices stand in for EBS volumes through a
by-id directory of the test's own (loop devices have no NVMe serial)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.stillpoint.snapshots.plugins.modules import ebs_mount_info
from tests.support.loopfs import missing_requirements
from tests.unit.test_devices import _run
from tests.unit.test_devices import loop_disks
from tests.unit.utils import run_module

pytestmark = pytest.mark.skipif(missing_requirements("ext4") is not None, reason=str(missing_requirements("ext4")))


def test_volume_ids_find_disks_and_mounts(monkeypatch, tmp_path):
    with loop_disks(tmp_path) as (lplain, lparted, part, mounted):
        _run("mkfs.ext4", "-q", "-F", part)
        m_part, m_bind = tmp_path / "mirror data", tmp_path / "bind"
        m_part.mkdir()
        m_bind.mkdir()
        _run("mount", "-t", "ext4", part, str(m_part))
        mounted.append(str(m_part))
        (m_part / "share").mkdir()
        _run("mount", "--bind", str(m_part / "share"), str(m_bind))
        mounted.append(str(m_bind))

        by_id = tmp_path / "by-id"
        by_id.mkdir()
        vol_plain, vol_parted = "vol-0" + os.urandom(8).hex(), "vol-0" + os.urandom(8).hex()
        os.symlink(lplain, str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol_plain.replace("-", ""))))
        os.symlink(lparted, str(by_id / ("nvme-Amazon_Elastic_Block_Store_" + vol_parted.replace("-", ""))))
        os.symlink(part, str(by_id / ("nvme-Amazon_Elastic_Block_Store_%s-part1" % vol_parted.replace("-", ""))))
        absent = "vol-0" + os.urandom(8).hex()

        args = dict(volume_ids=[vol_parted, absent, vol_plain.replace("-", "")], by_id_dir=str(by_id))
        res = run_module(monkeypatch, ebs_mount_info.main, args)
        assert not res.get("failed") and res["changed"] is False, res
        assert res["mounts"] == [] and res["exclude_mounts"] == []
        assert res["volumes"] == [
            dict(volume_id=vol_parted, devices=[lparted], mountpoints=[str(m_bind), str(m_part)], present=True),
            dict(volume_id=absent, devices=[], mountpoints=[], present=False),
            dict(volume_id=vol_plain, devices=[lplain], mountpoints=[], present=True),
        ]
        # check mode gives the same answer; after an unmount the disk is still there, with nothing mounted
        assert run_module(monkeypatch, ebs_mount_info.main, args, check_mode=True)["volumes"] == res["volumes"]
        for mp in res["volumes"][0]["mountpoints"]:
            _run("umount", mp)
            mounted.remove(mp)
        after = run_module(monkeypatch, ebs_mount_info.main, args)["volumes"]
        assert after[0] == dict(res["volumes"][0], mountpoints=[]) and after[1:] == res["volumes"][1:]

        bad = run_module(monkeypatch, ebs_mount_info.main, dict(args, volume_ids=[vol_plain, os.path.basename(lplain)]))
        assert bad["failed"] and bad["invalid"] == [os.path.basename(lplain)] and "Not EBS volume ids" in bad["msg"]
