# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a set's filesystems sit on, found at backup time: md arrays and LVM volume groups.

Private to the collection. Walks sysfs from each mount's device (through a
:class:`~._devices.DeviceResolver`) and asks ``mdadm --detail --export`` and ``pvs``/``lvs
--reportformat json`` (parsed by ``_md`` and ``_lvm_report``); the result is what ``_setplan.layout``
records in the catalog as the set's array descriptor (``_layout.Layout`` reads it at restore time).
"""

from __future__ import annotations

import os

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import read_sysfs
from ansible_collections.stillpoint.snapshots.plugins.module_utils._devices import slaves
# LVM's report parser lives with the LVM library (the snapshot sets); only the parser is used here
from ansible_collections.stillpoint.snapshots.plugins.module_utils._lvm_report import parse_lvm_report
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import chunk_text
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import md_detail_devices
from ansible_collections.stillpoint.snapshots.plugins.module_utils._md import parse_export


class StackDiscovery:
    """What a set's filesystems sit on, at backup time: md arrays (``mdadm --detail --export``) and
    LVM (``pvs``/``lvs --reportformat json``), found by walking sysfs from each mount's device.

    ``discover(mount)`` takes an entry of :meth:`DeviceResolver.resolve` and returns
    ``{"device", "partition", "md": [...], "lvm": [...], "volume_ids": [...]}`` with md members and
    LVM PVs named by EBS volume id (or, for a PV on an md array, by md device); ``volume_ids`` is
    the stack's member order (md role order, PVs in the order LVM lists them, every PV of the
    volume group, not only those under this LV). Returns None (and adds a warning) for stacks a
    restore cannot rebuild from whole volumes (partitions under md/LVM, dm-crypt, multipath).
    A filesystem directly on a volume returns ``{"device": None, "partition": N or None, ...}``.
    """

    def __init__(self, runner, resolver):
        self.run = runner
        self.resolver = resolver
        self.warnings = []
        self._by_id = None
        self._lvm = None

    def _vol(self, kname):
        if self._by_id is None:
            self._by_id = self.resolver.by_id_volumes()
        return self.resolver.volume_id(kname, _by_id=self._by_id)

    def _lvm_reports(self):
        if self._lvm is None:
            rc, out, err = self.run([self.run.bin("lvs"), "--reportformat", "json", "-o",
                                     "vg_name,vg_uuid,lv_name,lv_uuid,lv_kernel_major,lv_kernel_minor,lv_attr"],
                                    check=False)
            if rc != 0:
                raise StillpointError("lvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out,
                                      stderr=err)
            lvs = parse_lvm_report(out, "lv")
            rc, out, err = self.run([self.run.bin("pvs"), "--reportformat", "json", "-o",
                                     "pv_name,pv_uuid,vg_name,vg_uuid"], check=False)
            if rc != 0:
                raise StillpointError("pvs failed (rc=%s): %s" % (rc, (err or out).strip()), rc=rc, stdout=out,
                                      stderr=err)
            self._lvm = (lvs, parse_lvm_report(out, "pv"))
        return self._lvm

    def _whole_volume(self, kname, what):
        """The volume id of a whole disk; None (and a warning) for anything else."""
        node = self.resolver.node(kname)
        if node is None or os.path.exists(os.path.join(node, "partition")) or slaves(node):
            self.warnings.append(
                "%s sits on %s, which is not a whole EBS volume (a partition, or another device-mapper layer): "
                "the md/LVM layout is not recorded, a restore must be given it by hand" % (what, kname))
            return None
        vol = self._vol(kname)
        if vol is None:
            self.warnings.append("%s sits on %s, which has no EBS volume id; the md/LVM layout is not recorded"
                                 % (what, kname))
        return vol

    def _md(self, kname, node):
        dev = "/dev/" + kname
        rc, out, err = self.run([self.run.bin("mdadm"), "--detail", "--export", dev], check=False)
        if rc != 0:
            raise StillpointError("mdadm --detail --export %s failed (rc=%s): %s" % (dev, rc, (err or out).strip()),
                                  rc=rc, stdout=out, stderr=err)
        detail = parse_export(out)
        if not detail.get("MD_UUID"):
            raise StillpointError("mdadm --detail --export %s printed no MD_UUID; is it a running md array?" % dev,
                                  stdout=out)
        members = []
        for d in md_detail_devices(detail):
            if not isinstance(d["role"], int):
                continue  # spares and faulty devices are not part of the data
            vol = self._whole_volume(self.resolver.kernel_name(d["dev"]), dev)
            if vol is None:
                return None
            members.append(vol)
        expected = detail.get("MD_DEVICES")
        if expected and expected.isdigit() and int(expected) != len(members):
            self.warnings.append("%s has %s raid devices but %d active members: the set holds a degraded array"
                                 % (dev, expected, len(members)))
        return dict(device=dev, uuid=detail["MD_UUID"], level=detail.get("MD_LEVEL") or None,
                    chunk=chunk_text(read_sysfs(os.path.join(node, "md", "chunk_size"))), members=members)

    def _pv_entry(self, kname, vg, mds):
        node = self.resolver.node(kname)
        if node is not None and os.path.isdir(os.path.join(node, "md")):
            md = self._md(kname, node)
            if md is None:
                return None
            if md["device"] not in [m["device"] for m in mds]:
                mds.append(md)
            return md["device"]
        return self._whole_volume(kname, "volume group %s" % vg)

    def _lv(self, kname, node, top):
        majmin = read_sysfs(os.path.join(node, "dev"))
        lvs, pvs = self._lvm_reports()
        rows = [r for r in lvs if "%s:%s" % (r.get("lv_kernel_major"), r.get("lv_kernel_minor")) == majmin]
        if len(rows) != 1:
            self.warnings.append("%s (%s) is a device-mapper device LVM does not report as one LV; its layout is "
                                 "not recorded" % (top["mountpoint"], kname))
            return None
        row = rows[0]
        vg = row["vg_name"]
        mds, pv_entries, order = [], [], []
        vg_pvs = [p for p in pvs if p.get("vg_name") == vg]
        if not vg_pvs:
            raise StillpointError("pvs lists no physical volume of volume group %s" % vg)
        for pv in vg_pvs:
            entry = self._pv_entry(self.resolver.kernel_name(pv["pv_name"]), vg, mds)
            if entry is None:
                return None
            pv_entries.append(entry)
        for entry in pv_entries:
            if entry.startswith("/dev/"):
                order.extend(v for v in [m for m in mds if m["device"] == entry][0]["members"] if v not in order)
            elif entry not in order:
                order.append(entry)
        lv_names = [r["lv_name"] for r in lvs if r.get("vg_name") == vg and r.get("lv_name")]
        return dict(device="/dev/%s/%s" % (vg, row["lv_name"]), partition=None, md=mds,
                    lvm=[dict(vg=vg, uuid=row.get("vg_uuid") or None, pvs=pv_entries, lvs=lv_names)],
                    volume_ids=order)

    def discover(self, mount):
        node = self.resolver.majmin_node(mount["majmin"]) if mount.get("majmin") else None
        if node is None or mount["majmin"].split(":")[0] == "0":  # btrfs (anonymous dev) and the like
            return dict(device=None, partition=None, md=[], lvm=[], volume_ids=list(mount["volume_ids"]))
        kname = os.path.basename(node)
        if os.path.exists(os.path.join(node, "partition")):
            parent = os.path.basename(os.path.dirname(node))
            number = read_sysfs(os.path.join(node, "partition"))
            if slaves(os.path.dirname(node)) or not (number or "").isdigit():
                self.warnings.append("%s is on partition %s of a stacked device; its layout is not recorded"
                                     % (mount["mountpoint"], kname))
                return None
            return dict(device=None, partition=int(number), md=[], lvm=[], volume_ids=[self._vol(parent)])
        if os.path.isdir(os.path.join(node, "md")):
            md = self._md(kname, node)
            if md is None:
                return None
            return dict(device=md["device"], partition=None, md=[md], lvm=[], volume_ids=list(md["members"]))
        if os.path.isdir(os.path.join(node, "dm")):
            uuid = read_sysfs(os.path.join(node, "dm", "uuid")) or ""
            if not uuid.startswith("LVM-"):
                self.warnings.append("%s is on device-mapper device %s (%s), not an LVM logical volume; its layout "
                                     "is not recorded" % (mount["mountpoint"], kname, uuid.split("-")[0] or "no uuid"))
                return None
            return self._lv(kname, node, mount)
        return dict(device=None, partition=None, md=[], lvm=[], volume_ids=list(mount["volume_ids"]))


def discover_stacks(runner, resolver, mounts):
    """Add ``stack`` (see :class:`StackDiscovery`) to each resolved mount and put its
    ``volume_ids`` in stack order (every PV of a volume group included). Returns the warnings."""
    disc = StackDiscovery(runner, resolver)
    for mount in mounts:
        stack = disc.discover(mount)
        mount["stack"] = stack
        if stack is not None:
            ordered = [v for v in stack["volume_ids"] if v]
            mount["volume_ids"] = ordered + [v for v in mount["volume_ids"] if v not in ordered]
    return disc.warnings
