# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test files handed to xdist's workers longest first (the tiers' conftests).

``--dist loadfile --no-loadscope-reorder`` hands out whole files in collection order: a long file collected
last keeps one worker busy while the other has nothing left (xdist's default order, by number of tests per
file, is not by time either). Order only: nothing is skipped or changed.
"""


def longest_first(items, names):
    """Sort pytest ``items`` so the files named in ``names`` (basenames, longest first) come first, in that order;
    stable: the tests of a file keep their order, the files not named theirs."""
    def rank(item):
        name = item.path.name
        return names.index(name) if name in names else len(names)
    items.sort(key=rank)
