# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""FAKE Windows services of the FAKE Windows host (tests only; not Microsoft software).

The state lives in the FAKE disk subsystem's state file (tests/fakes/vss/disks.py) under ``services``:
``{name: {"state": "running"|"stopped", "dependencies": [names]}}``; every change is appended to its ``log``
as ``["service", "stop"|"start", name]``, in the order the SCM would have done it. What it follows:

* ansible.windows.win_service (its module documentation and win_service.ps1, ansible.windows 2.x): with only
  ``name`` it reads (``exists: false`` for a service that is not installed, no failure); ``state`` on a service
  that is not installed fails "Service '<name>' is not installed, need to set 'path' to create a new service";
  ``stopped``/``started`` are idempotent (no command when already so); the result carries ``exists``, ``name``,
  ``state``, ``depended_by`` and ``dependencies``; check mode reports the change without making it;
* Stop-Service (Microsoft.PowerShell.Management, which win_service calls with ``-Force`` when
  ``force_dependent_services``): a service with running dependents is refused "Cannot stop service '<name>'
  because it has dependent services. It can only be stopped if the Force flag is set."; with -Force the
  running dependents are stopped first;
* the Service Control Manager starts a service's dependencies before the service ("Service Startup", Win32
  services documentation).
"""

from __future__ import annotations


class ServiceError(Exception):
    pass


class FakeServices:
    def __init__(self, state):
        self.state = state
        self.services = state.setdefault("services", {})

    def _log(self, op, name):
        self.state.setdefault("log", []).append(["service", op, name])

    def depended_by(self, name):
        return sorted(n for n, s in self.services.items() if name in s.get("dependencies", []))

    def info(self, name):
        svc = self.services.get(name)
        if svc is None:
            return {"exists": False}
        return {"exists": True, "name": name, "state": svc["state"], "start_mode": svc.get("start_mode", "auto"),
                "dependencies": list(svc.get("dependencies", [])), "depended_by": self.depended_by(name)}

    def stop(self, name, force, check):
        """Returns whether anything changed."""
        svc = self.services[name]
        if svc["state"] == "stopped":
            return False
        running = [d for d in self.depended_by(name) if self.services[d]["state"] == "running"]
        if running and not force:
            raise ServiceError("Cannot stop service '%s' because it has dependent services. It can only be stopped "
                               "if the Force flag is set." % name)
        if not check:
            for dep in running:
                self.stop(dep, force, check)
            svc["state"] = "stopped"
            self._log("stop", name)
        return True

    def start(self, name, check):
        svc = self.services[name]
        if svc["state"] == "running":
            return False
        if not check:
            for dep in svc.get("dependencies", []):
                if dep in self.services:
                    self.start(dep, check)
            svc["state"] = "running"
            self._log("start", name)
        return True

    def run(self, params, check):
        """win_service's behaviour for ``name``, ``state`` (None, started, stopped), ``force_dependent_services``."""
        name, state = params["name"], params.get("state")
        if name not in self.services:
            if state is None:
                return {"changed": False, "exists": False}
            raise ServiceError("Service '%s' is not installed, need to set 'path' to create a new service" % name)
        changed = False
        if state == "stopped":
            changed = self.stop(name, bool(params.get("force_dependent_services")), check)
        elif state == "started":
            changed = self.start(name, check)
        elif state is not None:
            raise ServiceError("FAKE win_service: state %s is not modelled" % state)
        return dict(self.info(name), changed=changed)
