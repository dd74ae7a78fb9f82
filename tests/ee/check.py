# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``make ee-check``: the execution environment's build context, as ``ansible-builder create`` writes it.

    .venv/bin/python tests/ee/check.py --builder .build/ansible-builder/bin/ansible-builder --work .build/ee-check

No container runtime is needed (nothing is pulled or built); what is checked is what ``ansible-builder build``
would hand to podman or docker.

1. ``ansible-galaxy collection build`` into the directory execution-environment.yml copies the collection tarball
   from (its ``additional_build_files`` entry); the tarball's name must be the one the EE installs (galaxy.yml's
   version), and it must ship requirements.txt and bindep.txt (ansible-builder's introspection reads them).
2. ``ansible-builder create --output-filename Containerfile`` (its own virtualenv, ``--builder``) into
   ``<work>/context``.
3. The Containerfile starts from execution-environment.yml's base image, installs its Python interpreter, and
   installs the pinned ansible-core (inside meta/runtime.yml's ``requires_ansible``) and ansible-runner; the
   galaxy stage installs ``_build/requirements.yml`` from ``/build``, a copy of ``_build``.
4. ``_build/requirements.yml``: amazon.aws and ansible.windows at versions galaxy.yml's dependencies allow, and
   the collection tarball, present under ``_build`` at the path the requirement names. ``_build/requirements.txt``
   holds every line of requirements.txt; ``_build/bindep.txt`` is bindep.txt.
5. The builder stage's introspection (``_build/scripts/introspect.py``, run here on the tarball installed next
   to .venv's amazon.aws and ansible.windows) yields boto3, botocore, jmespath and pywinrm for pip and
   openssh-clients for rpm, and no host-side package (fsfreeze's util-linux, lvm2, mdadm, drbd-utils...).

Standard library and PyYAML (which ansible-core brings into .venv). Prints the seconds of each step; exits 1 with
the reason on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.support.checks import CheckFailed, scratch, stepper  # noqa: E402  (run as a script)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EE_FILE = os.path.join(ROOT, "execution-environment.yml")
COLLECTION = ("stillpoint", "snapshots")
# Packages that belong on the managed hosts (they run fsfreeze, LVM, mdadm, DRBD), never in the EE.
HOST_SIDE = ("util-linux", "lvm2", "mdadm", "drbd-utils", "drbd", "e2fsprogs", "xfsprogs", "nvme-cli")
# What the EE must end up with after introspection (pip names, bindep rpm names).
PYTHON_NEEDED = ("boto3", "botocore", "jmespath", "pywinrm")
SYSTEM_NEEDED = ("openssh-clients",)


def run(argv, env, cwd, what):
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              check=False)
    except OSError as exc:
        raise CheckFailed("%s could not start: %s (%s)" % (what, " ".join(argv), exc))
    if proc.returncode != 0:
        raise CheckFailed("%s failed (rc %s): %s\n%s%s" % (what, proc.returncode, " ".join(argv), proc.stdout, proc.stderr))
    return proc


def clean_env(**extra):
    env = dict((k, v) for k, v in os.environ.items()
               if not k.startswith("ANSIBLE_") and k not in ("PYTHONPATH", "PYTHONHOME"))
    env.update(extra)
    return env


def venv_bin(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def version_tuple(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def satisfies(version, spec):
    """``version`` ("2.19.14") against a comma-separated ``spec`` of ``>=``, ``>``, ``<=``, ``<``, ``==``, ``!=``."""
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
           "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op = re.match(r"(>=|<=|==|!=|>|<)?", clause).group(1) or "=="
        if not ops[op](version_tuple(version), version_tuple(clause[len(op):] if clause.startswith(op) else clause)):
            return False
    return True


def requirement_names(lines):
    """pip requirement lines -> lower-case project names (comments, blanks and options skipped)."""
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s\[<>=!~;]", line, 1)[0].lower().replace("_", "-"))
    return names


def bindep_entries(text):
    """bindep lines -> [(package, [profiles])]."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.match(r"^(\S+)\s*(?:\[([^\]]*)\])?", line)
            entries.append((match.group(1), (match.group(2) or "").split()))
    return entries


def definition():
    ee = load(EE_FILE)
    if ee.get("version") != 3:
        raise CheckFailed("execution-environment.yml: version %r, ansible-builder 3 wants 3" % ee.get("version"))
    deps = ee["dependencies"]
    files = [f for f in ee.get("additional_build_files", []) if f["src"].endswith(".tar.gz")]
    entries = [c for c in deps["galaxy"]["collections"] if c.get("type") == "file"]
    if len(files) != 1 or len(entries) != 1:
        raise CheckFailed("execution-environment.yml: expected one collection tarball in additional_build_files and "
                          "one `type: file` galaxy requirement, found %s and %s" % (files, entries))
    return ee, files[0], entries[0]


def build_tarball(ee_file):
    galaxy = load(os.path.join(ROOT, "galaxy.yml"))
    expected = "%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], galaxy["version"])
    src = os.path.join(ROOT, ee_file["src"])
    if os.path.basename(src) != expected:
        raise CheckFailed("execution-environment.yml copies %s, but galaxy.yml builds %s (update the EE's "
                          "additional_build_files and galaxy requirement)" % (os.path.basename(src), expected))
    dist = os.path.dirname(src)
    os.makedirs(dist, exist_ok=True)
    run([venv_bin("ansible-galaxy"), "collection", "build", "--force", "--output-path", dist, ROOT],
        clean_env(), ROOT, "ansible-galaxy collection build")
    with tarfile.open(src) as tar:
        names = set(m.name[2:] if m.name.startswith("./") else m.name for m in tar.getmembers())
    missing = [f for f in ("requirements.txt", "bindep.txt", "meta/runtime.yml") if f not in names]
    if missing:
        raise CheckFailed("%s lacks %s (ansible-builder's introspection of the installed collection reads them)"
                          % (expected, ", ".join(missing)))
    return src, galaxy


def create(builder, context):
    proc = run([builder, "create", "-f", EE_FILE, "-c", context, "--output-filename", "Containerfile"],
               clean_env(), ROOT, "ansible-builder create")
    return proc.stdout.strip().splitlines()[-1]


def check_containerfile(ee, context):
    path = os.path.join(context, "Containerfile")
    if not os.path.isfile(path):
        raise CheckFailed("ansible-builder create wrote no Containerfile in %s: %s" % (context, os.listdir(context)))
    with open(path) as handle:
        text = handle.read()
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"', text, re.M))
    deps = ee["dependencies"]
    base = ee["images"]["base_image"]["name"]
    runtime = load(os.path.join(ROOT, "meta", "runtime.yml"))
    core = deps["ansible_core"]["package_pip"]
    pin = re.match(r"^ansible-core==([\d.]+)$", core)
    problems = []
    if args.get("EE_BASE_IMAGE") != base or "FROM $EE_BASE_IMAGE AS base" not in text:
        problems.append("base image %r, execution-environment.yml says %r" % (args.get("EE_BASE_IMAGE"), base))
    interpreter = deps.get("python_interpreter", {})
    if args.get("PYCMD") != interpreter.get("python_path") or args.get("PYPKG") != interpreter.get("package_system"):
        problems.append("interpreter %s/%s, expected %s" % (args.get("PYPKG"), args.get("PYCMD"), interpreter))
    refs = args.get("ANSIBLE_INSTALL_REFS", "").split()
    for want in (core, deps["ansible_runner"]["package_pip"]):
        if want not in refs:
            problems.append("ANSIBLE_INSTALL_REFS %s lacks %s" % (refs, want))
    if not pin or not satisfies(pin.group(1), runtime["requires_ansible"]):
        problems.append("ansible-core %r is not one pinned version inside requires_ansible %r"
                        % (core, runtime["requires_ansible"]))
    for line in ("COPY _build /build", "WORKDIR /build",
                 'ansible-galaxy collection install $ANSIBLE_GALAXY_CLI_COLLECTION_OPTS -r requirements.yml',
                 "introspect --user-pip=requirements.txt --user-bindep=bindep.txt"):
        if line not in text:
            problems.append("the Containerfile lacks %r" % line)
    if problems:
        raise CheckFailed("Containerfile: " + "; ".join(problems))
    return base, pin.group(1)


def check_build_dir(context, tarball, galaxy, entry):
    build = os.path.join(context, "_build")
    problems = []
    collections = load(os.path.join(build, "requirements.yml"))["collections"]
    wanted = galaxy["dependencies"]
    by_name = dict((c["name"], c) for c in collections if c.get("type") != "file")
    for name, spec in sorted(wanted.items()):
        pinned = (by_name.get(name) or {}).get("version", "")
        if not pinned.startswith("==") or not satisfies(pinned[2:], spec):
            problems.append("requirements.yml: %s %r, galaxy.yml needs %r (pin one version inside it)" % (name, pinned, spec))
    extra = sorted(set(by_name) - set(wanted))
    if extra:
        problems.append("requirements.yml installs %s, which galaxy.yml does not depend on" % extra)
    files = [c for c in collections if c.get("type") == "file"]
    copied = os.path.join(build, files[0]["name"]) if files else None
    if files != [entry] or not copied or not os.path.isfile(copied):
        problems.append("requirements.yml's file entry %s is not present under _build/" % files)
    else:
        with tarfile.open(copied) as tar:
            info = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
        if (info["namespace"], info["name"], info["version"]) != COLLECTION + (galaxy["version"],):
            problems.append("_build/%s is %s.%s %s" % (files[0]["name"], info["namespace"], info["name"], info["version"]))
        with open(copied, "rb") as a, open(tarball, "rb") as b:
            if a.read() != b.read():
                problems.append("_build/%s differs from the tarball just built" % files[0]["name"])
    with open(os.path.join(ROOT, "requirements.txt")) as handle:
        needed = requirement_names(handle)
    with open(os.path.join(build, "requirements.txt")) as handle:
        present = requirement_names(handle)
    missing = [n for n in needed if n not in present]
    if missing:
        problems.append("_build/requirements.txt lacks %s from requirements.txt" % missing)
    with open(os.path.join(ROOT, "bindep.txt")) as a, open(os.path.join(build, "bindep.txt")) as b:
        if a.read() != b.read():
            problems.append("_build/bindep.txt is not bindep.txt")
    for script in ("assemble", "introspect.py", "install-from-bindep", "check_galaxy", "check_ansible", "entrypoint"):
        if not os.path.isfile(os.path.join(build, "scripts", script)):
            problems.append("_build/scripts/%s missing" % script)
    if problems:
        raise CheckFailed("; ".join(problems))
    return len(collections), len(present)


def introspect(builder, context, tarball, work):
    """The builder stage's introspection on the collections the image would hold (the tarball, .venv's
    amazon.aws and ansible.windows): the merged pip and bindep lists."""
    folder = os.path.join(work, "collections")
    run([venv_bin("ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "-p", folder, tarball],
        clean_env(ANSIBLE_LOCAL_TEMP=os.path.join(work, "tmp")), work, "ansible-galaxy collection install --offline")
    source = run([sys.executable, "-c", "import ansible_collections, sys; sys.stdout.write(list(ansible_collections.__path__)[0])"],
                 clean_env(), ROOT, "finding .venv's ansible_collections").stdout.strip()
    for namespace, name in (("amazon", "aws"), ("ansible", "windows")):
        os.makedirs(os.path.join(folder, "ansible_collections", namespace), exist_ok=True)
        os.symlink(os.path.join(source, namespace, name), os.path.join(folder, "ansible_collections", namespace, name))
    build = os.path.join(context, "_build")
    pip_out, bindep_out = os.path.join(work, "pip.txt"), os.path.join(work, "bindep.txt")
    python = os.path.join(os.path.dirname(os.path.abspath(builder)), "python")
    run([python, os.path.join(build, "scripts", "introspect.py"), "introspect", folder,
         "--user-pip", os.path.join(build, "requirements.txt"), "--user-bindep", os.path.join(build, "bindep.txt"),
         "--write-pip", pip_out, "--write-bindep", bindep_out], clean_env(), work, "introspect.py")
    with open(pip_out) as handle:
        pip = sorted(set(requirement_names(handle)))
    with open(bindep_out) as handle:
        system = bindep_entries(handle.read())
    runtime_rpm = [p for p, profiles in system
                   if not any(x in ("test", "compile", "doc") for x in profiles)
                   and (not [x for x in profiles if x.startswith("platform:")] or "platform:rpm" in profiles)]
    problems = ["pip lacks %s" % n for n in PYTHON_NEEDED if n not in pip]
    problems += ["rpm lacks %s" % n for n in SYSTEM_NEEDED if n not in runtime_rpm]
    problems += ["host-side package %s in the image" % entry[0] for entry in system if entry[0] in HOST_SIDE]
    if problems:
        raise CheckFailed("introspection: %s (pip %s, system %s)" % ("; ".join(problems), pip, system))
    return pip, runtime_rpm


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--builder", required=True, help="ansible-builder of its own virtualenv")
    parser.add_argument("--work", required=True, help="scratch directory, emptied first")
    args = parser.parse_args()
    work = scratch(args.work)
    context = os.path.join(work, "context")
    start = time.monotonic()
    step = stepper("ee-check")

    try:
        ee, ee_file, entry = definition()
        tarball, galaxy = step("ansible-galaxy collection build", build_tarball, ee_file)
        step("ansible-builder create", create, os.path.abspath(args.builder), context)
        base, core = step("Containerfile", check_containerfile, ee, context)
        collections, pip_lines = step("_build/", check_build_dir, context, tarball, galaxy, entry)
        pip, rpm = step("introspection (builder stage)", introspect, args.builder, context, tarball, work)
    except CheckFailed as exc:
        print("ee-check: FAILED: %s" % exc, file=sys.stderr)
        return 1
    print("ee-check: %s from %s with ansible-core %s; %d collection requirements (the tarball among them), "
          "%d pip lines; after introspection pip %s, rpm %s; %.1f s"
          % (os.path.relpath(os.path.join(context, "Containerfile"), ROOT), base, core, collections, pip_lines,
             ",".join(pip), ",".join(rpm), time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
