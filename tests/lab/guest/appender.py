# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's background writers: one guest Python process that appends to a file at an interval.

The tests used shell loops (``while true; do date >> log; sleep 0.05; done``, the same with ``dd``).
Under TCG every fork and exec in the guest is paid by the host: measured with one guest on this
machine, such a loop kept its qemu process at 69 % (``date``) and 74 % (``dd ... oflag=dsync``) of a
host core while it managed about 7 appends a second, and this Python loop at 3 % for 30 appends a
second. Several of them ran during every lab playbook, beside the guests doing the work.

    vm.popen(appender.command("/data1/log", stamp=True))         # one line: time.time_ns() per append
    vm.popen(appender.command("/mnt/during", size=65536))          # 64 KiB of random bytes, O_DSYNC

The file's path stays on the guest's command line, so ``pkill -f <path>`` still finds the writer.
The returned command contains no ``%`` (the CLUSTERPRO fake %-formats its application command).
"""

import shlex

# stamp: a line "<ns>\n", plain appends (as `date +%s%N >> log`); bytes: random blocks with O_DSYNC
# (as `dd if=/dev/urandom bs=64k count=1 oflag=append,dsync conv=notrunc`)
_SOURCE = """import os, sys, time
path, mode, size, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (0 if mode == "stamp" else os.O_DSYNC)
fd = os.open(path, flags, 0o644)
while True:
    os.write(fd, str(time.time_ns()).encode() + b"\\n" if mode == "stamp" else os.urandom(size))
    time.sleep(interval)
"""


def command(path, stamp=False, size=65536, interval=0.05):
    """A guest shell command that runs the writer in the foreground until it is killed."""
    mode = "stamp" if stamp else "bytes"
    return "exec python3 -c %s %s %s %d %s" % (shlex.quote(_SOURCE), shlex.quote(path), mode, size, interval)
