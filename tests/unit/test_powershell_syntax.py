# -*- coding: utf-8 -*-
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every PowerShell script of the collection parses without an ERROR or MISSING node under the
tree-sitter PowerShell grammar (PyPI tree-sitter + tree-sitter-powershell). No PowerShell runs
here; this catches syntax errors before a Windows host does. The broken snippets below prove the
check fails when it should.

Known grammar quirks (tree-sitter-powershell 0.26): a ``param(...)`` block on the same line as the
function's opening brace is reported as an error (write ``param(`` on its own line), and some
invalid forms are accepted (``foreach ($d in) {}``): the check finds unbalanced and truncated
code, not every error PowerShell's own parser would."""

import os

import pytest

ts = pytest.importorskip("tree_sitter")
tsp = pytest.importorskip("tree_sitter_powershell")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP_DIRS = {".git", ".venv", ".build", ".tox", "node_modules", "__pycache__"}


def parser():
    return ts.Parser(ts.Language(tsp.language()))


def syntax_errors(source):
    """``[(kind, line, column, text)]`` for every ERROR or MISSING node of ``source`` (bytes)."""
    tree = parser().parse(source)
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            text = source[node.start_byte:node.end_byte][:60].decode("utf-8", "replace")
            found.append(("MISSING " + node.type if node.is_missing else "ERROR", node.start_point[0] + 1,
                          node.start_point[1] + 1, text))
        stack.extend(node.children)
    return sorted(found, key=lambda e: (e[1], e[2]))


def powershell_files():
    out = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]  # .ansible/: ansible-lint's copy
        out += [os.path.join(top, f) for f in files if f.lower().endswith((".ps1", ".psm1"))]
    return sorted(out)


DISK_SCRIPTS = ("Get-EbsDisk.ps1", "Set-EbsDiskOffline.ps1", "Set-EbsDiskOnline.ps1")


def test_the_collection_has_powershell_scripts():
    """The Windows disk scripts are in one place: the files of the windows_ebs_disk role, which both
    CLUSTERPRO roles include (tasks_from disks, offline, online)."""
    found = [os.path.relpath(p, ROOT) for p in powershell_files() if os.path.basename(p) in DISK_SCRIPTS]
    assert sorted(found) == [os.path.join("roles", "windows_ebs_disk", "files", name) for name in DISK_SCRIPTS]


@pytest.mark.parametrize("path", powershell_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_script_parses_cleanly(path):
    with open(path, "rb") as handle:
        source = handle.read()
    errors = syntax_errors(source)
    assert not errors, "%s: %s" % (os.path.relpath(path, ROOT), errors)


GOOD = b"""[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)]
    [string]$VolumeId
)
$disk = @(Get-Disk | Where-Object { $_.SerialNumber -eq $VolumeId.Replace('-', '') })
if ($disk.Count -ne 1) {
    throw "expected one disk"
}
Set-Partition -DiskNumber $disk[0].Number -PartitionNumber 2 -NewDriveLetter M
"""


def test_a_valid_snippet_has_no_errors():
    assert syntax_errors(GOOD) == []


@pytest.mark.parametrize("broken", [
    GOOD.replace(b"if ($disk.Count -ne 1) {", b"if ($disk.Count -ne 1 {"),      # unclosed parenthesis
    GOOD.replace(b'    throw "expected one disk"\n}', b'    throw "expected one disk"\n'),  # unclosed brace
    GOOD.replace(b"@(Get-Disk", b"@(Get-Disk |"),                              # pipe to nothing
    GOOD + b"$h = @{ a = 1\n",                                                  # unclosed hashtable
    GOOD + b"switch ($VolumeId) {\n    'a' { 1 }\n",                             # unclosed switch
], ids=["paren", "brace", "pipe", "hashtable", "switch"])
def test_the_check_catches_syntax_errors(broken):
    assert syntax_errors(broken), "a broken script must be reported"


def test_a_broken_file_on_disk_fails_the_file_check(tmp_path):
    bad = tmp_path / "Broken.ps1"
    bad.write_bytes(GOOD.replace(b"param(", b"param(("))
    with pytest.raises(AssertionError, match="Broken.ps1"):
        test_script_parses_cleanly(str(bad))
