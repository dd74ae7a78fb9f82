# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from tests.ec2_endpoint.fixtures import ec2, ec2_endpoint  # noqa: F401  (pytest fixtures)
from tests.support.ordering import longest_first

__all__ = ["ec2", "ec2_endpoint"]

# The files that took longest in a quiet run (pytest --durations, -n 2 --dist loadfile, 2026-12-04: the sum of their
# tests' calls, 80-230 s each), run first: xdist's loadfile hands out whole files in collection order, so a long
# file collected last (alphabetically) keeps one worker busy while the other has nothing left. Order only. `make
# integration` passes --no-loadscope-reorder: xdist's default reorders the files by their number of tests instead.
LONGEST_FIRST = ("test_group.py", "test_restore_playbook.py", "test_drill.py", "test_drill_app_mariadb.py",
                 "test_win_array_restore.py", "test_drill_app.py", "test_clusterpro_roles.py", "test_app_mariadb.py",
                 "test_app_postgresql.py", "test_app_controller_mode.py")


def pytest_collection_modifyitems(items):
    longest_first(items, LONGEST_FIRST)
