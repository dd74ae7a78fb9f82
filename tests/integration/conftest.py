# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from tests.ec2_endpoint.fixtures import ec2, ec2_endpoint  # noqa: F401  (pytest fixtures)

__all__ = ["ec2", "ec2_endpoint"]
