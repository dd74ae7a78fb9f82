# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``make galaxy-check``: the release artifact as Galaxy and Automation Hub import it and as a user installs it.

    .venv/bin/python tests/galaxy/check.py --importer .build/galaxy-importer/bin/python --work .build/galaxy

1. ``ansible-galaxy collection build`` (galaxy.yml's ``build_ignore``) into ``<work>/dist``.
2. The tarball holds LICENSE, README.md and a README.md per role, and nothing generated or development-only:
   no ``.ansible/`` (ansible-lint's copy of the collection), ``.venv``, ``.build``, ``.ci``, ``.git*``,
   ``.pytest_cache``, ``tests/output``, ``benchmarks/results``, ``__pycache__``, ``*.pyc``, ``*.tar.gz``, and no file
   git ignores. MANIFEST.json carries the license and real URLs.
3. galaxy-importer (its own virtualenv, ``--importer``; configuration tests/galaxy/galaxy-importer.cfg) imports
   the tarball offline and without containers: exit 0, not one WARNING or ERROR line, documentation for every
   module, a rendered README for every role. amazon.aws and ansible.windows (doc fragments, module_utils)
   are those of .venv, put on the importer's Python path.
4. ``ansible-galaxy collection install --offline`` into ``<work>/collections``; its dependencies must be met by
   the amazon.aws and ansible.windows in .venv (ansible-galaxy finds them on its Python path).
5. From the installed copy, never the work tree (``ANSIBLE_COLLECTIONS_PATH`` is the install directory alone):
   ``ansible-doc`` of every module and every role, ``ansible-playbook --syntax-check`` of every playbook by FQCN.

Standard library only. Prints the seconds of each step; exits 1 with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.support.checks import CheckFailed, scratch, stepper  # noqa: E402  (run as a script)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "tests", "galaxy", "galaxy-importer.cfg")
COLLECTION = "stillpoint.snapshots"
# Never in the artifact (issue 14): path components, path prefixes, name endings.
FORBIDDEN_PARTS = (".ansible", ".venv", ".build", ".ci", ".pytest_cache", "__pycache__", ".tox")
FORBIDDEN_PREFIXES = ("tests/output/", "benchmarks/results/", "changelogs/.plugin-cache.yaml")
FORBIDDEN_ENDINGS = (".pyc", ".tar.gz")
# The collections the artifact depends on (galaxy.yml), taken from .venv: ansible-galaxy cannot reach Galaxy here.
DEPENDENCIES = (("amazon", "aws"), ("ansible", "windows"))


def run(argv, env, cwd, what):
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise CheckFailed("%s failed (rc %s): %s\n%s%s" % (what, proc.returncode, " ".join(argv), proc.stdout, proc.stderr))
    return proc


def clean_env(**extra):
    """The caller's environment without Ansible and Python settings (the Makefile points ANSIBLE_COLLECTIONS_PATH
    at the work tree), plus ``extra``."""
    env = dict((k, v) for k, v in os.environ.items()
               if not k.startswith(("ANSIBLE_", "GALAXY_IMPORTER_CONFIG")) and k not in ("PYTHONPATH", "PYTHONHOME"))
    env.update(extra)
    return env


def venv_bin(name):
    # sys.executable is .venv/bin/python (not resolved): its siblings are .venv's tools
    return os.path.join(os.path.dirname(sys.executable), name)


def build(work):
    dist = os.path.join(work, "dist")
    os.makedirs(dist)
    run([venv_bin("ansible-galaxy"), "collection", "build", "--output-path", dist, ROOT],
        clean_env(ANSIBLE_LOCAL_TEMP=os.path.join(work, "tmp")), ROOT, "ansible-galaxy collection build")
    built = [f for f in os.listdir(dist) if f.endswith(".tar.gz")]
    if len(built) != 1:
        raise CheckFailed("expected one tarball in %s, found %s" % (dist, built))
    return os.path.join(dist, built[0])


def git_ignored(paths):
    """The paths git ignores (tracked files never count), or nothing when this is no git checkout."""
    if not os.path.exists(os.path.join(ROOT, ".git")) or not shutil.which("git"):
        return []
    proc = subprocess.run(["git", "check-ignore", "--stdin"], cwd=ROOT, input="\n".join(paths), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode not in (0, 1):
        raise CheckFailed("git check-ignore failed: %s" % proc.stderr)
    return proc.stdout.split()


def check_contents(tarball):
    with tarfile.open(tarball) as tar:
        members = [m.name[2:] if m.name.startswith("./") else m.name for m in tar.getmembers()]
        manifest = json.load(tar.extractfile("MANIFEST.json"))
    files = set(members)
    bad = [m for m in members
           if any(part in FORBIDDEN_PARTS or part.startswith(".git") for part in m.split("/"))
           or (m + "/").startswith(FORBIDDEN_PREFIXES) or m.endswith(FORBIDDEN_ENDINGS)]
    bad += [m for m in git_ignored(sorted(files - {"MANIFEST.json", "FILES.json"})) if m not in bad]
    if bad:
        raise CheckFailed("the tarball ships %d generated or development-only entries (extend build_ignore in "
                          "galaxy.yml): %s" % (len(bad), ", ".join(sorted(bad)[:20])))
    roles = sorted(set(m.split("/")[1] for m in members if m.startswith("roles/") and m.count("/") >= 2))
    missing = [f for f in ["LICENSE", "README.md", "meta/runtime.yml"] + ["roles/%s/README.md" % r for r in roles]
               if f not in files]
    if missing:
        raise CheckFailed("the tarball lacks %s" % ", ".join(missing))
    info = manifest["collection_info"]
    urls = dict((k, info.get(k) or "") for k in ("repository", "documentation", "homepage", "issues"))
    wrong = [k for k, v in urls.items() if not v.startswith("https://") or "example" in v]
    if wrong or info.get("license") != ["GPL-3.0-or-later"]:
        raise CheckFailed("MANIFEST.json: license %s, URLs %s (missing or placeholders: %s)" % (info.get("license"), urls, wrong))
    return members, roles


def importer_deps(work):
    """``<work>/deps/ansible_collections/<ns>/<name>`` links to .venv's copies (a Python path entry for the importer)."""
    proc = run([sys.executable, "-c", "import ansible_collections, sys; sys.stdout.write(list(ansible_collections.__path__)[0])"],
               clean_env(), ROOT, "finding .venv's ansible_collections")
    source = proc.stdout.strip()
    deps = os.path.join(work, "deps")
    for namespace, name in DEPENDENCIES:
        target = os.path.join(source, namespace, name)
        if not os.path.isdir(target):
            raise CheckFailed("%s.%s is not in %s (requirements-dev.txt's ansible package brings it)" % (namespace, name, source))
        os.makedirs(os.path.join(deps, "ansible_collections", namespace), exist_ok=True)
        os.symlink(target, os.path.join(deps, "ansible_collections", namespace, name))
    return deps


def galaxy_importer(importer, tarball, work, modules, roles):
    here = os.path.join(work, "importer")
    tmp = os.path.join(work, "tmp")
    os.makedirs(here)
    env = clean_env(GALAXY_IMPORTER_CONFIG=CONFIG, PYTHONPATH=importer_deps(work),
                    GALAXY_IMPORTER_ANSIBLE_LOCAL_TMP=tmp, GALAXY_IMPORTER_TMP_ROOT_DIR=tmp,
                    # its ansible-doc and ansible-lint are the importer's, found on PATH
                    PATH=os.pathsep.join([os.path.dirname(importer), "/usr/bin", "/bin"]))
    # the result is written to importer_result.json in the working directory
    proc = run([importer, "-m", "galaxy_importer.main", tarball], env, here, "galaxy-importer")
    output = proc.stdout + proc.stderr
    complaints = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR", "CRITICAL"))]
    if complaints or "Importer processing completed successfully" not in output:
        raise CheckFailed("galaxy-importer complained:\n%s" % "\n".join(complaints or output.splitlines()[-20:]))
    with open(os.path.join(here, "importer_result.json")) as handle:
        result = json.load(handle)
    contents = result["docs_blob"]["contents"]
    documented = set(c["content_name"] for c in contents if c["content_type"] == "module" and c.get("doc_strings"))
    readmes = set(c["content_name"] for c in contents if c["content_type"] == "role" and c.get("readme_html"))
    lacking = sorted(set(modules) - documented) + sorted("role " + r for r in set(roles) - readmes)
    if lacking:
        raise CheckFailed("galaxy-importer found no documentation for %s" % ", ".join(lacking))
    # "Importing with galaxy-importer 0.4.44"
    return output.splitlines()[0].replace("Importing with ", "")


def install(tarball, work):
    collections = os.path.join(work, "collections")
    env = clean_env(ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCAL_TEMP=os.path.join(work, "tmp"))
    proc = run([venv_bin("ansible-galaxy"), "collection", "install", "--offline", "-p", collections, tarball],
               env, work, "ansible-galaxy collection install --offline")
    path = os.path.join(collections, "ansible_collections", *COLLECTION.split("."))
    if not os.path.isfile(os.path.join(path, "MANIFEST.json")):
        raise CheckFailed("ansible-galaxy collection install put nothing at %s:\n%s" % (path, proc.stdout))
    return env, path


def module_names(paths):
    """The module names of module files (``.py`` documentation and ``.ps1`` code share a name) among ``paths``."""
    return sorted(set(os.path.splitext(os.path.basename(p))[0] for p in paths
                      if p.endswith((".py", ".ps1")) and os.path.basename(p) != "__init__.py"))


def from_installed(env, path, work):
    """ansible-doc of every module and role, --syntax-check of every playbook, all resolved in ``path``."""
    modules = module_names(os.listdir(os.path.join(path, "plugins", "modules")))
    names = ["%s.%s" % (COLLECTION, m) for m in modules]
    docs = json.loads(run([venv_bin("ansible-doc"), "--json", "-t", "module"] + names, env, work, "ansible-doc").stdout)
    for name in names:
        filename = (docs.get(name) or {}).get("doc", {}).get("filename", "")
        if not filename.startswith(path + os.sep):
            raise CheckFailed("ansible-doc %s: no documentation from the installed copy (%r)" % (name, filename or None))
    roles = sorted(os.listdir(os.path.join(path, "roles")))
    names = ["%s.%s" % (COLLECTION, r) for r in roles]
    docs = json.loads(run([venv_bin("ansible-doc"), "--json", "-t", "role"] + names, env, work, "ansible-doc -t role").stdout)
    for name in names:
        doc = docs.get(name) or {}
        if doc.get("path") != path or not doc.get("entry_points"):
            raise CheckFailed("ansible-doc -t role %s: no entry points from the installed copy (%r)" % (name, doc.get("path")))
    playbooks = []
    for top, _dirs, files in os.walk(os.path.join(path, "playbooks")):
        sub = os.path.relpath(top, os.path.join(path, "playbooks"))
        for f in sorted(files):
            if f.endswith((".yml", ".yaml")):
                parts = ([] if sub == "." else sub.split(os.sep)) + [os.path.splitext(f)[0]]
                playbooks.append("%s.%s" % (COLLECTION, ".".join(parts)))
    if not playbooks:
        raise CheckFailed("no playbooks in %s/playbooks" % path)
    proc = run([venv_bin("ansible-playbook"), "--syntax-check", "-i", "localhost,"] + playbooks, env, work,
               "ansible-playbook --syntax-check")
    checked = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("playbook:")]
    outside = [p for p in checked if not p.startswith(path + os.sep)]
    if len(checked) != len(playbooks) or outside:
        raise CheckFailed("--syntax-check did not check %d playbooks of the installed copy: %s" % (len(playbooks), checked))
    return modules, roles, playbooks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--importer", required=True, help="python of galaxy-importer's virtualenv")
    parser.add_argument("--work", required=True, help="scratch directory, emptied first")
    args = parser.parse_args()
    work = scratch(args.work)
    start = time.monotonic()
    step = stepper("galaxy-check")

    try:
        tarball = step("build", build, work)
        members, roles = step("contents (%s)" % os.path.basename(tarball), check_contents, tarball)
        modules = module_names(m for m in members if m.startswith("plugins/modules/"))
        version = step("galaxy-importer", galaxy_importer, os.path.abspath(args.importer), tarball, work, modules, roles)
        env, path = step("ansible-galaxy collection install --offline", install, tarball, work)
        modules, roles, playbooks = step("ansible-doc, --syntax-check (installed copy)", from_installed, env, path, work)
    except CheckFailed as exc:
        print("galaxy-check: FAILED: %s" % exc, file=sys.stderr)
        return 1
    summary = (os.path.basename(tarball), len(members), version, len(modules), len(roles), len(playbooks), path,
               time.monotonic() - start)
    print("galaxy-check: %s (%d entries) imported by %s, installed; %d modules and %d roles documented, %d playbooks "
          "pass --syntax-check, all from %s; %.1f s" % summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
