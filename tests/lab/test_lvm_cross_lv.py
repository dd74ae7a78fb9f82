# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""lvm_snapshot_set's cross-LV freeze, on the kernel that allows it.

One VM with one raw NVMe disk holding a VG with two LVs: ext4 on /srv/ext and XFS on /srv/xfs.

* bookworm-backports' 6.12 kernel (image variant ``backports``, booted with its ``cpu``): a writer
  appends the same numbered 4 KiB records (tests/lab/guest/records.py, ``O_DSYNC``) to a file on each
  filesystem, ext4 first. The module runs with ``cross_lv=auto``: check mode says ``freeze`` and
  creates nothing; the real run freezes both filesystems through the guardian, creates both
  snapshots, thaws, and records ``cross_lv_consistent=true``. Mounted read-only, the two copies hold
  the same number of records, or the XFS one a single record fewer (the writer's order): one
  instant. Both filesystems take writes again afterwards.

On bookworm's 6.1 kernel (the default image) ``cross_lv=freeze`` is refused before anything is done:
test_lvm_snapshot_set.py checks that on its VM (no VM booted for it here).
"""

import contextlib
import json
import os
import time

import pytest

from tests.lab.conftest import record_timing
from tests.lab.image import KERNELS, build
from tests.lab.test_lvm_snapshot_set import guest, run_module
from tests.lab.vm import Lab, nvme_serial

pytestmark = pytest.mark.lab

RECORDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest", "records.py")
VG = "vgx"
VOLUMES = [{"vg": VG, "lv": "ext", "size": "64m"}, {"vg": VG, "lv": "xfs", "size": "64m"}]
FILES = ["/srv/ext/rec", "/srv/xfs/rec"]   # records.py disk 0 and disk 1: written in this order per record
SERIAL = nvme_serial("vol-%017x" % 0x66c0)

SETUP = r"""
set -e
d=/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_%(serial)s
i=0; while [ ! -e $d ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
pvcreate -q $d
vgcreate -q %(vg)s $d
lvcreate -q -y -n ext -L 256m %(vg)s
lvcreate -q -y -n xfs -L 320m %(vg)s
mkfs.ext4 -q /dev/%(vg)s/ext && mkfs.xfs -q /dev/%(vg)s/xfs
for lv in ext xfs; do mkdir -p /srv/$lv && mount /dev/%(vg)s/$lv /srv/$lv; done
# sparse record files: records.py opens them O_WRONLY|O_DSYNC and writes block <seq> of each
for f in %(files)s; do truncate -s 800M $f; done
sync
"""
WRITER_COUNT = 200000  # more than the writer reaches before it is stopped


def snapshot_lvs(vm):
    out = guest(vm, "lvs --reportformat json -o lv_name,origin %s" % VG).stdout
    return sorted(r["lv_name"] for r in json.loads(out)["report"][0]["lv"] if r["origin"])


def progress(vm):
    return int(guest(vm, "cat /dev/shm/seq 2>/dev/null || echo 0").stdout.strip() or 0)


def writable(vm):
    """Both filesystems take a write within 10 s (nothing left frozen)."""
    r = guest(vm, "timeout 10 sh -c 'for f in /srv/ext/probe /srv/xfs/probe; do echo x > $f && sync -f $f; done'",
              check=False)
    return r.returncode == 0


@contextlib.contextmanager
def one_vm(image, workdir, name, cpu, module):
    """Boot one VM with one 1 GiB NVMe disk and the VG; always stopped (by PID) on the way out."""
    lab = Lab(str(workdir), image)
    vm = lab.vm(name, cpu=cpu)
    path = str(workdir / "disk0.raw")
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    try:
        t0 = time.monotonic()
        vm.start(disks=[{"node": "d0", "file": path, "serial": SERIAL, "id": "nvme0"}])
        vm.wait_ssh()
        record_timing(module, "boot %s (kernel %s, -cpu %s)" % (name, image.info["kernel"], cpu),
                      time.monotonic() - t0)
        t0 = time.monotonic()
        guest(vm, SETUP % {"serial": SERIAL, "vg": VG, "files": " ".join(FILES)})
        record_timing(module, "%s: VG, ext4 + xfs LVs mounted" % name, time.monotonic() - t0)
        yield vm, lab.inventory(str(workdir / "hosts.json"))
    finally:
        t0 = time.monotonic()
        try:
            if vm.running():
                guest(vm, "pkill -f '[r]ecords.py'; fsfreeze -u /srv/ext; fsfreeze -u /srv/xfs", check=False)
        finally:
            lab.teardown()
        record_timing(module, "%s: teardown (VM by PID)" % name, time.monotonic() - t0)


def read_records(vm, path, index, limit):
    with open(RECORDS) as f:
        source = f.read()
    out = vm.ssh("python3 - read --limit %d --index %d %s" % (limit, index, path), input=source, timeout=120).stdout
    return json.loads(out)


def test_freeze_across_lvs_on_612(lab_image, tmp_path, lab_timer):
    t0 = time.monotonic()
    image = build(kernel="backports")
    record_timing("test_lvm_cross_lv", "backports image (cached: %s)" % ("no" if time.monotonic() - t0 > 5 else "yes"),
                  time.monotonic() - t0)
    assert tuple(int(x) for x in image.info["kernel"].split(".")[:2]) >= (6, 6), image.info
    with one_vm(image, tmp_path, "vmk612", KERNELS["backports"]["cpu"], "test_lvm_cross_lv") as (vm, inv):
        # lvcreate takes 2 to 4.5 s under TCG (more when other VMs load the host): 10 s, the default deadline,
        # is for real CPUs
        args = {"set_name": "xlv", "volumes": VOLUMES, "cross_lv": "auto", "freeze_deadline": 60}
        with lab_timer("6.12: check mode (plans freeze)"):
            res = run_module(inv, args, check=True)
        assert res.get("changed") is True and not res.get("failed"), res
        assert res["cross_lv"]["mechanism"] == "freeze" and res["cross_lv"]["kernel_nests_freeze"] is True, res
        assert res["cross_lv"]["freeze_mountpoints"] == ["/srv/ext", "/srv/xfs"]
        assert "freeze" not in res and snapshot_lvs(vm) == []

        with open(RECORDS) as f:
            source = f.read()
        vm.ssh("cat > /root/records.py", input=source)
        writer = vm.popen("exec python3 /root/records.py write --progress /dev/shm/seq --count %d %s"
                          % (WRITER_COUNT, " ".join(FILES)))
        try:
            deadline = time.monotonic() + 30
            while progress(vm) < 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            before = progress(vm)
            assert before >= 200, "the writer did not get going"
            with lab_timer("6.12: create a set of 2 with cross_lv=auto (writer running)"):
                res = run_module(inv, args)
            after_call = progress(vm)
        finally:
            guest(vm, "pkill -f '[r]ecords.py write'", check=False)
            writer.kill()
            writer.wait(30)
        final = progress(vm)
        assert res.get("changed") is True and not res.get("failed"), res
        cross, freeze, sset = res["cross_lv"], res["freeze"], res["snapshot_set"]
        assert cross["mechanism"] == "freeze" and cross["requested"] == "auto", cross
        assert sset["complete"] and sset["cross_lv_consistent"] is True and sset["level"] == "filesystem", sset
        assert [m["mountpoint"] for m in freeze["mounts"]] == ["/srv/ext", "/srv/xfs"], freeze
        assert freeze["deadline_thawed"] is False and not freeze["thaw_errors"], freeze
        assert 0 < freeze["window_ms"] < freeze["deadline_s"] * 1000
        create_ms = [m["create_ms"] for m in res["plan"]]
        assert sum(create_ms) < freeze["window_ms"], (create_ms, freeze)   # both lvcreate calls inside the window
        assert not any("not consistent with each other" in w for w in res.get("warnings", [])), res.get("warnings")
        assert writable(vm), "a filesystem stayed frozen"
        assert final > after_call >= before  # the writer went on after the thaw

        with lab_timer("6.12: mount the set read-only, read the records"):
            res = run_module(inv, {"set_name": "xlv", "state": "mounted", "mount_base": "/mnt/xlv"})
            assert res.get("changed") is True and not res.get("failed"), res
            counts = [read_records(vm, "/mnt/xlv/%s/%s/rec" % (VG, lv), k, final + 16)
                      for k, lv in enumerate(("ext", "xfs"))]
        ext, xfs = counts
        record_timing("test_lvm_cross_lv", "6.12: freeze window %.0f ms (2 LVs; lvcreate %s ms), records ext4 %d / "
                      "xfs %d (writer at %d..%d around the call)"
                      % (freeze["window_ms"], "+".join("%.0f" % ms for ms in create_ms), ext["records"],
                         xfs["records"], before, after_call), 0.0)
        assert before <= ext["records"] <= after_call + 1, (before, ext, after_call)
        # one instant: what was complete on ext4 is on xfs too, or the one record in flight between them
        assert xfs["records"] in (ext["records"], ext["records"] - 1), counts
        assert ext["later"] == 0 and xfs["later"] == 0, counts   # nothing from after the freeze
        res = run_module(inv, {"set_name": "xlv", "state": "unmounted"})
        assert res.get("changed") is True, res
        res = run_module(inv, {"set_name": "xlv", "state": "absent"})
        assert res.get("changed") is True and snapshot_lvs(vm) == [], res
