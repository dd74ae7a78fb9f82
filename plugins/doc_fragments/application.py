# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a module reaches the application's server (the quiescers at backup, app_recover at restore); its argument
spec is ``plugins/module_utils/_app_quiesce.py``'s ``CONNECTION_ARGS``, in matching form."""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  application_login_user:
    description:
      - User for V(mariadb) and V(mysql), role for V(postgresql). Unset, the client's option files decide (for
        C(psql) E(PGUSER), else the operating system user, with peer or socket authentication over the unix socket).
    type: str
  application_login_password:
    description:
      - Password for that user, handed to the client through its environment (C(MYSQL_PWD), C(PGPASSWORD)), never
        on its command line, never returned. Prefer an option file (O(application_config_file)) or socket
        authentication.
    type: str
  application_login_host:
    description: Server host (TCP).
    type: str
  application_login_port:
    description: Server port (TCP, or for V(postgresql) the port of its socket).
    type: int
  application_login_unix_socket:
    description:
      - Server socket. For V(postgresql) the socket directory, or the socket file C(.s.PGSQL.<port>) (its port is
        used).
    type: path
  application_config_file:
    description:
      - Client option file (C(--defaults-file)) for V(mariadb) and V(mysql), for example one with a C([client])
        section holding the credentials; for V(postgresql) a password file in C(~/.pgpass) format (E(PGPASSFILE)).
    type: path
  application_client:
    description:
      - Path of the client program. Default C(mariadb), else C(mysql) (C(psql) for V(postgresql)), from E(PATH).
        Where the module runs the application's own check program, it is looked for beside it.
    type: path
"""
