# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command lines of the FAKE CLUSTERPRO: ``python -m tests.fakes.clusterpro.cli <command> <args>``
(the executables in ``bin/`` call this). Parsing is written here from the documented synopses,
independently of the collection's command table, so a wrong command line in the collection fails
against the fake instead of agreeing with itself."""

import os
import sys

from tests.fakes.clusterpro.state import ENV_NODE
from tests.fakes.clusterpro.state import ENV_STATE
from tests.fakes.clusterpro.state import FakeError
from tests.fakes.clusterpro.state import locked

RULE = " " + "=" * 69


def _local():
    node = os.environ.get(ENV_NODE)
    if not node:
        raise FakeError("FAKE CLUSTERPRO: %s is not set (which server is this?)." % ENV_NODE, rc=90)
    return node


def _take(args, flag):
    """Remove ``flag VALUE`` from args; return VALUE or None."""
    if flag in args:
        i = args.index(flag)
        if i + 1 >= len(args):
            raise FakeError("Invalid option. (%s needs a value)" % flag)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return None


def _flag(args, *flags):
    found = False
    for flag in flags:
        while flag in args:
            args.remove(flag)
            found = True
    return found


def _done(args):
    if args:
        raise FakeError("Invalid option. (%s)" % " ".join(args))


def _name_col(name, width=16):
    name = name[:width]
    return name if len(name) >= width else (name + " ").ljust(width, ".")


def render_clpstat(cluster):
    topo = cluster.topo
    local = os.environ.get(ENV_NODE)
    lines = [" ========================  CLUSTER STATUS  ===========================",
             "  Cluster : %s" % topo["cluster"], "  <server>"]
    for server in topo["servers"]:
        status = "Online" if cluster.running(server) else "Offline"
        lines.append("   %s%s: %s" % ("*" if server == local else " ", _name_col(server), status))
        hb = "Normal" if cluster.running(server) and cluster.running(local) else "Offline"
        lines.append("      %s: %-16s Kernel Mode LAN Heartbeat" % ("lankhb1".ljust(15), hb))
    lines.append("  <group>")
    for group, names in topo["groups"].items():
        record = cluster.state["groups"][group]
        lines.append("    %s: %s" % (_name_col(group), "Online" if record["online"] else "Offline"))
        lines.append("      %s: %s" % ("current".ljust(15), record["current"] or "None"))
        for name in names:
            lines.append("      %s: %s" % (name[:15].ljust(15), "Online" if name in record["online"] else "Offline"))
    lines.append("  <monitor>")
    for _mtype, name in topo["monitors"]:
        lines.append("    %s: %s" % (name[:16].ljust(17), "Normal"))
    lines.append(RULE)
    return "\n".join(lines) + "\n"


def render_mdstat(cluster, md):
    topo = cluster.topo
    mirror = cluster.state["mirrors"][md]
    colors = [cluster.color(md, s) for s in topo["servers"]]
    if not mirror["constructed"]:
        status = "No Construction"
    elif all(c == "GREEN" for c in colors):
        status = "Normal"
    elif "YELLOW" in colors:
        status = "Recovering"
    else:
        status = "Abnormal"

    def row(label, values):
        return "  " + label.ljust(21) + "".join(str(v).ljust(21) for v in values).rstrip()

    lines = [" Mirror Status: %s" % status, "", row(md, topo["servers"]), " " + "-" * 62, row("Mirror Color", colors),
             row("Lastupdate Time", ["--"] * len(colors)), row("Break Time", ["--"] * len(colors)),
             row("Disk Error", ["OK"] * len(colors)),
             row("Difference Percent", ["%d%%" % (100 if c in ("RED", "YELLOW") else 0) for c in colors])]
    return "\n".join(lines) + "\n"


def render_mdlist(cluster):
    lines = []
    for md in cluster.topo["mirrors"]:
        lines += ["  <%s>" % md, "    Mirror Disk Resource: %s" % md]
    return "\n".join(lines) + "\n"


def clpstat(cluster, args):
    _flag(args, "--long")
    _done(args)
    if not cluster.running(_local()):
        raise FakeError("Could not connect to the server. Check if the cluster service is active.", rc=9)
    return render_clpstat(cluster)


def clpgrp(cluster, args):
    host = _take(args, "-h")
    for op in ("-s", "-t", "-n"):
        group = _take(args, op)
        if group is not None:
            break
    else:
        raise FakeError("Invalid option. (clpgrp: use -s, -t or -n <group>; -m and others are not in this FAKE)")
    _done(args)
    if op == "-n":
        record = cluster.state["groups"].get(group)
        if record is None:
            raise FakeError("Invalid group name. (%s)" % group, rc=3)
        return "%s\n" % (record["current"] or "None")
    server = host or _local()
    (cluster.group_start if op == "-s" else cluster.group_stop)(group, server)
    return "Command succeeded.\n"


def clprsc(cluster, args):
    host = _take(args, "-h")
    force = _flag(args, "-f")
    for op in ("-s", "-t"):
        resource = _take(args, op)
        if resource is not None:
            break
    else:
        raise FakeError("Invalid option. (clprsc: use -s or -t <resource>)")
    _done(args)
    server = host or _local()
    if op == "-s":
        if force:
            raise FakeError("Invalid option. (-f is for -t)")
        cluster.resource_start(resource, server)
    else:
        cluster.resource_stop(resource, server, force=force)
    return "Command succeeded.\n"


def clpcl(cluster, args):
    host = _take(args, "-h")
    every = _flag(args, "-a")
    start, stop = _flag(args, "-s"), _flag(args, "-t")
    _done(args)
    if start == stop:
        raise FakeError("Invalid option. (clpcl: use -s or -t; --suspend/--resume are not in this FAKE)")
    servers = list(cluster.topo["servers"]) if every else [host or _local()]
    for server in servers:
        if start:
            if every and not cluster.state["servers"][server]["up"]:
                continue
            if not (every and cluster.running(server)):
                cluster.service_start(server)
        elif cluster.running(server) or not every:
            cluster.service_stop(server)
    return "Command succeeded.\n"


def clpdown(cluster, args):
    host = _take(args, "-h")
    reboot = _flag(args, "-r")
    _done(args)
    server = host or _local()
    cluster.shutdown(server)
    if reboot:
        cluster.boot(server)
    return "Command succeeded.\n"


def clpstdn(cluster, args):
    reboot = _flag(args, "-r")
    _done(args)
    for server in cluster.topo["servers"]:
        if cluster.state["servers"][server]["up"]:
            cluster.shutdown(server)
            if reboot:
                cluster.boot(server)
    return "Command succeeded.\n"


def clpmdstat(cluster, args):
    if _flag(args, "-l", "--list"):
        _done(args)
        return render_mdlist(cluster)
    md = _take(args, "-m") or _take(args, "--mirror")
    _done(args)
    if md is None:
        raise FakeError("Invalid option. (clpmdstat: use -l or -m <md>)")
    if md not in cluster.state["mirrors"]:
        raise FakeError("Invalid mirror disk resource name. (%s)" % md, rc=3)
    return render_mdstat(cluster, md)


def clpmdctrl(cluster, args):
    edition = cluster.state["edition"]
    md = _take(args, "-r") or _take(args, "--recovery")
    if md is not None:
        _done(args)
        cluster.recover(md)
        return "Command succeeded.\n"
    if edition == "windows":
        md = _take(args, "--force")
        _done(args)
        if md is None:
            raise FakeError("Invalid option. (clpmdctrl: -r <md> or --force <md> in this FAKE)")
        cluster.force_recover(md, _local())
        return "Command succeeded.\n"
    if "-f" in args or "--force" in args:
        _flag(args, "-f", "--force")
        if len(args) == 2:
            source, md = args
        elif len(args) == 1:
            source, md = _local(), args[0]
        else:
            raise FakeError("Invalid option. (clpmdctrl -f [server] <md>)")
        cluster.force_recover(md, source)
        return "Command succeeded.\n"
    raise FakeError("Invalid option. (clpmdctrl: -r <md> or -f [server] <md> in this FAKE)")


def clpcfctrl(cluster, args):
    pull, push = _flag(args, "--pull"), _flag(args, "--push")
    directory = _take(args, "-x")
    linux, windows = _flag(args, "-l"), _flag(args, "-w")
    _flag(args, "--force", "--nocheck")
    _done(args)
    if pull == push:
        raise FakeError("Invalid option. (clpcfctrl: --pull or --push)")
    if cluster.major == "4" and linux == windows:
        raise FakeError("Invalid option. (clpcfctrl %s on X 4.x needs exactly one of -l, -w)" % ("--pull" if pull else "--push"))
    if cluster.major != "4" and (linux or windows):
        raise FakeError("Invalid option. (-l/-w are not options of clpcfctrl in X %s.x in this FAKE)" % cluster.major)
    if not directory or not os.path.isdir(directory):
        raise FakeError("Invalid option. (-x <existing directory>)")
    path = os.path.join(directory, "clp.conf")
    if pull:
        with open(path, "w") as handle:
            handle.write(cluster.state["conf"])
        cluster.log(event="config_pull", directory=directory)
        return "Command succeeded.(code:0)\n"
    if not os.path.exists(path):
        raise FakeError("The configuration file does not exist. (%s)" % path, rc=11)
    with open(path) as handle:
        cluster.push(handle.read())
    return "The upload is completed successfully.(cfmgr:0)\nCommand succeeded.(code:0)\n"


COMMANDS = dict(clpstat=clpstat, clpgrp=clpgrp, clprsc=clprsc, clpcl=clpcl, clpdown=clpdown, clpstdn=clpstdn,
                clpmdstat=clpmdstat, clpmdctrl=clpmdctrl, clpcfctrl=clpcfctrl)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    name = os.path.basename(argv.pop(0)) if argv else ""
    name = name[:-4] if name.endswith(".exe") else name
    handler = COMMANDS.get(name)
    if handler is None:
        sys.stderr.write("FAKE CLUSTERPRO: unknown command %r\n" % name)
        return 127
    path = os.environ.get(ENV_STATE)
    if not path or not os.path.exists(path):
        sys.stderr.write("FAKE CLUSTERPRO: %s does not name a state file\n" % ENV_STATE)
        return 90
    try:
        with locked(path) as cluster:
            cluster.tick()
            line = [name] + argv
            out = handler(cluster, argv)
            cluster.log(event="command", argv=line)
    except FakeError as e:
        # the state is not written back: a rejected command changes nothing
        sys.stderr.write(e.msg + "\n")
        return e.rc
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
