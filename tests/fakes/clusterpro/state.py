# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""State machine of the FAKE CLUSTERPRO (see README.md beside this file).

This is a FAKE: a test double of EXPRESSCLUSTER X / CLUSTERPRO X written from the documented
command lines and outputs, not NEC software. All of its state is one JSON file (path in
``FAKE_CLUSTERPRO_STATE``), locked with flock while a command runs. The topology (servers,
groups, resources, dependencies, mirror disk resources and their ``fullcopy`` setting) comes from
the clp.conf XML held in the state, as on a real cluster; runtime state (servers up, cluster
service, what is online where, mirror copies and their staleness) is kept beside it.

Every mirror event (recovery, initial construction, forced recovery) is appended to
``state["log"]`` so tests can read which kind of copy happened.
"""

import contextlib
import fcntl
import json
import os
import xml.etree.ElementTree as ET

ENV_STATE = "FAKE_CLUSTERPRO_STATE"
ENV_NODE = "FAKE_CLUSTERPRO_NODE"


class FakeError(Exception):
    """A command the fake rejects: message on stderr, exit status ``rc``."""

    def __init__(self, msg, rc=1):
        super().__init__(msg)
        self.msg = msg
        self.rc = rc


# -- clp.conf ---------------------------------------------------------------------------------


def build_conf(cluster="cluster", servers=("server1", "server2"), edition="linux", groups=None, mirrors=None,
               depends=None, monitors=None):
    """A clp.conf of the documented shape (<root><all><serveros>, <cluster><name>, <server name>,
    <group name><resource name="type@name">, <resource><md name><parameters>..., <monitor>).

    ``groups``: {group: [(type, name), ...]}; ``mirrors``: {md: dict(dp, cp, mount, fs, fullcopy)};
    ``depends``: {resource: [names]}; ``monitors``: [(type, name, target)]."""
    groups = groups or {"failover": [("fip", "fip1"), ("md", "md1"), ("exec", "exec1")]}
    mirrors = mirrors or {"md1": {}}
    depends = depends if depends is not None else {"exec1": ["md1"]}
    monitors = monitors if monitors is not None else [("mdw", "mdw1", "md1"), ("mdnw", "mdnw1", "md1"),
                                                      ("userw", "userw", None)]
    root = ET.Element("root")
    allel = ET.SubElement(root, "all")
    ET.SubElement(allel, "charset").text = "ASCII"
    ET.SubElement(allel, "serveros").text = edition
    ET.SubElement(ET.SubElement(root, "cluster"), "name").text = cluster
    for index, name in enumerate(servers):
        server = ET.SubElement(root, "server", {"name": name})
        ET.SubElement(server, "priority").text = str(index)
    for gname, members in groups.items():
        group = ET.SubElement(root, "group", {"name": gname})
        for rtype, rname in members:
            ET.SubElement(group, "resource", {"name": "%s@%s" % (rtype, rname)})
    resources = ET.SubElement(root, "resource")
    for gname, members in groups.items():
        for rtype, rname in members:
            element = ET.SubElement(resources, rtype, {"name": rname})
            if rtype == "md":
                p = dict(dp="/dev/xvdb2", cp="/dev/xvdb1", mount="/mnt/md1", fs="ext4", fullcopy="1")
                p.update(mirrors.get(rname, {}))
                params = ET.SubElement(element, "parameters")
                netdev = ET.SubElement(params, "netdev", {"id": "0"})
                ET.SubElement(netdev, "priority").text = "0"
                ET.SubElement(netdev, "device").text = "400"
                ET.SubElement(netdev, "mdcname").text = "mdc1"
                ET.SubElement(params, "nmppath").text = "/dev/NMP%d" % (1 + list(mirrors).index(rname))
                ET.SubElement(ET.SubElement(params, "mount"), "point").text = p["mount"]
                diskdev = ET.SubElement(params, "diskdev")
                ET.SubElement(diskdev, "dppath").text = p["dp"]
                ET.SubElement(diskdev, "cppath").text = p["cp"]
                ET.SubElement(params, "fs").text = p["fs"]
                ET.SubElement(params, "fullcopy").text = p["fullcopy"]
                ET.SubElement(params, "mkfs").text = "0"
            for dep in depends.get(rname, []):
                ET.SubElement(element, "depend", {"name": dep})
    mon = ET.SubElement(root, "monitor")
    for mtype, mname, target in monitors:
        element = ET.SubElement(mon, mtype, {"name": mname})
        if target:
            ET.SubElement(ET.SubElement(element, "parameters"), "object").text = target
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")


GROUP_START = {"0": "manual", "1": "automatic"}  # group/start; no element = automatic


def _priority(server):
    try:
        return int(server.findtext("priority"))
    except (TypeError, ValueError):
        return 1 << 30


def read_topology(text):
    """clp.conf -> servers (in order), groups {name: [resources]}, types, depends, mirrors, and per
    group its start attribute (raw ``group/start``, "1" when absent) and startup server order
    (``group/policy@server/order``, else every server by ``server/priority``)."""
    root = ET.fromstring(text)
    if root.tag != "root":
        raise FakeError("clp.conf: the root element must be <root>.", rc=11)
    servers = [s.get("name") for s in root.findall("server")]
    by_priority = [s.get("name") for s in sorted(root.findall("server"), key=_priority)]
    groups, types, group_start, start_order = {}, {}, {}, {}
    for group in root.findall("group"):
        names = []
        for entry in group.findall("resource"):
            rtype, _sep, rname = (entry.get("name") or "").partition("@")
            names.append(rname)
            types[rname] = rtype
        groups[group.get("name")] = names
        start = group.find("start")
        group_start[group.get("name")] = "1" if start is None else (start.text or "").strip()
        policy = sorted(((int(p.findtext("order") or 0), p.get("name")) for p in group.findall("policy")
                         if (p.findtext("order") or "0").strip().isdigit()))
        start_order[group.get("name")] = [name for _order, name in policy if name in servers] or by_priority
    depends, mirrors = {}, {}
    for element in root.findall("resource/*"):
        depends[element.get("name")] = [d.get("name") for d in element.findall("depend")]
        if element.tag == "md":
            mirrors[element.get("name")] = dict(fullcopy=(element.findtext("parameters/fullcopy") or "1").strip())
    monitors = [(m.tag, m.get("name")) for m in root.findall("monitor/*")]
    return dict(cluster=root.findtext("cluster/name"), servers=servers, groups=groups, types=types, depends=depends,
                mirrors=mirrors, monitors=monitors, group_start=group_start, start_order=start_order)


# -- the state file ----------------------------------------------------------------------------


def new_state(edition="linux", version="4.3.2", servers=("server1", "server2"), conf=None, recovery_steps=0):
    """A running two-node cluster: both servers up, service started, groups offline, every
    mirror constructed and GREEN, each server's disk ``disk-<server>-<md>`` with content gen-0."""
    conf = conf or build_conf(servers=servers, edition=edition)
    topo = read_topology(conf)
    state = dict(edition=edition, version=version, conf=conf, recovery_steps=recovery_steps, auto_recovery=True,
                 servers=dict((s, dict(up=True, service=True)) for s in topo["servers"]),
                 groups=dict((g, dict(current=None, online=[])) for g in topo["groups"]),
                 disks=dict((s, {}) for s in topo["servers"]), mirrors={}, log=[], generation=0)
    for md in topo["mirrors"]:
        for s in topo["servers"]:
            state["disks"][s][md] = dict(id="disk-%s-%s" % (s, md), content="gen-0")
        state["mirrors"][md] = dict(constructed=True, stale=dict((s, False) for s in topo["servers"]),
                                    disk_ids=dict((s, "disk-%s-%s" % (s, md)) for s in topo["servers"]),
                                    bitmap_valid=dict((s, True) for s in topo["servers"]),
                                    recovering={})
    return state


def write_state(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(state, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_state(path):
    with open(path) as handle:
        return json.load(handle)


@contextlib.contextmanager
def locked(path):
    """The state of ``path`` under an exclusive lock; written back when the block ends normally."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cluster = Cluster(read_state(path))
            yield cluster
            write_state(path, cluster.state)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Cluster:
    """Operations on one loaded state. Every mutating method ends with :meth:`reconcile`."""

    def __init__(self, state):
        self.state = state

    # -- reading
    @property
    def topo(self):
        return read_topology(self.state["conf"])

    @property
    def major(self):
        return str(self.state["version"]).split(".", maxsplit=1)[0]

    def running(self, server):
        s = self.state["servers"].get(server)
        return bool(s and s["up"] and s["service"])

    def check_server(self, server):
        if server not in self.state["servers"]:
            raise FakeError("Invalid server name. (%s)" % server, rc=3)
        return server

    def color(self, md, server):
        mirror = self.state["mirrors"].get(md)
        if mirror is None or not self.running(server):
            return "GRAY"
        if not mirror["constructed"]:
            return "GRAY"
        if mirror["recovering"].get(server):
            return "YELLOW"
        if mirror["stale"].get(server):
            return "RED"
        return "GREEN"

    def group_of(self, resource):
        for group, names in self.topo["groups"].items():
            if resource in names:
                return group
        raise FakeError("Invalid resource name. (%s)" % resource, rc=3)

    def log(self, **event):
        self.state["log"].append(event)

    # -- time passes: one tick per command
    def tick(self):
        for md, mirror in self.state["mirrors"].items():
            for server, left in list(mirror["recovering"].items()):
                if left > 1:
                    mirror["recovering"][server] = left - 1
                else:
                    self._finish_recovery(md, server)
        self.reconcile()

    def _finish_recovery(self, md, target):
        mirror = self.state["mirrors"][md]
        source = mirror.get("source", {}).get(target)
        mirror["recovering"].pop(target, None)
        if source is None or not self.running(source) or not self.running(target):
            return
        self.state["disks"][target][md]["content"] = self.state["disks"][source][md]["content"]
        mirror["stale"][target] = False
        mirror["bitmap_valid"][target] = True
        mirror["disk_ids"][target] = self.state["disks"][target][md]["id"]
        self.log(event="mirror_recovery_done", md=md, source=source, target=target)

    def _start_recovery(self, md, source, target, mode, forced=False):
        mirror = self.state["mirrors"][md]
        mirror.setdefault("source", {})[target] = source
        self.log(event="mirror_recovery", md=md, source=source, target=target, mode=mode, forced=forced)
        steps = int(self.state.get("recovery_steps") or 0)
        if steps > 0:
            mirror["recovering"][target] = steps
        else:
            self._finish_recovery(md, target)

    def reconcile(self):
        """Apply what the cluster does by itself: a copy whose disk changed under it is stale
        (the bitmap is on the old disk); initial construction once both servers run; automatic
        mirror recovery of a stale copy from a GREEN one."""
        topo = self.topo
        for md in topo["mirrors"]:
            mirror = self.state["mirrors"].get(md)
            if mirror is None:
                continue
            for server in topo["servers"]:
                disk = self.state["disks"][server].get(md)
                if self.running(server) and mirror["constructed"] and disk and disk["id"] != mirror["disk_ids"].get(server):
                    mirror["stale"][server] = True
                    mirror["bitmap_valid"][server] = False
                    mirror["disk_ids"][server] = disk["id"]
            if not mirror["constructed"]:
                if all(self.running(s) for s in topo["servers"]):
                    self._construct(md, mirror, topo)
                continue
            if not self.state.get("auto_recovery", True):
                continue
            sources = [s for s in topo["servers"] if self.running(s) and not mirror["stale"][s]
                       and not mirror["recovering"].get(s)]
            for target in topo["servers"]:
                if self.running(target) and mirror["stale"][target] and not mirror["recovering"].get(target) and sources:
                    mode = "differential" if mirror["bitmap_valid"][target] else "full"
                    self._start_recovery(md, sources[0], target, mode)
        self._auto_start(topo)

    # -- automatic startup of groups (group/start = 1) when the cluster starts
    def _cluster_stopped(self):
        return not any(self.running(s) for s in self.state["servers"])

    def _cluster_starts(self):
        """The first cluster service starts after all were stopped: every offline group whose start
        attribute is automatic is due to start (``state["autostart"]``)."""
        topo = self.topo
        due = [g for g in topo["groups"] if topo["group_start"].get(g) == "1" and not self.state["groups"][g]["online"]]
        self.state["autostart"] = due
        if due:
            self.log(event="cluster_start", autostart=due)

    def _drop_autostart(self, group):
        if group in self.state.get("autostart", []):
            self.state["autostart"].remove(group)

    def _auto_start(self, topo):
        """A due group starts on the first running server of its startup order once every mirror disk
        of the group is GREEN there (e.g. after initial construction); until then it stays due."""
        for group in list(self.state.get("autostart", [])):
            if group not in topo["groups"] or topo["group_start"].get(group) != "1":
                self._drop_autostart(group)
                continue
            record = self.state["groups"][group]
            if record["online"]:
                self._drop_autostart(group)
                continue
            server = next((s for s in topo["start_order"][group] if self.running(s)), None)
            if server is None:
                continue
            mirrors = [n for n in topo["groups"][group] if topo["types"].get(n) == "md"]
            if any(self.color(md, server) != "GREEN" for md in mirrors):
                continue
            for name in self._dependency_order(topo["groups"][group], topo):
                record["online"].append(name)
            record["current"] = server
            self._drop_autostart(group)
            self.log(event="group_start", group=group, server=server, reason="automatic startup")

    def _construct(self, md, mirror, topo):
        servers = topo["servers"]
        for s in servers:
            mirror["disk_ids"][s] = self.state["disks"][s][md]["id"]
            mirror["stale"][s] = False
            mirror["bitmap_valid"][s] = True
        mirror["constructed"] = True
        contents = dict((s, self.state["disks"][s][md]["content"]) for s in servers)
        if topo["mirrors"][md]["fullcopy"] == "0":
            self.log(event="initial_construction", md=md, mode="skipped",
                     copies_identical=len(set(contents.values())) == 1)
            return
        source = servers[0]
        for target in servers[1:]:
            self.log(event="initial_construction", md=md, mode="full", source=source, target=target)
            self.state["disks"][target][md]["content"] = contents[source]

    # -- what tests do to the world (not CLUSTERPRO commands)
    def write(self, md):
        """The application writes to mirror ``md`` where it is online: the active copy changes,
        a connected peer follows, a disconnected one becomes stale (the bitmap records it)."""
        active = self.active_server(md)
        if active is None:
            raise FakeError("md %s is not active anywhere; nothing can write to it." % md)
        self.state["generation"] += 1
        content = "gen-%d" % self.state["generation"]
        self.state["disks"][active][md]["content"] = content
        mirror = self.state["mirrors"][md]
        for server in self.topo["servers"]:
            if server == active:
                continue
            if self.running(server) and not mirror["stale"][server] and not mirror["recovering"].get(server):
                self.state["disks"][server][md]["content"] = content
            else:
                mirror["stale"][server] = True
        self.reconcile()
        return content

    def replace_disk(self, server, md, disk_id, content):
        """A new EBS volume under ``server``'s copy of ``md`` (e.g. created from a snapshot)."""
        self.state["disks"][server][md] = dict(id=disk_id, content=content)
        self.reconcile()

    def boot(self, server):
        """The instance starts; the cluster service starts with it."""
        self.check_server(server)
        cluster_start = self._cluster_stopped()
        self.state["servers"][server] = dict(up=True, service=True)
        self.log(event="boot", server=server)
        if cluster_start:
            self._cluster_starts()
        self.reconcile()

    def active_server(self, md):
        group = self.group_of(md)
        record = self.state["groups"][group]
        return record["current"] if md in record["online"] else None

    # -- CLUSTERPRO operations
    def group_start(self, group, server):
        topo = self.topo
        if group not in topo["groups"]:
            raise FakeError("Invalid group name. (%s)" % group, rc=3)
        self.check_server(server)
        record = self.state["groups"][group]
        if record["current"] and record["online"]:
            if record["current"] == server:
                raise FakeError("The group has already been started. (%s)" % group, rc=5)
            raise FakeError("The group has already been started on server %s. (%s)" % (record["current"], group), rc=5)
        if not self.running(server):
            raise FakeError("Server %s is not running the cluster service; the group cannot be started there." % server,
                            rc=7)
        for name in topo["groups"][group]:
            if topo["types"].get(name) == "md":
                self._require_activation(name, server)
        for name in self._dependency_order(topo["groups"][group], topo):
            if name not in record["online"]:
                record["online"].append(name)
        record["current"] = server
        self._drop_autostart(group)
        self.log(event="group_start", group=group, server=server)

    def group_stop(self, group, server):
        if group not in self.topo["groups"]:
            raise FakeError("Invalid group name. (%s)" % group, rc=3)
        self.check_server(server)
        record = self.state["groups"][group]
        if record["current"] != server or not record["online"]:
            raise FakeError("The group is not started on server %s. (%s)" % (server, group), rc=5)
        record["online"] = []
        record["current"] = None
        self._drop_autostart(group)
        self.log(event="group_stop", group=group, server=server)

    def resource_start(self, resource, server):
        topo = self.topo
        group = self.group_of(resource)
        self.check_server(server)
        record = self.state["groups"][group]
        if record["current"] and record["current"] != server and record["online"]:
            raise FakeError("Group %s is active on server %s; resource %s cannot be started on %s."
                            % (group, record["current"], resource, server), rc=5)
        if resource in record["online"]:
            raise FakeError("The resource has already been started. (%s)" % resource, rc=5)
        if not self.running(server):
            raise FakeError("Server %s is not running the cluster service." % server, rc=7)
        missing = [d for d in topo["depends"].get(resource, []) if d not in record["online"]]
        if missing:
            raise FakeError("Resource %s depends on %s, which is not started." % (resource, ", ".join(missing)), rc=9)
        if topo["types"].get(resource) == "md":
            self._require_activation(resource, server)
        record["online"].append(resource)
        record["current"] = server
        self._drop_autostart(group)
        self.log(event="resource_start", resource=resource, server=server)

    def resource_stop(self, resource, server, force=False):
        topo = self.topo
        group = self.group_of(resource)
        self.check_server(server)
        record = self.state["groups"][group]
        if record["current"] != server or resource not in record["online"]:
            raise FakeError("The resource is not started on server %s. (%s)" % (server, resource), rc=5)
        dependents = self._dependents(resource, topo, record["online"])
        if dependents and not force:
            raise FakeError("Resources %s depend on %s and are started; stop them first or use -f."
                            % (", ".join(dependents), resource), rc=9)
        for name in dependents + [resource]:
            if name in record["online"]:
                record["online"].remove(name)
        if not record["online"]:
            record["current"] = None
        self.log(event="resource_stop", resource=resource, server=server, stopped=dependents + [resource])

    def service_start(self, server):
        self.check_server(server)
        if not self.state["servers"][server]["up"]:
            raise FakeError("Could not connect to server %s." % server, rc=12)
        if self.state["servers"][server]["service"]:
            raise FakeError("The cluster service has already been started on %s." % server, rc=5)
        cluster_start = self._cluster_stopped()
        self.state["servers"][server]["service"] = True
        self.log(event="service_start", server=server)
        if cluster_start:
            self._cluster_starts()
        self.reconcile()

    def service_stop(self, server):
        self.check_server(server)
        if not self.running(server):
            raise FakeError("The cluster service is not started on %s." % server, rc=5)
        self._stop_groups_on(server)
        self.state["servers"][server]["service"] = False
        self.log(event="service_stop", server=server)
        if self._cluster_stopped():
            self.state["autostart"] = []

    def shutdown(self, server):
        self.check_server(server)
        if not self.state["servers"][server]["up"]:
            raise FakeError("Could not connect to server %s." % server, rc=12)
        self._stop_groups_on(server)
        self.state["servers"][server] = dict(up=False, service=False)
        self.log(event="shutdown", server=server)
        if self._cluster_stopped():
            self.state["autostart"] = []

    def _stop_groups_on(self, server):
        for group, record in self.state["groups"].items():
            if record["current"] == server:
                record["online"], record["current"] = [], None
                self.log(event="group_stop", group=group, server=server, reason="service stop")

    def _require_activation(self, md, server):
        """The real mirror driver refuses to activate a copy that is not the latest (RED), that is
        being recovered, or that is active on the peer."""
        color = self.color(md, server)
        if color != "GREEN":
            raise FakeError("Failed to activate mirror disk %s on %s: the mirror color is %s (the data on this server "
                            "is not the latest)." % (md, server, color), rc=20)

    def recover(self, md):
        mirror = self._mirror(md)
        topo = self.topo
        sources = [s for s in topo["servers"] if self.color(md, s) == "GREEN"]
        targets = [s for s in topo["servers"] if self.color(md, s) == "RED"]
        if not targets:
            raise FakeError("Mirror recovery of %s is not needed (no server needs it)." % md, rc=5)
        if not sources:
            raise FakeError("Mirror recovery of %s is impossible: no server has the latest data; use forced "
                            "recovery." % md, rc=20)
        for target in targets:
            self._start_recovery(md, sources[0], target, "differential" if mirror["bitmap_valid"][target] else "full")

    def force_recover(self, md, source):
        mirror = self._mirror(md)
        self.check_server(source)
        color = self.color(md, source)
        others = [s for s in self.topo["servers"] if s != source]
        if color in ("GRAY", "YELLOW"):
            raise FakeError("Forced mirror recovery of %s from %s is impossible: its color is %s." % (md, source, color),
                            rc=20)
        if color == "RED" and any(self.color(md, s) == "GREEN" for s in others):
            raise FakeError("Forced mirror recovery of %s from %s refused: %s does not have the latest data (another "
                            "server is GREEN)." % (md, source, source), rc=20)
        mirror["stale"][source] = False
        self.log(event="forced_recovery_source", md=md, source=source)
        for target in others:
            if self.running(target):
                mirror["stale"][target] = True
                mirror["bitmap_valid"][target] = False
                self._start_recovery(md, source, target, "full", forced=True)

    def _mirror(self, md):
        mirror = self.state["mirrors"].get(md)
        if mirror is None:
            raise FakeError("Invalid mirror disk resource name. (%s)" % md, rc=3)
        return mirror

    def push(self, text):
        try:
            new = read_topology(text)
        except ET.ParseError as e:
            raise FakeError("clp.conf is not valid XML: %s" % e, rc=11)
        old = self.topo
        bad = dict((g, v) for g, v in new["group_start"].items() if v not in GROUP_START)
        if bad:
            raise FakeError("clp.conf: invalid group start attribute %s (0 or 1)." % bad, rc=11)
        if new["servers"] != old["servers"]:
            raise FakeError("The servers of the configuration differ from the cluster's; this fake does not add or "
                            "remove servers.", rc=11)
        added = [m for m in new["mirrors"] if m not in old["mirrors"]]
        removed = [m for m in old["mirrors"] if m not in new["mirrors"]]
        running = [s for s in old["servers"] if self.running(s)]
        if (added or removed) and running:
            raise FakeError("The configuration adds or removes mirror disk resources (%s); stop the cluster first "
                            "(running on %s)." % (", ".join(added + removed), ", ".join(running)), rc=13)
        self.state["conf"] = text
        for md in removed:
            self.state["mirrors"].pop(md, None)
        for md in added:
            for s in new["servers"]:
                self.state["disks"][s].setdefault(md, dict(id="disk-%s-%s" % (s, md), content="empty"))
            self.state["mirrors"][md] = dict(constructed=False, stale=dict((s, False) for s in new["servers"]),
                                             disk_ids={}, bitmap_valid=dict((s, False) for s in new["servers"]),
                                             recovering={})
        for group in new["groups"]:
            self.state["groups"].setdefault(group, dict(current=None, online=[]))
        for group, record in self.state["groups"].items():
            record["online"] = [r for r in record["online"] if r in new["groups"].get(group, [])]
        self.state["autostart"] = [g for g in self.state.get("autostart", []) if new["group_start"].get(g) == "1"]
        self.log(event="config_push", added=added, removed=removed,
                 group_start=dict((g, GROUP_START[v]) for g, v in new["group_start"].items()))
        self.reconcile()

    @staticmethod
    def _dependency_order(names, topo):
        done = []

        def visit(name, seen):
            if name in done or name in seen:
                return
            for dep in topo["depends"].get(name, []):
                if dep in names:
                    visit(dep, seen | {name})
            done.append(name)

        for name in names:
            visit(name, frozenset())
        return done

    @staticmethod
    def _dependents(resource, topo, online):
        out = []
        changed = True
        targets = {resource}
        while changed:
            changed = False
            for name in online:
                if name not in out and name not in targets and targets & set(topo["depends"].get(name, [])):
                    out.append(name)
                    targets.add(name)
                    changed = True
        return out
