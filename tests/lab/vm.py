# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu (TCG) virtual machines for the lab: boot, SSH, VM-to-VM links, QMP, teardown by PID.

    image = tests.lab.image.build()
    lab = Lab("/tmp/lab", image)
    a, b = lab.vm("vma"), lab.vm("vmb")
    lab.link(a, b)                      # 10.77.0.1 <-> 10.77.0.2 over UDP on 127.0.0.1
    lab.boot()                          # start all, wait for SSH
    a.ssh("lsblk")
    lab.inventory("/tmp/lab/hosts.yml")
    lab.teardown()                      # every qemu process this lab started, by PID

Network, as ``../shared/LAB.md`` demands: the management NIC is qemu's user network with
``restrict=on``; the only ways in or out are a hostfwd from ``127.0.0.1:<ssh_port>`` to the
guest's port 22, and guestfwds (``VM.forward``) from ``10.0.2.100:<guest_port>`` in the guest to
``127.0.0.1:<host_port>`` on the host (a relay process per connection, ``relay.py``). VM-to-VM
links are ``-netdev socket,udp=127.0.0.1:...,localaddr=127.0.0.1:...``: connectionless, so either
VM can reboot without breaking the wire. No tap, no bridge.

A VM is described by a JSON-able ``spec`` so that another process (the EC2 endpoint's qemu
backend, which stops and starts instances) can boot the same machine with ``VM.from_spec``.
Each VM has two QMP sockets: ``qmp.sock`` for the endpoint and ``lab.sock`` for the harness.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from . import diag, resume
from .image import HOST_ALIAS, LINK_ADDRESS, LINK_MAC, MGMT_MAC
from .qmp import QMP, QMPError

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "ServerAliveInterval=5"]


# a guest command with a timeout this long is expected to end: its timeout is explained (diag.py)
DIAG_MIN_TIMEOUT = 30


class LabError(Exception):
    """A VM did not boot, answer or stop."""


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_is(pid, marker, path=None):
    """True if ``pid`` is a live qemu whose command line carries ``marker`` (and mentions ``path``):
    a PID reused by another process, or another lab's VM of the same name, is never taken for ours."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return False
    if not cmdline or b"qemu-system" not in cmdline[0] or marker.encode() not in cmdline:
        return False
    return path is None or any(path.encode() in arg for arg in cmdline)


def nvme_serial(volume_id):
    """The NVMe serial EBS gives a volume: its id without the dash (``vol0123...``)."""
    return volume_id.replace("-", "")


class VM:
    """One qemu guest. ``spec`` keys: name, dir, image (the image directory), ssh_port, memory,
    smp, links [{"index", "local_port", "peer_port"}], forwards [{"guest_port", "host_port"}], cpu (qemu's
    ``-cpu``, default ``max``; the backports kernel image needs ``image.KERNELS["backports"]["cpu"]``)."""

    def __init__(self, spec):
        self.spec = dict(spec)
        self.name = spec["name"]
        self.dir = spec["dir"]
        self.ssh_port = spec["ssh_port"]
        self.image = spec["image"]
        self.key = os.path.join(self.image, "id_ed25519")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.lab_qmp_path = os.path.join(self.dir, "lab.sock")
        self.pidfile = os.path.join(self.dir, "qemu.pid")
        self.console = os.path.join(self.dir, "console.log")
        self.overlay = os.path.join(self.dir, "root.qcow2")
        self.boot_seconds = None
        self.boot_mode = None  # "cold" or "resumed" (from a saved state, tests/lab/resume.py)
        self.resume_error = None  # why a resume fell back to a cold boot
        self.resume_seconds = None  # load / plug / adopt phases of a resume

    @classmethod
    def from_spec(cls, spec):
        return cls(spec)

    # ------------------------------------------------------------------ addresses

    @property
    def link_addresses(self):
        return [LINK_ADDRESS % link["index"] for link in self.spec.get("links", [])]

    def forward(self, guest_port, host_port):
        """Before boot: the guest's ``10.0.2.100:guest_port`` reaches the host's ``127.0.0.1:host_port``."""
        self.spec.setdefault("forwards", []).append({"guest_port": int(guest_port), "host_port": int(host_port)})
        return "http://%s:%d" % (HOST_ALIAS, guest_port)

    # ------------------------------------------------------------------ lifecycle

    @property
    def pid(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_is(pid, self.marker, self.overlay) else None

    @property
    def marker(self):
        # debug-threads: qemu's threads carry their roles (``CPU 0/TCG``, ``worker``) for diag.py
        return "guest=%s,process=sp-%s,debug-threads=on" % (self.name, self.name)

    def running(self):
        return self.pid is not None

    def wait_gone(self, pid, timeout):
        """Whether this VM's qemu process ``pid`` has exited within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.pid == pid:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def command(self, disks=(), template=None):
        """qemu's command line; with ``template`` (a resume template directory) the guest's state is
        loaded from it, and links and disks are left out (``resume.hot_plug`` adds them)."""
        s = self.spec
        mgmt = "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % self.ssh_port
        for fwd in s.get("forwards", []):
            relay = "%s %s %d" % (sys.executable, RELAY, fwd["host_port"])
            mgmt += ",guestfwd=tcp:%s:%d-cmd:%s" % (HOST_ALIAS, fwd["guest_port"], relay)
        cmd = [
            "qemu-system-x86_64", "-name", self.marker, "-machine", "pc,accel=tcg", "-cpu", s.get("cpu") or "max",
            "-smp", str(s.get("smp", 1)), "-m", str(s.get("memory", 1024)), "-nodefaults", "-vga", "none",
            "-display", "none", "-serial", "file:" + self.console,
            "-kernel", os.path.join(self.image, "vmlinuz"), "-initrd", os.path.join(self.image, "initrd.img"),
            "-append", "console=ttyS0 root=/dev/vda rw systemd.hostname=%s quiet mitigations=off "
                       "net.ifnames=0" % self.name,
            "-drive", "file=%s,if=none,id=root,format=qcow2,cache=unsafe" % self.overlay,
            "-device", "virtio-blk-pci,drive=root",
            "-netdev", mgmt, "-device", "virtio-net-pci,netdev=mgmt,mac=%s" % MGMT_MAC,
            # a new generation id at every qemu start: a guest resumed from a saved state reseeds its RNG
            "-device", "vmgenid,guid=auto",
        ]
        if template is not None:
            return cmd + resume.incoming_args(template) + self._control_args()
        for i, link in enumerate(s.get("links", [])):
            cmd += ["-netdev", "socket,id=link%d,udp=127.0.0.1:%d,localaddr=127.0.0.1:%d"
                    % (i, link["peer_port"], link["local_port"]),
                    "-device", "virtio-net-pci,netdev=link%d,mac=%s" % (i, LINK_MAC % link["index"])]
        for disk in disks:
            cmd += ["-blockdev", json.dumps(disk_node(disk["node"], disk["file"])),
                    "-device", "nvme,drive=%s,serial=%s,id=%s" % (disk["node"], disk["serial"], disk["id"])]
        return cmd + self._control_args()

    def _control_args(self):
        return ["-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
                "-qmp", "unix:%s,server=on,wait=off" % self.lab_qmp_path,
                "-pidfile", self.pidfile, "-daemonize"]

    def start(self, disks=()):
        """Boot (returns once qemu runs; ``wait_ssh`` waits for the guest). ``disks``: NVMe disks
        present at boot, ``[{"node", "file", "serial", "id"}]`` (an EBS volume attached while stopped)."""
        if self.running():
            raise LabError("%s is already running (pid %s)" % (self.name, self.pid))
        os.makedirs(self.dir, exist_ok=True)
        self._t_start = time.monotonic()
        # only a VM's first start resumes (tests/lab/resume.py); a restart boots its disk for real
        template = None if os.path.exists(self.overlay) or self.spec.get("resume") is False else resume.find(self.spec)
        if template is not None:
            try:
                return self._resume(template, disks)
            except (LabError, resume.ResumeError, QMPError, OSError, subprocess.SubprocessError) as e:
                self.resume_error = str(e)
                self.kill()
                os.unlink(self.overlay)
        self.boot_mode = "cold"
        if not os.path.exists(self.overlay):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            os.path.join(self.image, "base.raw"), self.overlay], check=True)
        self._launch(self.command(disks))
        self._log_boot()
        return self

    def _log_boot(self):
        """One line per start in ``$STILLPOINT_LAB_BOOT_LOG`` (the lab tier's summary counts them)."""
        path = os.environ.get("STILLPOINT_LAB_BOOT_LOG")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"vm": self.name, "mode": self.boot_mode, "resume": self.resume_seconds,
                                    "fallback": self.resume_error}) + "\n")

    def _launch(self, cmd):
        for path in (self.qmp_path, self.lab_qmp_path, self.pidfile):
            if os.path.exists(path):
                os.unlink(path)
        with open(os.path.join(self.dir, "spec.json"), "w") as f:
            json.dump(self.spec, f, indent=1)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if r.returncode != 0:
            raise LabError("qemu for %s failed (rc %d): %s" % (self.name, r.returncode, r.stdout.strip()))

    def _resume(self, template, disks):
        """First start from the saved state of ``template``: load it, plug links and disks, give the
        guest this VM's identity; returns once the guest sees all of it (SSH is up by then)."""
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        os.path.join(template, resume.ROOT), self.overlay], check=True)
        t = [time.monotonic()]
        self._launch(self.command(template=template))
        resume.wait_resumed(self)
        t.append(time.monotonic())
        resume.hot_plug(self, self.spec.get("links", []), list(disks), LINK_MAC, disk_node)
        t.append(time.monotonic())
        self.wait_ssh()
        resume.adopt(self, list(disks), self.link_addresses)
        t.append(time.monotonic())
        self.boot_mode = "resumed"
        self.resume_seconds = {"load": round(t[1] - t[0], 1), "plug": round(t[2] - t[1], 1),
                               "adopt": round(t[3] - t[2], 1)}
        self._log_boot()
        return self

    @property
    def control_path(self):
        """The SSH master's socket: every harness command to this VM (from any process) shares one
        connection - a TCG guest spends about a second on each new SSH handshake, more under load.

        Named from the VM's directory, but not in it: a Unix socket path has at most 107 bytes and ssh
        first binds the path plus a 17-character suffix, which a deep directory (a molecule scenario
        under an xdist worker's tmp_path: 96 bytes) overflows, and then no SSH command ever runs."""
        digest = hashlib.sha1(os.path.abspath(self.dir).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "sp-ssh-%s.mux" % digest)

    def ssh_command(self, command):
        return (["ssh", "-i", self.key, "-p", str(self.ssh_port)] + SSH_OPTS
                + ["-o", "ControlMaster=auto", "-o", "ControlPath=" + self.control_path, "-o", "ControlPersist=120",
                   "root@127.0.0.1", command])

    def ssh(self, command, check=True, timeout=300, input=None):
        """Run ``command`` in the guest; returns CompletedProcess (text, or bytes when ``input`` is bytes).
        Raises LabError if ``check`` and the command failed."""
        for attempt in range(3):
            try:
                r = subprocess.run(self.ssh_command(command), input=input, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=not isinstance(input, bytes), timeout=timeout,
                                   check=False)
            except subprocess.TimeoutExpired as e:
                raise self._timed_out(e, command) from None
            # 255: ssh itself failed (a TCG guest under load can miss the connect timeout); retry
            if r.returncode != 255 or not self.running():
                break
            time.sleep(1 + attempt)
        if check and r.returncode != 0:
            raise LabError("%s: %r failed (rc %d): %s%s" % (self.name, command, r.returncode, r.stdout, r.stderr))
        return r

    def popen(self, command):
        """A long-running guest command (e.g. a writer), its SSH client as a local process."""
        proc = subprocess.Popen(self.ssh_command(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.guest_command = command
        return proc

    def communicate(self, proc, timeout, note=None):
        """``proc.communicate(timeout=...)`` of a ``popen`` command; a timeout carries the lab diagnostics
        (and ``note``: e.g. whether the command was told to stop)."""
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise self._timed_out(e, getattr(proc, "guest_command", str(proc.args)), note) from None

    def _timed_out(self, error, command, note=None):
        """A guest command that did not end: the same TimeoutExpired, with what the guest, qemu and the host
        were doing (``diag.py``). Short waits (SSH probes while booting) are expected to time out: left as
        they are."""
        if error.timeout < DIAG_MIN_TIMEOUT:
            return error
        return diag.GuestTimeout(error, diag.report(self, command, error.timeout, note))

    def wait_ssh(self, timeout=240):
        t0 = getattr(self, "_t_start", time.monotonic())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError("%s: qemu exited while booting; console:\n%s" % (self.name, self.console_tail()))
            try:
                if self.ssh("true", check=False, timeout=15).returncode == 0:
                    self.boot_seconds = time.monotonic() - t0
                    return self.boot_seconds
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        raise LabError("%s: no SSH on 127.0.0.1:%d within %.0f s; console:\n%s"
                       % (self.name, self.ssh_port, timeout, self.console_tail()))

    def console_tail(self, n=30):
        try:
            with open(self.console, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no console log)"

    def qmp(self):
        """A harness QMP connection (``lab.sock``); close it when done."""
        return QMP(self.lab_qmp_path)

    def shutdown(self, timeout=60):
        """A clean power-off (``systemctl poweroff`` over SSH; this guest ignores ACPI power-button
        events), then QMP ``quit``, then SIGKILL; returns once the process is gone."""
        pid = self.pid
        if pid is None:
            return
        try:
            self.ssh("systemctl poweroff", check=False, timeout=15)
        except subprocess.TimeoutExpired:
            pass
        if not self._wait_gone(pid, timeout):
            self.quit(10)

    def quit(self, timeout=5):
        """QMP ``quit`` (the plug pulled), then SIGKILL if the process is still there after ``timeout``."""
        pid = self.pid
        if pid is None:
            return
        try:
            with self.qmp() as q:
                q.execute("quit")
        except QMPError:
            pass
        if not self._wait_gone(pid, timeout):
            self.kill()

    def kill(self):
        """SIGKILL this VM's qemu, by the PID in its pidfile (only if it is still this VM)."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(pid, 10)

    def _wait_gone(self, pid, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_is(pid, self.marker, self.overlay):
                return True
            time.sleep(0.1)
        return False


def disk_node(node, path):
    """blockdev options of a raw disk image (writes go straight to the file)."""
    return {"driver": "raw", "node-name": node, "discard": "unmap",
            "file": {"driver": "file", "filename": path, "aio": "threads", "discard": "unmap"}}


class Lab:
    """A set of VMs under ``workdir``; ``teardown`` stops every one of them by PID."""

    def __init__(self, workdir, image, memory=1024, smp=1):
        self.workdir = os.path.abspath(workdir)
        self.image = image
        self.memory = memory
        self.smp = smp
        self.vms = []
        os.makedirs(self.workdir, exist_ok=True)

    def vm(self, name, **spec):
        spec = dict({"name": name, "dir": os.path.join(self.workdir, name), "image": self.image.path,
                     "ssh_port": free_port(), "memory": self.memory, "smp": self.smp, "links": [],
                     "forwards": []}, **spec)
        vm = VM(spec)
        self.vms.append(vm)
        return vm

    def link(self, a, b):
        """A VM-to-VM wire: a gets 10.77.0.<n>, b 10.77.0.<n+1> (n counts up over the lab)."""
        used = [link["index"] for vm in self.vms for link in vm.spec.get("links", [])]
        n = max(used, default=0) + 1
        pa, pb = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        a.spec["links"].append({"index": n, "local_port": pa, "peer_port": pb})
        b.spec["links"].append({"index": n + 1, "local_port": pb, "peer_port": pa})
        return LINK_ADDRESS % n, LINK_ADDRESS % (n + 1)

    def boot(self, vms=None, timeout=240):
        """Start the VMs (all not yet running) and wait for SSH on each; returns {name: seconds}."""
        vms = [vm for vm in (vms or self.vms) if not vm.running()]
        for vm in vms:
            vm.start()
        errors = {}

        def wait(vm):
            try:
                vm.wait_ssh(timeout)
            except LabError as e:
                errors[vm.name] = e
        threads = [threading.Thread(target=wait, args=(vm,)) for vm in vms]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise LabError("; ".join(str(e) for e in errors.values()))
        return {vm.name: vm.boot_seconds for vm in vms}

    def inventory(self, path, group="lab", hostvars=None):
        """An Ansible YAML inventory of the VMs (SSH to 127.0.0.1:<port> as root with the lab key)."""
        hosts = {}
        for vm in self.vms:
            hv = {"ansible_host": "127.0.0.1", "ansible_port": vm.ssh_port, "ansible_user": "root",
                  "ansible_ssh_private_key_file": vm.key,
                  "ansible_ssh_common_args": " ".join(SSH_OPTS[:6]),
                  # one SSH connection per host for a whole test module (several plays), no compression on
                  # loopback, modules piped to python3 instead of copied: a TCG guest pays for every step
                  "ansible_ssh_args": "-o ControlMaster=auto -o ControlPersist=600s",
                  "ansible_pipelining": True,
                  "ansible_python_interpreter": "/usr/bin/python3",
                  "lab_link_addresses": vm.link_addresses}
            hv.update((hostvars or {}).get(vm.name, {}))
            hosts[vm.name] = hv
        with open(path, "w") as f:
            json.dump({"all": {"children": {group: {"hosts": hosts}}}}, f, indent=1)  # JSON is YAML
        return path

    def teardown(self):
        """Stop every VM of this lab that still runs: QMP quit, then SIGKILL, by PID."""
        for vm in self.vms:
            vm.quit()
