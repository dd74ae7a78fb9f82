# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`molecule test -s array_backup` from the collection root, as a role author runs it.

The scenario (extensions/molecule/array_backup) uses the lab as molecule's delegated driver:
create boots the strict EC2 endpoint and one VM with two data volumes, prepare makes ext4 on
each (found by volume id), converge runs the array_backup role in host mode in the guest, verify
reads the catalog from the controller (one complete filesystem-level set of both volumes), and
destroy stops everything by PID. Here molecule runs as a subprocess with its ephemeral directory
in tmp_path, so nothing of it outlives the test and a developer's own run is not touched.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.lab.conftest import record_timing

pytestmark = pytest.mark.lab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO = "array_backup"
TIMEOUT = 900


def _ours(marker):
    """PIDs of live processes whose command line mentions ``marker`` (our ephemeral directory)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def test_molecule_array_backup(tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        (pytest.fail if os.environ.get("STILLPOINT_LAB_REQUIRED") else pytest.skip)(
            "the lab needs qemu-system-x86_64 (apt-get install qemu-system-x86 qemu-utils)")
    bindir = os.path.dirname(sys.executable)
    molecule = os.path.join(bindir, "molecule")
    assert os.path.exists(molecule), "molecule is not installed in %s (pip install -r requirements-dev.txt)" % bindir
    ephemeral = str(tmp_path / "molecule")
    env = dict(os.environ)
    env.update(PATH=bindir + os.pathsep + env.get("PATH", ""), MOLECULE_EPHEMERAL_DIRECTORY=ephemeral,
               NO_COLOR="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
    t0 = time.monotonic()
    try:
        proc = subprocess.run([molecule, "test", "-s", SCENARIO], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
                              check=False)
    finally:
        record_timing("test_molecule", "molecule test -s %s (wall clock)" % SCENARIO, time.monotonic() - t0)
        # molecule's own destroy runs even when a step fails; this is for a timeout or a crash
        if os.path.exists(os.path.join(ephemeral, "lab", "world.json")):
            subprocess.run([sys.executable, "-m", "tests.lab.world", "down", "--dir", os.path.join(ephemeral, "lab")],
                           cwd=ROOT, timeout=120, check=False)
    out = proc.stdout
    tail = out[-8000:]
    assert proc.returncode == 0, tail
    flat = re.sub(r"\s+", " ", out)  # long messages may be folded over lines
    # every step of the sequence ran, and ran to success ("[array_backup > converge] Executed: Successful")
    for step in ("destroy", "syntax", "create", "prepare", "converge", "verify"):
        assert re.search(r"%s\W+%s\W+Executed: Successful" % (SCENARIO, step), out), (step, tail)
    assert not re.search(r"%s\W+idempotence" % SCENARIO, out), "idempotence is not part of this scenario"
    # what verify checked: one complete set with both volumes as members, at filesystem level
    verified = re.search(r"(bs-\d{8}T\d{6}Z-[0-9a-f]+): complete, 2 members, filesystem", flat)
    assert verified, tail
    # converge took that set: the role reported it with 2 members, complete
    assert re.search(r"set %s: 2 members, level filesystem, state complete" % re.escape(verified.group(1)), flat), tail
    recap = re.search(r"%s\s*: actions=(\d+)\s+successful=(\d+).*?failed=(\d+)" % SCENARIO, out)
    assert recap and recap.group(3) == "0" and recap.group(1) == recap.group(2), recap and recap.group(0)
    # destroy left nothing running and removed the lab's files
    assert _ours(ephemeral) == []
    assert not os.path.exists(os.path.join(ephemeral, "lab"))
