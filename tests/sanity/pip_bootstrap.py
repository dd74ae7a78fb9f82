# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Give ansible-test its pip bootstrap without ci-files.testing.ansible.com.

ansible-test creates one virtualenv per sanity test and bootstraps pip in it with a get-pip script
it downloads from ci-files.testing.ansible.com, which this network does not reach. Its own error
message says the script may be saved by hand to ~/.ansible/test/cache/get_pip_<version>.py. This
writes, in that place, a stand-in that installs the same pip version from its wheel on PyPI
(downloaded once with pip). Nothing is done when a bootstrap script is already cached.
"""

import glob
import os
import subprocess
import sys

STANDIN = '''# stand-in for get-pip (written by stillpoint.snapshots tests/sanity/pip_bootstrap.py)
import subprocess, sys
WHEEL = %(wheel)r
args = [a for a in sys.argv[1:] if not a.startswith("pip==") and a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, WHEEL + "/pip", "install", "--no-index", WHEEL] + args))
'''


def wanted_pip_version():
    from ansible_test._internal.python_requirements import get_venv_packages  # pylint: disable=import-outside-toplevel

    class _Python:  # get_venv_packages only reads .version
        version = "%d.%d" % sys.version_info[:2]

    return get_venv_packages(_Python())["pip"]


def main():
    version = wanted_pip_version()
    cache = os.path.expanduser("~/.ansible/test/cache/get_pip_%s.py" % version.replace(".", "_"))
    if os.path.exists(cache):
        return
    wheels = os.path.join(os.path.dirname(cache), "wheels")
    os.makedirs(wheels, exist_ok=True)
    found = glob.glob(os.path.join(wheels, "pip-%s-*.whl" % version))
    if not found:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "-d", wheels, "pip==%s" % version])
        found = glob.glob(os.path.join(wheels, "pip-%s-*.whl" % version))
    with open(cache, "w", encoding="utf-8") as handle:
        handle.write(STANDIN % {"wheel": found[0]})
    print("ansible-test pip %s bootstrap: %s (installs %s)" % (version, cache, found[0]))


if __name__ == "__main__":
    main()
