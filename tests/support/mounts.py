# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mount table for the test infrastructure (the endpoint server, the emulated instances).

Stdlib only, so the endpoint server can use it without the collection on its path.
"""

import os
import re

_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(raw):
    """mountinfo's octal escapes stand for bytes (``\\040`` a space): decode them as such."""
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), raw))


def mounts(path="/proc/self/mountinfo"):
    """``[(source, mountpoint, "maj:min")]`` of every mount, in table order."""
    out = []
    with open(path, "rb") as handle:
        for line in handle:
            left, sep, right = line.partition(b" - ")
            if not sep:
                continue
            fields, rfields = left.split(), right.split()
            source = _unescape(rfields[1]) if len(rfields) > 1 else ""
            out.append((source, _unescape(fields[4]), fields[2].decode("ascii", "replace")))
    return out
