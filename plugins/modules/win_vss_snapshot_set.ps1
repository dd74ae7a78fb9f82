#!powershell
# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# The Windows half of stillpoint.snapshots.win_vss_snapshot_set. It only reads: the AwsVssComponents
# version, `vssadmin list writers`, Get-Disk with Win32_DiskDrive's SCSI location, the instance id (IMDSv2), diskpart's `list disk` / `detail disk` / `detail volume`,
# running ec2-vss-agent processes and the cluster service. It returns the raw text and objects; the
# controller's library (module_utils/_vss.py) parses and decides, where it is tested. Every native
# command's exit code is checked. Command lines and their sources: docs/windows-vss.md.

$ErrorActionPreference = 'Stop'

$spec = @{
    options = @{
        members = @{ type = 'list'; elements = 'str'; required = $true }
        report = @{ type = 'str'; default = 'preflight'; choices = @('preflight', 'writers') }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$module.Result.changed = $false

function Invoke-NativeText {
    param(
        [Parameter(Mandatory = $true)][string]$FilePath,
        [string[]]$ArgumentList = @()
    )
    $output = & $FilePath @ArgumentList 2>&1 | Out-String
    $rc = $LASTEXITCODE
    return [PSCustomObject]@{ rc = $rc; output = $output }
}

function Invoke-DiskpartScript {
    param(
        [Parameter(Mandatory = $true)][string[]]$Lines
    )
    $script = [System.IO.Path]::GetTempFileName()
    try {
        Set-Content -LiteralPath $script -Value $Lines -Encoding Ascii
        $diskpart = Join-Path -Path $env:SystemRoot -ChildPath 'System32\diskpart.exe'
        $output = & $diskpart /s $script 2>&1 | Out-String
        $rc = $LASTEXITCODE
        return [PSCustomObject]@{ rc = $rc; output = $output }
    }
    finally {
        Remove-Item -LiteralPath $script -Force -ErrorAction SilentlyContinue
    }
}

function Get-WriterText {
    $vssadmin = Join-Path -Path $env:SystemRoot -ChildPath 'System32\vssadmin.exe'
    $res = Invoke-NativeText -FilePath $vssadmin -ArgumentList @('list', 'writers')
    if ($res.rc -ne 0) {
        $module.FailJson("vssadmin list writers failed (rc=$($res.rc)): $($res.output)")
    }
    return $res.output
}

$module.Result.writers_output = Get-WriterText
if ($module.Params.report -eq 'writers') {
    $module.ExitJson()
}

try {
    $components = [System.Collections.Generic.List[object]]@()
    $keys = @('HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall',
        'HKLM:\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Uninstall')
    foreach ($key in $keys) {
        if (-not (Test-Path -LiteralPath $key)) {
            continue
        }
        foreach ($entry in Get-ChildItem -LiteralPath $key) {
            $props = Get-ItemProperty -LiteralPath $entry.PSPath
            $name = $props.PSObject.Properties['DisplayName']
            if ($null -ne $name -and "$($name.Value)" -like '*AwsVssComponents*') {
                $version = $props.PSObject.Properties['DisplayVersion']
                $components.Add(@{ source = 'uninstall'; name = "$($name.Value)"; version = "$(if ($null -ne $version) { $version.Value })" })
            }
        }
    }
    $agent = Join-Path -Path $env:ProgramFiles -ChildPath 'Amazon\AwsVssComponents\ec2-vss-agent.exe'
    if (Test-Path -LiteralPath $agent) {
        $components.Add(@{ source = 'file'; path = $agent; version = "$((Get-Item -LiteralPath $agent).VersionInfo.ProductVersion)" })
    }
    $module.Result.components = $components

    $module.Result.vss_processes = @(Get-Process -Name 'ec2-vss-agent' -ErrorAction SilentlyContinue |
        ForEach-Object { "$($_.ProcessName) (pid $($_.Id))" })
    $cluster = Get-Service -Name 'ClusSvc' -ErrorAction SilentlyContinue
    $module.Result.cluster_service = if ($null -ne $cluster) { "$($cluster.Status)" } else { $null }
    $module.Result.hostname = $env:COMPUTERNAME

    # Xen PV disks carry no volume id: their SCSI location (Win32_DiskDrive, matched to Get-Disk by DeviceID
    # \\.\PHYSICALDRIVE<Number>) and Get-Disk's Path are reported for the controller to map (module_utils/_vss.py)
    $drives = @{}
    foreach ($drive in @(Get-CimInstance -ClassName Win32_DiskDrive)) {
        $drives["$($drive.DeviceID)".ToUpperInvariant()] = $drive
    }
    $disks = @(Get-Disk | Sort-Object -Property Number)
    $module.Result.disks = @($disks | ForEach-Object {
            $drive = $drives["\\.\PHYSICALDRIVE$($_.Number)"]
            @{
                Number = [int]$_.Number
                SerialNumber = "$($_.SerialNumber)"
                FriendlyName = "$($_.FriendlyName)"
                OperationalStatus = "$($_.OperationalStatus -join ',')"
                IsOffline = [bool]$_.IsOffline
                IsReadOnly = [bool]$_.IsReadOnly
                PartitionStyle = "$($_.PartitionStyle)"
                BusType = "$($_.BusType)"
                Location = "$($_.Location)"
                Path = "$($_.Path)"
                SCSIBus = if ($null -ne $drive -and $null -ne $drive.SCSIBus) { [int]$drive.SCSIBus } else { $null }
                SCSITargetId = if ($null -ne $drive -and $null -ne $drive.SCSITargetId) { [int]$drive.SCSITargetId } else { $null }
                SCSILogicalUnit = if ($null -ne $drive -and $null -ne $drive.SCSILogicalUnit) { [int]$drive.SCSILogicalUnit } else { $null }
            }
        })

    # the instance this host is (IMDSv2): Xen PV disks are mapped through its block device mappings, and the
    # controller checks that the member volumes are attached to it. No answer is recorded, decided there.
    $module.Result.instance_id = $null
    $module.Result.imds_error = $null
    $imds = 'http://169.254.169.254'
    try {
        $token = Invoke-RestMethod -Method Put -Uri "$imds/latest/api/token" -TimeoutSec 5 -UseBasicParsing `
            -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '60' }
        $instanceId = Invoke-RestMethod -Uri "$imds/latest/meta-data/instance-id" -TimeoutSec 5 -UseBasicParsing `
            -Headers @{ 'X-aws-ec2-metadata-token' = "$token" }
        $module.Result.instance_id = "$instanceId"
    }
    catch {
        $module.Result.imds_error = "${imds}: $($_.Exception.Message)"
    }

    $lines = [System.Collections.Generic.List[string]]@('list disk')
    foreach ($disk in $disks) {
        $lines.Add("select disk $($disk.Number)")
        $lines.Add('detail disk')
    }
    $all = Invoke-DiskpartScript -Lines $lines
    if ($all.rc -ne 0) {
        $module.FailJson("diskpart list disk / detail disk failed (rc=$($all.rc)): $($all.output)")
    }
    $module.Result.diskpart_disks = $all.output

    $members = @{}
    $memberRc = @{}
    foreach ($member in $module.Params.members) {
        $target = $member.TrimEnd('\')
        if ($target -match '^[A-Za-z]:$') {
            $target = $target.Substring(0, 1)
        }
        $res = Invoke-DiskpartScript -Lines @("select volume=`"$target`"", 'detail volume')
        $members[$member] = $res.output
        $memberRc[$member] = $res.rc
    }
    $module.Result.diskpart_members = $members
    $module.Result.diskpart_members_rc = $memberRc
}
catch {
    $module.FailJson("gathering the VSS preflight facts failed: $($_.Exception.Message)", $_)
}

$module.ExitJson()
