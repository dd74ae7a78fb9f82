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


DISK_SCRIPTS = ("EbsDisk.ps1", "Get-EbsArrayDisks.ps1", "Set-EbsArrayDisks.ps1")


def test_the_collection_has_powershell_scripts():
    """The Windows disk scripts are in one place: the files of the windows_ebs_disk role, which the CLUSTERPRO
    backup includes (tasks_from disks: EbsDisk.ps1 -Action Get) and the win_array_host action plugin sends for the
    array restore and the CLUSTERPRO restore (Get-EbsArrayDisks.ps1, Set-EbsArrayDisks.ps1)."""
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


# -- rules for the Windows modules (plugins/modules/*.ps1, plugins/module_utils/*.psm1) and the scripts of the ----
# windows_ebs_disk role (roles/windows_ebs_disk/files/*.ps1) ----------------------------------------------------
# No aliases, $ErrorActionPreference = 'Stop' at the top level, every native command (called with the call
# operator `&`) followed by a check of $LASTEXITCODE, no Invoke-Expression.

ALIASES = {"%", "?", "ac", "cat", "cd", "chdir", "clc", "clear", "cls", "copy", "cp", "curl", "del", "diff", "dir",
           "echo", "epal", "erase", "fl", "foreach", "ft", "fw", "gal", "gc", "gci", "gcm", "gdr", "gi", "gl", "gm",
           "gp", "gps", "group", "gsv", "gu", "gv", "gwmi", "h", "history", "icm", "iex", "ihy", "ii", "ipal", "ipcsv",
           "irm", "iwr", "kill", "lp", "ls", "man", "md", "measure", "mi", "mount", "move", "mp", "mv", "nal", "ndr",
           "ni", "nv", "ogv", "popd", "ps", "pushd", "pwd", "r", "rd", "rdr", "ren", "ri", "rm", "rmdir", "rni", "rnp",
           "rp", "rv", "rvpa", "sajb", "sal", "saps", "sasv", "sc", "select", "set", "si", "sl", "sleep", "sort", "sp",
           "spps", "spsv", "start", "sv", "tee", "type", "wget", "where", "wjb", "write"}
NATIVE_NAMES = {"vssadmin", "vssadmin.exe", "diskpart", "diskpart.exe", "ec2-vss-agent", "ec2-vss-agent.exe",
                "fsutil", "chkdsk", "mountvol", "wmic"}


def module_scripts():
    tops = (os.path.join(ROOT, "plugins"), os.path.join(ROOT, "roles", "windows_ebs_disk", "files"))
    return [p for p in powershell_files() if p.startswith(tuple(top + os.sep for top in tops))]


def rule_violations(source):
    """``[(line, rule, text)]`` of the rules above in ``source`` (bytes)."""
    tree = parser().parse(source)
    found = []
    lines = source.decode("utf-8", "replace").splitlines()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.type != "command":
            continue
        text = source[node.start_byte:node.end_byte].decode("utf-8", "replace")
        line = node.start_point[0] + 1
        name_node = next((c for c in node.children if c.type == "command_name"), None)
        name = source[name_node.start_byte:name_node.end_byte].decode() if name_node is not None else ""
        if name.lower() in ALIASES:
            found.append((line, "alias", name))
        if name.lower() in ("invoke-expression", "iex"):
            found.append((line, "Invoke-Expression", text[:40]))
        if name.lower() in NATIVE_NAMES:
            found.append((line, "native command by bare name (call it with & and a full path)", name))
        if text.lstrip().startswith("&"):
            following = "\n".join(lines[line - 1:line + 2])
            if "$LASTEXITCODE" not in following:
                found.append((line, "native command without a $LASTEXITCODE check within 2 lines", text[:40]))
    top_level = list(tree.root_node.children)
    if not any(b"$ErrorActionPreference = 'Stop'" in source[c.start_byte:c.end_byte] for c in top_level):
        found.append((0, "no top-level $ErrorActionPreference = 'Stop'", ""))
    return sorted(found)


def test_the_modules_have_powershell():
    names = [os.path.relpath(p, ROOT) for p in module_scripts()]
    assert os.path.join("plugins", "modules", "win_vss_snapshot_set.ps1") in names
    assert os.path.join("roles", "windows_ebs_disk", "files", "Set-EbsArrayDisks.ps1") in names


@pytest.mark.parametrize("path", module_scripts(), ids=lambda p: os.path.relpath(p, ROOT))
def test_module_script_follows_the_rules(path):
    with open(path, "rb") as handle:
        source = handle.read()
    assert rule_violations(source) == []


RULED = b"""$ErrorActionPreference = 'Stop'
$exe = Join-Path -Path $env:SystemRoot -ChildPath 'System32\\vssadmin.exe'
$out = & $exe list writers 2>&1 | Out-String
if ($LASTEXITCODE -ne 0) {
    throw "vssadmin failed: $out"
}
"""


def test_the_rules_accept_a_good_script():
    assert rule_violations(RULED) == []


@pytest.mark.parametrize("broken,rule", [
    (RULED.replace(b"$ErrorActionPreference = 'Stop'\n", b""), "no top-level $ErrorActionPreference"),
    (RULED + b"gci -Path C:\\\n", "alias"),
    (RULED + b"Get-Disk | select Number\n", "alias"),
    (RULED + b"Invoke-Expression -Command 'Get-Disk'\n", "Invoke-Expression"),
    (RULED.replace(b"if ($LASTEXITCODE -ne 0) {", b"if ($out -eq '') {"), "without a $LASTEXITCODE check"),
    (RULED + b"vssadmin list shadows\n", "bare name"),
], ids=["eap", "alias", "alias-in-pipeline", "iex", "exit-code", "bare-native"])
def test_the_rules_catch_violations(broken, rule):
    assert any(rule in v[1] for v in rule_violations(broken)), rule_violations(broken)
