# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One guest connection <-> one TCP connection to 127.0.0.1:PORT (qemu ``guestfwd=...-cmd:``).

qemu's user network runs this once per connection the guest opens to a forwarded address, with
the guest's stream on stdin/stdout. The only host address it ever connects to is 127.0.0.1.
"""

import os
import select
import socket
import sys


def main():
    port = int(sys.argv[1])
    sock = socket.create_connection(("127.0.0.1", port))
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    ends = [fd_in, sock]
    while ends:
        for r in select.select(ends, [], [])[0]:
            if r is sock:
                data = sock.recv(65536)
                if not data:
                    return
                os.write(fd_out, data)
            else:
                data = os.read(fd_in, 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    ends.remove(fd_in)
                    continue
                sock.sendall(data)


if __name__ == "__main__":
    main()
