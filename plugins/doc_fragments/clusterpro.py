# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The CLUSTERPRO options every CLUSTERPRO module takes; their argument spec is
``plugins/module_utils/_clusterpro.py``'s ``CLUSTERPRO_ARGS``, in matching form."""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  edition:
    description:
      - The CLUSTERPRO edition the server runs; selects the command lines (C(docs/clusterpro.md)).
    type: str
    choices: [linux, windows]
    default: linux
  version:
    description:
      - The CLUSTERPRO X version (C(4), C(4.3), C(5.1) ...); only the major version matters.
    type: str
    default: "4"
"""
