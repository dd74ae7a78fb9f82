# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The option of every module that finds disks by EBS volume id on the host; its argument spec is
``plugins/module_utils/_devices.py``'s ``DEVICES_ARGS``, in matching form."""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  by_id_dir:
    description:
      - Where the udev links C(nvme-Amazon_Elastic_Block_Store_vol...) are. A disk is an EBS volume by its NVMe
        serial or by such a link, never by its device name.
    type: path
    default: /dev/disk/by-id
"""
