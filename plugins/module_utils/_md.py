# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What mdadm prints, parsed: ``--examine/--detail --export``, array UUIDs, chunk sizes.

Private to the collection. Pure functions, shared by the backup-time discovery of a set's
stacks (``_discovery``) and the host's down/up steps of a restore (``_hostops``).
"""

from __future__ import annotations

import re


def parse_export(text):
    """``KEY=VALUE`` lines (``mdadm --examine --export``, ``mdadm --detail --export``) -> dict.

    Blank lines and lines without ``=`` are skipped; a value in single or double quotes is
    unquoted; the last of repeated keys wins."""
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def md_detail_devices(export):
    """Member devices of a running array from ``mdadm --detail --export`` (parsed):
    ``[{"dev": "/dev/nvme1n1", "role": 0}]`` (role ``"spare"`` for a spare), sorted by role.

    mdadm names the keys after the member's sysfs entry (``MD_DEVICE_ev_nvme1n1_ROLE`` /
    ``_DEV``); only the pairing of ``_ROLE`` and ``_DEV`` under one key is relied on."""
    roles, devs = {}, {}
    for key, value in export.items():
        if not key.startswith("MD_DEVICE_"):
            continue
        if key.endswith("_ROLE"):
            roles[key[len("MD_DEVICE_"):-len("_ROLE")]] = value
        elif key.endswith("_DEV"):
            devs[key[len("MD_DEVICE_"):-len("_DEV")]] = value
    out = []
    for name, dev in devs.items():
        role = roles.get(name)
        if role is not None and role.isdigit():
            role = int(role)
        out.append(dict(dev=dev, role=role))
    out.sort(key=lambda d: (not isinstance(d["role"], int), d["role"] if isinstance(d["role"], int) else 0, d["dev"]))
    return out


def md_uuid_key(uuid):
    """An md UUID in a comparable form: mdadm's ``5f3c2a1e:9b0d4e77:...``, the dashed form of
    ``blkid``/``lsblk`` and any case compare equal."""
    return re.sub(r"[^0-9a-f]", "", (uuid or "").lower())


def chunk_text(chunk_bytes):
    """sysfs ``md/chunk_size`` (bytes) -> ``"512K"`` as mdadm prints it; None for 0 or unknown."""
    if not chunk_bytes or not chunk_bytes.isdigit() or int(chunk_bytes) == 0:
        return None
    return "%dK" % (int(chunk_bytes) // 1024)
