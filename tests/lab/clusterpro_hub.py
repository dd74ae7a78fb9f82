# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The FAKE CLUSTERPRO in the lab: one cluster, its commands run in the guests, its mirror carried by DRBD.

CLUSTERPRO cannot run here, so the lab uses the FAKE CLUSTERPRO (``tests/fakes/clusterpro``, not NEC
software) for the control plane and real parts for everything else:

* **Commands.** Each guest gets the fake's command names (``clpstat``, ``clpgrp``, ... in
  ``/usr/local/sbin``) as one relay script, marked FAKE. It sends its argv, the guest's node name and, for
  ``clpcfctrl -x DIR``, the files of ``DIR`` to this hub (the guest's ``10.0.2.100:8091``, a guestfwd to
  ``127.0.0.1``); the hub runs the fake's command line on the ONE state file of the cluster and answers
  with stdout, stderr, exit status and the files of ``DIR`` afterwards.
* **The mirror's data.** What the fake's state says, the guests do for real, in DRBD 8.4 (resource
  ``r0`` on each server's EBS volume; its internal metadata stands for the cluster partition): the
  mirror disk resource active on a server is DRBD Primary there with the filesystem mounted at the
  resource's mount point; a server whose cluster service is stopped has DRBD down; ``clpdown`` stops
  DRBD and powers the guest off (the EC2 endpoint then reports the instance ``stopped``); initial
  mirror construction is ``create-md`` on both disks, then either ``new-current-uuid --clear-bitmap``
  (construction without copy, ``fullcopy=0``) or a full DRBD sync (``fullcopy=1``). Mirror recovery
  after a server returns is DRBD's own resync of its bitmap. After each command the hub makes the
  guests match the fake's new state before it answers, so a command returns when its effect is real.
* **The world between.** A bridge thread does what machines do between EC2 and the cluster: when EC2
  starts a stopped server's instance and the guest is up, DRBD is brought up there and resyncs, and the
  fake boots that server (its cluster service starts; the fake's log records the recovery it sees); a
  new volume at a server's mirror device is a new disk under that server's copy (labelled with the
  snapshot it was created from, so the fake's ``copies_identical`` is about real snapshots).

What the data plane measured (DRBD's own counters) is kept in :attr:`ClusterHub.measured`; anything
the data plane cannot carry (a forced recovery, a recovery it did not do) goes to :attr:`ClusterHub.errors`.
"""

from __future__ import annotations

import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tests.fakes.clusterpro import ENV_NODE, ENV_STATE, install, locked, read_state
from tests.fakes.clusterpro.state import read_topology

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST_PORT = 8091
COMMANDS = ("clpstat", "clpgrp", "clprsc", "clpcl", "clpdown", "clpstdn", "clpmdstat", "clpmdctrl", "clpcfctrl")
NODE_FILE = "/etc/stillpoint-fake-clusterpro-node"
POWEROFF_WAIT = 180  # seconds a guest may take to power itself off after clpdown (a loaded TCG guest: 10-40 s)

RELAY = r'''#!/usr/bin/python3
# FAKE CLUSTERPRO command (tests/lab/clusterpro_hub.py): not NEC software. Relays this command to the
# lab's one fake cluster on the host and prints its answer. A bare socket, not urllib: every CLUSTERPRO command
# of a module starts this script in a TCG guest, where urllib's and ssl's imports cost about half a second.
import json, os, socket, sys
args = sys.argv[1:]
xdir = None
if "-x" in args and args.index("-x") + 1 < len(args):
    xdir = os.path.abspath(args[args.index("-x") + 1])
files = {}
if xdir and os.path.isdir(xdir):
    for name in os.listdir(xdir):
        if os.path.isfile(os.path.join(xdir, name)):
            with open(os.path.join(xdir, name)) as f:
                files[name] = f.read()
with open("%(node_file)s") as f:
    node = f.read().strip()
body = json.dumps({"node": node, "argv": [os.path.basename(sys.argv[0])] + args, "xdir": xdir,
                   "xdir_exists": bool(xdir and os.path.isdir(xdir)), "files": files}).encode()
conn = socket.create_connection(("10.0.2.100", %(port)d), timeout=900)
conn.sendall(b"POST /run HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %%d\r\n\r\n" %% len(body) + body)
reply = b"".join(iter(lambda: conn.recv(65536), b""))  # HTTP/1.0: the hub closes after its answer
conn.close()
head, _, payload = reply.partition(b"\r\n\r\n")
if head.split(b" ", 2)[1:2] != [b"200"]:
    sys.exit("FAKE CLUSTERPRO relay: the hub answered %%r" %% head[:200])
answer = json.loads(payload)
for name, text in answer.get("files", {}).items():
    with open(os.path.join(xdir, name), "w") as f:
        f.write(text)
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["rc"])
''' % {"node_file": NODE_FILE, "port": GUEST_PORT}

# The guest's loopback port LOCAL_EC2_PORT relays to the EC2 endpoint (the guest's 10.0.2.100:8080), so that
# a module running in the guest reaches the endpoint at the same URL as the controller: http://127.0.0.1:<port>.
LOOPBACK_RELAY = r'''import socket, sys, threading
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(16)
while True:
    conn, _addr = server.accept()
    up = socket.create_connection(("10.0.2.100", 8080))
    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
    threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
'''


class DataPlaneError(Exception):
    pass


class ClusterHub:
    """The fake cluster of ``servers`` ({CLUSTERPRO server name: LabInstance}, in clp.conf order)."""

    def __init__(self, workdir, servers, md="md1", resource="r0", minor=0, device_name="/dev/sdf", edition="linux",
                 version="4.3.2", app=("exec1", None)):
        self.workdir = str(workdir)
        self.servers = dict(servers)
        self.names = list(self.servers)
        self.md = md
        self.resource = resource
        self.minor = minor
        self.device_name = device_name
        self.path, self.env = install(self.workdir, node=self.names[0], edition=edition, version=version,
                                      servers=tuple(self.names))
        topo = read_topology(read_state(self.path)["conf"])
        self.group = next(g for g, names in topo["groups"].items() if md in names)
        self.mount = self._mount_point(read_state(self.path)["conf"])
        self.lock = threading.RLock()  # one command or data-plane step at a time
        # the exec resource that is the business application, and the shell loop it runs on the mirror's filesystem
        self.app_resource, self.app_command = app
        self.plane = dict((s, {"up": False, "mounted": False, "app": False}) for s in self.names)
        self.off_pid = {}  # server -> qemu pid when the data plane powered it off
        self.stopped_seen = {}  # server -> EC2 reported its instance stopped since CLUSTERPRO shut it down
        self.seen_log = 0
        self.snapshots = {}  # snapshot id -> label of the copy it holds
        self.measured = {"constructions": [], "recoveries": [], "commands": 0, "poweroffs": [], "app": []}
        self.errors = []
        self.httpd = None
        self._stop = threading.Event()
        self._bridge = None

    # ------------------------------------------------------------------ setup

    def _mount_point(self, conf):
        import xml.etree.ElementTree as ET
        element = ET.fromstring(conf).find("resource/md[@name='%s']" % self.md)
        return element.findtext("parameters/mount/point")

    def listen(self):
        """Start the hub's HTTP server on 127.0.0.1; returns its port (forward the guests' GUEST_PORT to it)."""
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                answer = hub.run(json.loads(self.rfile.read(length)))
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="fake-clusterpro-hub", daemon=True).start()
        return self.httpd.server_address[1]

    def install_guest(self, name, ec2_loopback_port):
        """The fake's commands (one relay script, FAKE) and the node name in the guest; the EC2 endpoint on
        the guest's loopback at the controller's port (a relay started as a systemd unit)."""
        vm = self.servers[name].vm
        links = " && ".join("ln -sf clp-fake-relay /usr/local/sbin/%s" % c for c in COMMANDS)
        vm.ssh("cat > /usr/local/sbin/clp-fake-relay && chmod 755 /usr/local/sbin/clp-fake-relay && %s && echo %s > %s"
               % (links, name, NODE_FILE), input=RELAY)
        vm.ssh("cat > /usr/local/lib/stillpoint-ec2-loopback.py && systemd-run --unit=stillpoint-ec2-loopback"
               " --property=Restart=always python3 /usr/local/lib/stillpoint-ec2-loopback.py %d"
               % ec2_loopback_port, input=LOOPBACK_RELAY)

    def bring_up(self, mkfs="mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0"):
        """The mirror as CLUSTERPRO leaves it after installation: DRBD ``r0`` on each server's EBS volume (found by
        volume id), constructed (both disks fresh zeros, so the initial sync is skipped), a filesystem made on it;
        the fake's disks are those volumes. Returns the resource file."""
        names = self.names
        disks = {}
        for s in names:
            inst = self.servers[s]
            found = inst.devices_for_volume(inst.volume_ids[0])
            if len(found) != 1:
                raise DataPlaneError("%s: volume %s is at %s" % (s, inst.volume_ids[0], found))
            disks[s] = found[0]
        if len(set(disks.values())) != 1:
            raise DataPlaneError("the servers' mirror volumes are at different disks %s; DRBD's resource file names one"
                                 % disks)
        res = ("resource %s {\n  device /dev/drbd%d;\n  disk %s;\n  meta-disk internal;\n  net { protocol C; }\n"
               "  disk { size 320M; c-plan-ahead 0; resync-rate 200M; c-min-rate 0; }\n" % (self.resource, self.minor, disks[names[0]]))
        for s in names:
            res += "  on %s { address %s:7789; }\n" % (s, self.servers[s].vm.link_addresses[0])
        res += "}\n"
        r = self.resource
        for s in names:
            self.servers[s].vm.ssh("cat > /etc/drbd.d/%s.res && drbdadm create-md --force %s && drbdadm up %s" % (r, r, r),
                                   input=res)
            self.plane[s]["up"] = True
        self._ssh(names[0], "drbdsetup wait-connect %d --wfc-timeout=120 --degr-wfc-timeout=120 --outdated-wfc-timeout=120"
                  " && drbdadm new-current-uuid --clear-bitmap %s && drbdadm primary %s && %s /dev/drbd%d"
                  " && drbdadm secondary %s" % (self.minor, r, r, mkfs, self.minor, r))
        with locked(self.path) as cluster:
            for s in names:
                cluster.state["disks"][s][self.md]["id"] = self.servers[s].volume_ids[0]
                cluster.state["mirrors"][self.md]["disk_ids"][s] = self.servers[s].volume_ids[0]
        self.seen_log = len(read_state(self.path)["log"])
        return res

    def start_bridge(self, ec2, interval=0.5):
        self._bridge = threading.Thread(target=self._bridge_loop, args=(ec2, interval), name="fake-clusterpro-bridge",
                                        daemon=True)
        self._bridge.start()

    def stop(self):
        self._stop.set()
        if self._bridge is not None:
            self._bridge.join(30)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    # ------------------------------------------------------------------ commands from the guests

    def run(self, request):
        """Run one fake command for a guest; then make the guests match the new state."""
        with self.lock:
            tmp = tempfile.mkdtemp(prefix="fake-clp-x-", dir=self.workdir)
            try:
                argv = list(request["argv"])
                if request.get("xdir") and request.get("xdir_exists"):
                    for name, text in request.get("files", {}).items():
                        with open(os.path.join(tmp, os.path.basename(name)), "w") as f:
                            f.write(text)
                    argv[argv.index("-x") + 1] = tmp
                env = dict(os.environ, **self.env)
                env.update({ENV_STATE: self.path, ENV_NODE: request["node"],
                            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")})
                done = subprocess.run([sys.executable, "-m", "tests.fakes.clusterpro.cli"] + argv, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
                self.measured["commands"] += 1
                answer = {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "files": {}}
                if request.get("xdir") and request.get("xdir_exists"):
                    for name in os.listdir(tmp):
                        with open(os.path.join(tmp, name)) as f:
                            answer["files"][name] = f.read()
                try:
                    self.reconcile()
                except (DataPlaneError, subprocess.SubprocessError, OSError) as e:
                    self.errors.append("after %s: %s" % (" ".join(argv), e))
                    answer["rc"] = answer["rc"] or 99
                    answer["stderr"] += "FAKE CLUSTERPRO lab data plane failed: %s\n" % e
                return answer
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the data plane

    def _ssh(self, server, command, **kw):
        deadline = time.monotonic() + 60
        while True:
            done = self.servers[server].vm.ssh(command, check=False, **kw)
            # a guest just booted may refuse SSH for a moment after its first answer (sshd restarted): the
            # command did not run; try again
            if done.returncode != 255 or "Connection refused" not in (done.stderr or "") or time.monotonic() > deadline:
                break
            time.sleep(2)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-600:]
            raise DataPlaneError("%s: `%s` exited %d: %s" % (server, command, done.returncode, tail))
        return done.stdout

    def proc(self, server):
        """/proc/drbd of ``server``: {"state": "cs:... ro:... ds:...", "ns", "nr", "oos"} (KiB) or None."""
        text = self._ssh(server, "cat /proc/drbd")
        lines = text.splitlines()
        for index, line in enumerate(lines):
            if line.strip().startswith("%d:" % self.minor):
                counters = dict(kv.split(":", 1) for kv in lines[index + 1].split() if ":" in kv)
                return {"state": line.split(None, 1)[1].strip(), "ns": int(counters.get("ns", 0)),
                        "nr": int(counters.get("nr", 0)), "oos": int(counters.get("oos", 0))}
        return None

    def _wait_in_sync(self, server, timeout=300):
        deadline = time.monotonic() + timeout
        while True:
            now = self.proc(server)
            if now and "cs:Connected" in now["state"] and "ds:UpToDate/UpToDate" in now["state"]:
                return now
            if time.monotonic() > deadline:
                raise DataPlaneError("%s: DRBD not in sync after %d s: %s" % (server, timeout, now))
            time.sleep(0.5)

    def _state(self):
        state = read_state(self.path)
        topo = read_topology(state["conf"])
        mirror = state["mirrors"].get(self.md) if self.md in topo["mirrors"] else None
        record = state["groups"].get(self.group, {})
        active = record.get("current") if self.md in record.get("online", []) else None
        running = dict((s, state["servers"][s]["up"] and state["servers"][s]["service"]) for s in self.names)
        self.app_on = record.get("current") if self.app_resource in record.get("online", []) else None
        return state, mirror, active, running

    def _log_bytes(self, server):
        """The size of the application's log on ``server`` (-1 when there is none)."""
        return int(self._ssh(server, "stat -c %%s %s/app.log 2>/dev/null || echo -1" % self.mount).strip())

    def _app(self, server, start):
        """The exec resource: the application's loop as a systemd unit; the size of its log is recorded."""
        if not start:
            self._ssh(server, "systemctl stop fake-%s" % self.app_resource)
        size = self._log_bytes(server)
        if start and self.app_command:
            self._ssh(server, "systemd-run --collect --unit=fake-%s sh -c %s"
                      % (self.app_resource, shlex.quote(self.app_command % {"log": "%s/app.log" % self.mount})))
        self.measured["app"].append({"server": server, "op": "start" if start else "stop", "log_bytes": size,
                                     "at": time.monotonic()})
        self.plane[server]["app"] = start

    def reconcile(self):
        """Make the guests do what the fake's state says (see the module docstring)."""
        state, mirror, active, running = self._state()
        constructed = bool(mirror and mirror["constructed"])
        events = state["log"][self.seen_log:]
        self.seen_log = len(state["log"])
        mnt = self.mount
        for s in self.names:  # the application stopped (exec resource offline): its loop ends
            if self.plane[s]["app"] and self.app_on != s:
                self._app(s, False)
        for s in self.names:  # the resource stopped (or its server going away): unmount, Secondary
            if self.plane[s]["mounted"] and active != s:
                self._ssh(s, "umount %s && drbdadm secondary %s" % (mnt, self.resource))
                self.plane[s]["mounted"] = False
        for s in self.names:  # cluster service stopped, or the resource removed: DRBD down
            if self.plane[s]["up"] and not (running[s] and constructed):
                self._ssh(s, "drbdadm down %s" % self.resource)
                self.plane[s]["up"] = False
        for event in events:
            if event.get("md") != self.md:
                continue
            if event["event"] == "initial_construction" and event.get("target", self.names[-1]) == self.names[-1]:
                self._construct(event["mode"])
            elif event["event"] == "mirror_recovery" and event.get("expected"):
                pass
            elif event["event"] in ("mirror_recovery", "forced_recovery_source"):
                raise DataPlaneError("the lab data plane does not carry %s" % json.dumps(event, sort_keys=True))
        for s in self.names:  # cluster service running on a constructed mirror: DRBD up
            if running[s] and constructed and not self.plane[s]["up"]:
                self._ssh(s, "drbdadm up %s" % self.resource)
                self.plane[s]["up"] = True
        if active is not None and not self.plane[active]["mounted"]:
            self._ssh(active, "drbdadm primary %s && mkdir -p %s && mount /dev/drbd%d %s"
                      % (self.resource, mnt, self.minor, mnt))
            self.plane[active]["mounted"] = True
        if self.app_on is not None and not self.plane[self.app_on]["app"]:
            self._app(self.app_on, True)
        for s in [e["server"] for e in events if e["event"] == "shutdown"]:  # clpdown: the OS shuts down
            vm = self.servers[s].vm
            if vm.pid is not None:
                self.off_pid[s] = vm.pid
                vm.ssh("systemctl poweroff", check=False, timeout=15)
                # clpdown's server is down when the command has answered: wait for the guest's own power-off (its
                # qemu exits), so that whatever the caller does next (EC2's view of the instance) sees it down
                if not vm.wait_gone(self.off_pid[s], POWEROFF_WAIT):
                    self.errors.append("clpdown %s: the guest was still running %d s after systemctl poweroff"
                                       % (s, POWEROFF_WAIT))
                self.measured["poweroffs"].append({"server": s, "pid": self.off_pid[s], "at": time.monotonic()})
                self.plane[s] = {"up": False, "mounted": False, "app": False}

    def _construct(self, mode):
        """Initial mirror construction on both disks: new metadata; no copy (skipped) or a full sync."""
        r = self.resource
        t0 = time.monotonic()
        for s in self.names:
            self._ssh(s, "drbdadm down %s; drbdadm create-md --force %s && drbdadm up %s" % (r, r, r))
            self.plane[s]["up"] = True
        first, last = self.names[0], self.names[-1]
        self._ssh(first, "drbdsetup wait-connect %d --wfc-timeout=120 --degr-wfc-timeout=120 --outdated-wfc-timeout=120"
                  % self.minor)
        if mode == "skipped":
            self._ssh(first, "drbdadm new-current-uuid --clear-bitmap %s" % r)
        else:
            self._ssh(first, "drbdadm primary --force %s" % r)
        synced = self._wait_in_sync(last)
        if mode != "skipped":
            self._ssh(first, "drbdadm secondary %s" % r)
        self.measured["constructions"].append({"mode": mode, "received_kib": synced["nr"], "target": last,
                                               "seconds": round(time.monotonic() - t0, 1)})

    # ------------------------------------------------------------------ the bridge (EC2 <-> the cluster)

    def _bridge_loop(self, ec2, interval):
        client = ec2.client()
        while not self._stop.wait(interval):
            try:
                self._bridge_step(client)
            except Exception as e:  # reported by the test
                self.errors.append("bridge: %r" % (e,))

    def _bridge_step(self, client):
        ids = dict((s, self.servers[s].instance_id) for s in self.names)
        reservations = client.describe_instances(InstanceIds=list(ids.values()))["Reservations"]
        instances = dict((i["InstanceId"], i) for r in reservations for i in r["Instances"])
        state = read_state(self.path)
        disks = state["disks"]
        for snap in client.describe_snapshots(OwnerIds=["self"])["Snapshots"]:
            if snap["SnapshotId"] not in self.snapshots:
                self.snapshots[snap["SnapshotId"]] = "copy of %s as of %s" % (snap["VolumeId"], snap["SnapshotId"])
        for s in self.names:
            inst = instances[ids[s]]
            at = [b["Ebs"]["VolumeId"] for b in inst.get("BlockDeviceMappings", []) if b["DeviceName"] == self.device_name]
            if at and at[0] != disks[s].get(self.md, {}).get("id"):
                vol = client.describe_volumes(VolumeIds=at)["Volumes"][0]
                label = self.snapshots.get(vol.get("SnapshotId") or "", "blank %s" % at[0])
                with self.lock:
                    with locked(self.path) as cluster:
                        cluster.replace_disk(s, self.md, at[0], label)
                    self.reconcile()
            vm = self.servers[s].vm
            # a server CLUSTERPRO shut down comes back once EC2 has reported it stopped and then running again
            if inst["State"]["Name"] == "stopped" and not state["servers"][s]["up"]:
                self.stopped_seen[s] = True
            elif (inst["State"]["Name"] == "running" and self.stopped_seen.get(s) and not state["servers"][s]["up"]
                    and vm.pid is not None):
                vm.wait_ssh(240)
                self.stopped_seen[s] = False
                self._boot(s)

    def _boot(self, server):
        """The instance is up again: the mirror driver starts (DRBD up: it resyncs what its bitmap holds),
        then the fake boots the server (its cluster service starts and it sees the recovery)."""
        with self.lock:
            state, mirror, active, running = self._state()
            if state["servers"][server]["up"]:
                return
            t0 = time.monotonic()
            oos = None
            log_bytes = None
            if active is not None:
                oos = self.proc(active)["oos"] if self.plane[active]["up"] else None
                # what the business has written by now (the log's size): bounds what the resync may carry
                log_bytes = self._log_bytes(active)
                if oos:  # the business wrote while this server was away: the fake's copy there is stale now
                    with locked(self.path) as cluster:
                        cluster.write(self.md)
            synced = None
            if mirror and mirror["constructed"]:
                self._ssh(server, "drbdadm up %s" % self.resource)
                self.plane[server]["up"] = True
                synced = self._wait_in_sync(server)
                if active is not None:
                    synced["app_log_bytes"] = self._log_bytes(active)
            with locked(self.path) as cluster:
                before = len(cluster.state["log"])
                cluster.boot(server)
                for event in cluster.state["log"][before:]:
                    if event["event"] == "mirror_recovery" and event.get("target") == server:
                        event["expected"] = True  # the data plane did it: DRBD's resync above
                        self.measured["recoveries"].append({
                            "server": server, "mode": event["mode"], "out_of_sync_kib_before": oos,
                            "received_kib": synced["nr"] if synced else None, "seconds": round(time.monotonic() - t0, 1),
                            "app_log_bytes": log_bytes,  # at the boot, and when DRBD was in sync again
                            "app_log_bytes_synced": synced.get("app_log_bytes") if synced else None})
            self.reconcile()
