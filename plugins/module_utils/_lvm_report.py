# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What LVM prints, parsed: ``--reportformat json`` reports and UUIDs.

Private to the collection. Pure functions, shared by LVM snapshot sets (``_lvm``), the backup-time
discovery of a set's stacks (``_discovery``) and the host's down/up steps of a restore (``_hostops``),
as ``_md`` is for mdadm. Apart from ``_lvm`` so that the restore steps do not compile the snapshot
set's library and the freeze it imports: every module start in a small guest pays for each file.
"""

from __future__ import annotations

import json

from ansible_collections.stillpoint.snapshots.plugins.module_utils._common import StillpointError


def parse_lvm_report(text, section):
    """Rows of an LVM ``--reportformat json`` report section (``"vg"``, ``"lv"``, ``"pv"``)."""
    try:
        data = json.loads(text)
        rows = []
        for report in data["report"]:
            rows.extend(report.get(section, []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StillpointError(
            "Cannot parse the LVM JSON report (section %r): %r. LVM 2.02.158 or later is needed for "
            "--reportformat json." % (section, (text or "")[:200]))
    return rows


def lvm_uuid_key(uuid):
    """An LVM UUID without its dashes (LVM UUIDs are case-sensitive)."""
    return (uuid or "").replace("-", "").strip()
