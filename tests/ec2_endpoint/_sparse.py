# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sparse-aware file copy: only the data extents are copied, holes stay holes.

A 64 MiB ext4 image holding a few MiB of data copies in a few milliseconds: SEEK_DATA/SEEK_HOLE
find the extents, ``os.copy_file_range`` moves them inside the kernel (a reflink on filesystems
that can), and ``ftruncate`` gives the copy the source's full length.
"""

from __future__ import annotations

import errno
import os

_CHUNK = 8 << 20


def _copy_range(src_fd, dst_fd, start, end):
    """Copy bytes [start, end) of src_fd to the same offsets of dst_fd."""
    pos = start
    while pos < end:
        want = min(_CHUNK, end - pos)
        try:
            done = os.copy_file_range(src_fd, dst_fd, want, pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                raise
            done = None
        if done is None:
            data = os.pread(src_fd, want, pos)
            if not data:
                return
            os.pwrite(dst_fd, data, pos)
            done = len(data)
        if done == 0:  # source shrank under us
            return
        pos += done


def _extents(fd, size):
    """Yield (start, end) of the data extents of fd; the whole file if SEEK_DATA is not supported."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole up to EOF
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def sparse_copy(src, dst):
    """Copy ``src`` to ``dst`` (replaced atomically), keeping holes. Returns bytes of data copied."""
    tmp = dst + ".part"
    copied = 0
    src_fd = os.open(src, os.O_RDONLY)
    try:
        size = os.fstat(src_fd).st_size
        dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for start, end in _extents(src_fd, size):
                _copy_range(src_fd, dst_fd, start, end)
                copied += end - start
            os.ftruncate(dst_fd, size)
        finally:
            os.close(dst_fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        os.close(src_fd)
    os.replace(tmp, dst)
    return copied
