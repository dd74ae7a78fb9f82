# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lab tier fixtures: the guest image, and a timing table printed at the end of the run.

Every lab test module boots the VMs it needs (at most two at once: TCG on two cores) and stops
them by PID in its fixture's finalizer, pass or fail. Phases are timed with ``lab_timer``::

    with lab_timer("snapshot 1 GiB during writes"):
        ...
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

_TIMINGS = []  # (test module, phase, seconds)


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs the qemu VM lab (tests/lab)")
    # every VM start of the session, the endpoint's included (its server inherits the environment)
    if not os.environ.get("STILLPOINT_LAB_BOOT_LOG"):
        fd, path = tempfile.mkstemp(prefix="stillpoint-lab-boots-", suffix=".jsonl")
        os.close(fd)
        os.environ["STILLPOINT_LAB_BOOT_LOG"] = path


@pytest.fixture(scope="session")
def lab_image():
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mmdebstrap") is None:
        # `make lab` (and so CI) sets STILLPOINT_LAB_REQUIRED: there a missing lab is a failure
        stop = pytest.fail if os.environ.get("STILLPOINT_LAB_REQUIRED") else pytest.skip
        stop("the lab needs qemu-system-x86_64 and mmdebstrap (apt-get install qemu-system-x86 qemu-utils mmdebstrap)")
    t0 = time.monotonic()
    image = build()
    _TIMINGS.append(("(session)", "guest image (cached: %s)" % ("no" if time.monotonic() - t0 > 5 else "yes"),
                     time.monotonic() - t0))
    # the saved guest state every lab VM of the default shape resumes from (tests/lab/resume.py)
    t0 = time.monotonic()
    _path, built = resume.ensure(image.path)
    _TIMINGS.append(("(session)", "resume template (cached: %s)" % ("no" if built else "yes"), time.monotonic() - t0))
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
            _TIMINGS.append((module, phase, time.monotonic() - t0))
    return timer


def record_timing(module, phase, seconds):
    """For module-scoped fixtures (boot, teardown), which cannot use ``lab_timer``."""
    _TIMINGS.append((module, phase, seconds))


def pytest_terminal_summary(terminalreporter):
    if not _TIMINGS:
        return
    tr = terminalreporter
    tr.section("lab timings")
    width = max(len(t[0]) + len(t[1]) for t in _TIMINGS) + 3
    for module, phase, seconds in _TIMINGS:
        tr.write_line("%s %8.1f s" % (("%s: %s" % (module, phase)).ljust(width), seconds))
    total = float(sum(t[2] for t in _TIMINGS))
    tr.write_line("%s %8.1f s" % ("sum of timed phases".ljust(width), total))
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
