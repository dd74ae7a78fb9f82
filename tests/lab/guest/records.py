# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Numbered records on raw disks: a writer that says how far it got, a reader that says what a copy holds.

Runs in a lab guest (shipped over SSH stdin; standard library only) and on the host (to compute
what a copy should hold). Record ``seq`` of disk ``k`` is the 4 KiB block at ``seq * 4096``:
``SPREC`` + seq + k + a pattern derived from both, so a block from the wrong place, a torn block or
a stale one never passes for another.

    python3 - write --progress /dev/shm/seq --count 100000 /dev/nvme0n1 [/dev/nvme1n1 ...]
    python3 - read --limit 5000 /dev/nvme0n1          # JSON: {"records", "later", "sha256"}

The writer opens the disks ``O_DSYNC``: a record is on the disk when its write returns. Per seq it
writes disk 0, then disk 1, ..., then publishes ``seq + 1`` (records complete on every disk) in the
progress file. A point-in-time copy of all disks therefore holds records ``0 .. k-1`` on each,
with k equal on all disks or one less on the later ones, and nothing beyond.
"""

import argparse
import hashlib
import json
import os
import struct
import sys

BLOCK = 4096
MAGIC = b"SPREC"


def record(seq, disk):
    head = MAGIC + struct.pack("<QI", seq, disk)
    fill = hashlib.sha256(head).digest() * (BLOCK // 32)
    return head + fill[:BLOCK - len(head)]


def expected_sha256(count, disk):
    h = hashlib.sha256()
    for seq in range(count):
        h.update(record(seq, disk))
    return h.hexdigest()


def write(progress, count, disks):
    fds = [os.open(d, os.O_WRONLY | os.O_DSYNC) for d in disks]
    tmp = progress + ".tmp"
    for seq in range(count):
        for k, fd in enumerate(fds):
            os.pwrite(fd, record(seq, k), seq * BLOCK)
        with open(tmp, "w") as f:
            f.write(str(seq + 1))
        os.rename(tmp, progress)


def read(disk, limit, index=0):
    """Consecutive valid records from 0, and how many valid records lie beyond the first gap."""
    h = hashlib.sha256()
    n = 0
    later = 0
    with open(disk, "rb") as f:
        for seq in range(limit):
            block = f.read(BLOCK)
            if len(block) < BLOCK:
                break
            good = block == record(seq, index)
            if good and n == seq:
                n += 1
                h.update(block)
            elif good or block.startswith(MAGIC):
                later += 1
    return {"records": n, "later": later, "sha256": h.hexdigest()}


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["write", "read"])
    p.add_argument("--progress", default="/dev/shm/seq")
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--limit", type=int, default=10000)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("disks", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "write":
        write(args.progress, args.count, args.disks)
    else:
        print(json.dumps(read(args.disks[0], args.limit, args.index)))


if __name__ == "__main__":
    main(sys.argv[1:])
