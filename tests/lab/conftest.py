# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab tier fixtures: the guest image, and a timing table printed at the end of the run.

Every lab test module boots the VMs it needs and stops them by PID in its fixture's finalizer, pass or
fail. Phases are timed with ``lab_timer``::

    with lab_timer("snapshot 1 GiB during writes"):
        ...

`make lab` runs the tier on two pytest-xdist workers (``-n 2 --dist loadfile``): a whole test module
runs on one worker (its module-scoped world is booted once). Timings and VM starts are appended by
every worker to files named in the environment, which the workers inherit, and the table is printed
once, by the process that started them.
"""

import contextlib
import json
import os
import shutil
import tempfile
import time

import pytest

from tests.lab import resume
from tests.lab.image import build
from tests.support.ordering import longest_first

# the files by their time in the last clean-clone runs, longest first (sum of their timed phases, s): drbd 470,
# clusterpro 375, md_lvm 290, group 255, lvm_snapshot_set 160, postgresql 150, cross_lv 80, endpoint 70, molecule
# 65, snapshots 20. `make lab` passes --no-loadscope-reorder, so xdist hands the files out in this order (its
# default reorders them by their number of tests) and the two workers end close together
LONGEST_FIRST = ("test_lab_drbd.py", "test_lab_clusterpro.py", "test_lab_md_lvm.py", "test_lab_group.py",
                 "test_lvm_snapshot_set.py", "test_lab_postgresql.py", "test_lvm_cross_lv.py", "test_endpoint_qemu.py",
                 "test_molecule.py", "test_lab_snapshots.py")


def pytest_collection_modifyitems(items):
    longest_first(items, LONGEST_FIRST)


def _shared_log(variable, prefix):
    """A JSON-lines file named by ``variable``, made once by the first process (xdist workers inherit it)."""
    if not os.environ.get(variable):
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".jsonl")
        os.close(fd)
        os.environ[variable] = path
    return os.environ[variable]


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs the qemu VM lab (tests/lab)")
    # every VM start of the session, the endpoint's included (its server inherits the environment)
    _shared_log("STILLPOINT_LAB_BOOT_LOG", "stillpoint-lab-boots-")
    # every timed phase, from whichever worker ran it
    _shared_log("STILLPOINT_LAB_TIMINGS", "stillpoint-lab-timings-")


def _record(module, phase, seconds):
    with open(os.environ["STILLPOINT_LAB_TIMINGS"], "a") as f:
        f.write(json.dumps({"module": module, "phase": phase, "s": seconds, "at": time.time(),
                            "worker": os.environ.get("PYTEST_XDIST_WORKER", "-")}) + "\n")


@pytest.fixture(scope="session")
def lab_image():
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mmdebstrap") is None:
        # `make lab` (and so CI) sets STILLPOINT_LAB_REQUIRED: there a missing lab is a failure
        stop = pytest.fail if os.environ.get("STILLPOINT_LAB_REQUIRED") else pytest.skip
        stop("the lab needs qemu-system-x86_64 and mmdebstrap (apt-get install qemu-system-x86 qemu-utils mmdebstrap)")
    t0 = time.monotonic()
    image = build()
    seconds = time.monotonic() - t0
    _record("(session)", "guest image (cached: %s)" % ("no" if seconds > 5 else "yes"), seconds)
    # the saved guest state every lab VM of the default shape resumes from (tests/lab/resume.py)
    t0 = time.monotonic()
    _path, built = resume.ensure(image.path)
    _record("(session)", "resume template (cached: %s)" % ("no" if built else "yes"), time.monotonic() - t0)
    return image


@pytest.fixture
def lab_timer(request):
    module = request.node.module.__name__.rsplit(".", 1)[-1]

    @contextlib.contextmanager
    def timer(phase):
        t0 = time.monotonic()
        try:
            yield
        finally:
            _record(module, phase, time.monotonic() - t0)
    return timer


def record_timing(module, phase, seconds):
    """For module-scoped fixtures (boot, teardown), which cannot use ``lab_timer``."""
    _record(module, phase, seconds)


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):  # an xdist worker: the process that started it prints the table
        return
    try:
        with open(os.environ["STILLPOINT_LAB_TIMINGS"]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (KeyError, OSError, ValueError):
        return
    if not rows:
        return
    tr = terminalreporter
    tr.section("lab timings")
    # module by module in the order each began (a module's phases in the order they ended)
    began = {}
    for row in rows:
        began.setdefault(row["module"], row["at"] - row["s"])
    rows.sort(key=lambda r: (r["module"] != "(session)", began[r["module"]]))
    width = max(len(r["module"]) + len(r["phase"]) for r in rows) + 9
    for r in rows:
        tr.write_line("%s %8.1f s" % (("[%s] %s: %s" % (r["worker"], r["module"], r["phase"])).ljust(width), r["s"]))
    tr.write_line("%s %8.1f s" % ("sum of timed phases".ljust(width), float(sum(r["s"] for r in rows))))
    for worker in sorted(set(r["worker"] for r in rows)):
        mine = [r for r in rows if r["worker"] == worker]
        tr.write_line("%s %8.1f s" % (("worker %s: wall clock from its first phase to its last" % worker).ljust(width),
                                      max(r["at"] for r in mine) - min(r["at"] - r["s"] for r in mine)))
    _boot_summary(tr)


def _boot_summary(tr):
    """How the session's VMs started: resumed from the saved state, or cold (restarts, other kernels,
    fallbacks with their reason)."""
    try:
        with open(os.environ["STILLPOINT_LAB_BOOT_LOG"]) as f:
            boots = [json.loads(line) for line in f if line.strip()]
    except (KeyError, OSError, ValueError):
        return
    resumed = [b for b in boots if b["mode"] == "resumed"]
    line = "VM starts: %d resumed from the saved state, %d cold" % (len(resumed), len(boots) - len(resumed))
    if resumed:
        line += "; resume phases on average: " + ", ".join(
            "%s %.1f s" % (k, sum(b["resume"][k] for b in resumed) / len(resumed)) for k in ("load", "plug", "adopt"))
    tr.write_line(line)
    for b in boots:
        if b.get("fallback"):
            tr.write_line("  %s fell back to a cold boot: %s" % (b["vm"], b["fallback"]))
