# -*- coding: utf-8 -*-
"""Test-wide setup: make the collection importable as ansible_collections.stillpoint.snapshots.

The collection's own tree is linked into .build/collections/ansible_collections/stillpoint/snapshots
(the Makefile does the same); amazon.aws comes from the `ansible` package in site-packages, and the
two merge as one `ansible_collections` namespace package.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "stillpoint", "snapshots")

if not os.path.lexists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(ROOT, LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", COLLECTIONS + os.pathsep + os.environ.get("ANSIBLE_COLLECTIONS_PATH", ""))
