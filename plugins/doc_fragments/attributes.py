# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attribute blocks shared by the collection's modules.

``stillpoint.snapshots.attributes`` gives the attribute descriptions, every module adds its
``support`` levels; ``.info_module`` is the whole block of a read-only module;
``.actiongroup_aws`` / ``.actiongroup_clusterpro`` say which ``module_defaults`` group a
module belongs to (meta/runtime.yml's ``action_groups``).
"""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return the changed status it predicts without changing the target.
  diff_mode:
    description: Returns details on what changed (or would change in check mode) when run with C(--diff).
  idempotent:
    description: A second run with the same arguments, against what the first one left, changes nothing.
"""

    # complete on its own: a read-only module lists only this fragment
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return the changed status it predicts without changing the target.
    support: full
    details: The module only reads; it behaves the same in check mode.
  diff_mode:
    description: Returns details on what changed (or would change in check mode) when run with C(--diff).
    support: N/A
    details: Nothing changes, so there is no diff.
  idempotent:
    description: A second run with the same arguments, against what the first one left, changes nothing.
    support: full
    details: Read-only; the same state gives the same answer.
"""

    ACTIONGROUP_AWS = r"""
options: {}
attributes:
  action_group:
    description:
      - Set this module's AWS options for a whole play or role with C(module_defaults) and the group
        C(group/stillpoint.snapshots.aws) (or C(group/amazon.aws.aws), which it extends).
    support: full
    membership:
      - stillpoint.snapshots.aws
"""

    ACTIONGROUP_CLUSTERPRO = r"""
options: {}
attributes:
  action_group:
    description:
      - Set O(edition) and O(version) once with C(module_defaults) and the group C(group/stillpoint.snapshots.clusterpro).
    support: full
    membership:
      - stillpoint.snapshots.clusterpro
"""
