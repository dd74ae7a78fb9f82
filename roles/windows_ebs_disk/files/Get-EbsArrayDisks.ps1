# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Windows restore of an array (win_array_host, gather): reads and returns raw facts, changes nothing.
# Get-Disk (serial number = EBS volume id on NVMe, Path (PROD_PVDISK marks a Xen PV disk), offline state and
# reason, partition style, signature/GUID) with Win32_DiskDrive's SCSI location (bus, target id, LUN: where a
# Xen PV disk sits, matched to Get-Disk by DeviceID \\.\PHYSICALDRIVE<Number> as win_vss_snapshot_set.ps1 does),
# one diskpart run of `list disk` + `list volume`, one of `select disk N` + `detail disk` per disk and
# `select volume N` + `detail volume` per volume, and `select volume=<path>` + `detail volume` per path asked
# for (drive letter or mount folder). With -Identify, or whenever a Xen PV disk is present (the controller maps
# PV disks through the block device mappings of the instance the metadata names), the instance id from the
# instance metadata (IMDSv2); with -SkipMetadata (the controller was given the device names of the volumes) a PV disk
# does not make it ask. With -PartitionDisk (disk numbers of restored basic disks whose partitions get drive letters by
# partition number), Get-Partition of each of those disks (number, offset, drive letter) and one diskpart run of
# `select disk N` + `select partition P` + `detail partition` per partition (its offset and the volume on it).
# The controller (module_utils/_win_restore.py) parses and decides. Sources: docs/windows-vss.md.
[CmdletBinding()]
param(
    [string[]]$Path = @(),

    [switch]$Identify,

    [string]$ImdsEndpoint = '',

    [switch]$SkipMetadata,

    [int[]]$PartitionDisk = @()
)

$ErrorActionPreference = 'Stop'

function Invoke-Diskpart {
    param(
        [Parameter(Mandatory = $true)]
        [string[]]$Line
    )
    $script = [System.IO.Path]::GetTempFileName()
    try {
        Set-Content -LiteralPath $script -Value $Line -Encoding Ascii
        $diskpart = Join-Path -Path $env:SystemRoot -ChildPath 'System32\diskpart.exe'
        $output = & $diskpart /s $script 2>&1 | Out-String
        $rc = $LASTEXITCODE
        return [PSCustomObject]@{ rc = $rc; output = $output }
    }
    finally {
        Remove-Item -LiteralPath $script -Force -ErrorAction SilentlyContinue
    }
}

function Read-Diskpart {
    # one diskpart run of reading lines (none: no run); a non-zero exit code fails the script, saying what was read
    param(
        [string[]]$Line = @(),

        [Parameter(Mandatory = $true)]
        [string]$What
    )
    if ($Line.Count -eq 0) {
        return ''
    }
    $res = Invoke-Diskpart -Line $Line
    if ($res.rc -ne 0) {
        throw "diskpart $What failed (rc=$($res.rc)): $($res.output)"
    }
    return $res.output
}

$drives = @{}
foreach ($drive in @(Get-CimInstance -ClassName Win32_DiskDrive)) {
    $drives["$($drive.DeviceID)".ToUpperInvariant()] = $drive
}
$disks = @(Get-Disk | Sort-Object -Property Number | ForEach-Object {
        $drive = $drives["\\.\PHYSICALDRIVE$($_.Number)"]
        [ordered]@{
            Number         = [int]$_.Number
            SerialNumber   = "$($_.SerialNumber)"
            Path           = "$($_.Path)"
            IsOffline      = [bool]$_.IsOffline
            IsReadOnly     = [bool]$_.IsReadOnly
            OfflineReason  = if ($_.IsOffline) { "$($_.OfflineReason)" } else { $null }
            PartitionStyle = "$($_.PartitionStyle)"
            Signature      = if ($null -ne $_.Signature) { '{0:x8}' -f [uint32]$_.Signature } else { $null }
            Guid           = "$($_.Guid)"
            IsBoot         = [bool]$_.IsBoot
            IsSystem       = [bool]$_.IsSystem
            SCSIBus        = if ($null -ne $drive -and $null -ne $drive.SCSIBus) { [int]$drive.SCSIBus } else { $null }
            SCSITargetId   = if ($null -ne $drive -and $null -ne $drive.SCSITargetId) { [int]$drive.SCSITargetId } else { $null }
            SCSILogicalUnit = if ($null -ne $drive -and $null -ne $drive.SCSILogicalUnit) { [int]$drive.SCSILogicalUnit } else { $null }
        }
    })
$pvDisks = @($disks | Where-Object { $_.Path -match 'PROD_PVDISK' })

$lists = Read-Diskpart -Line @('list disk', 'list volume') -What 'list disk / list volume'
$numbers = @([regex]::Matches($lists, '(?m)^\s*\*?\s*Volume (\d+)\s') | ForEach-Object { [int]$_.Groups[1].Value } |
        Sort-Object -Unique)
$lines = [System.Collections.Generic.List[string]]@()
foreach ($disk in $disks) {
    $lines.Add("select disk $($disk.Number)")
    $lines.Add('detail disk')
}
foreach ($number in $numbers) {
    $lines.Add("select volume $number")
    $lines.Add('detail volume')
}
$details = Read-Diskpart -Line $lines -What 'detail disk / detail volume'

# a path with no volume behind it makes diskpart fail: recorded (rc, output), decided by the controller
$paths = @{}
foreach ($item in $Path) {
    $target = $item.TrimEnd('\')
    if ($target -match '^[A-Za-z]:$') {
        $target = $target.Substring(0, 1)
    }
    $res = Invoke-Diskpart -Line @("select volume=`"$target`"", 'detail volume')
    $paths[$item] = @{ rc = $res.rc; output = $res.output }
}

$partitions = [System.Collections.Generic.List[object]]@()
$partLines = [System.Collections.Generic.List[string]]@()
foreach ($number in $PartitionDisk) {
    foreach ($part in @(Get-Partition -DiskNumber $number | Sort-Object -Property PartitionNumber)) {
        $partitions.Add([ordered]@{
                DiskNumber      = [int]$number
                PartitionNumber = [int]$part.PartitionNumber
                Offset          = [int64]$part.Offset
                DriveLetter     = if ($part.DriveLetter -and $part.DriveLetter -ne [char]0) { [string]$part.DriveLetter } else { $null }
            })
        $partLines.Add("select disk $number")
        $partLines.Add("select partition $($part.PartitionNumber)")
        $partLines.Add('detail partition')
    }
}
$partitionText = Read-Diskpart -Line $partLines -What 'detail partition'

$instanceId = $null
$imdsError = $null
if ($Identify -or ($pvDisks.Count -gt 0 -and -not $SkipMetadata)) {
    $base = if ($ImdsEndpoint) { $ImdsEndpoint.TrimEnd('/') } else { 'http://169.254.169.254' }
    try {
        $token = Invoke-RestMethod -Method Put -Uri "$base/latest/api/token" -TimeoutSec 5 -UseBasicParsing `
            -Headers @{ 'X-aws-ec2-metadata-token-ttl-seconds' = '60' }
        $instanceId = Invoke-RestMethod -Uri "$base/latest/meta-data/instance-id" -TimeoutSec 5 -UseBasicParsing `
            -Headers @{ 'X-aws-ec2-metadata-token' = "$token" }
    }
    catch {
        $imdsError = "${base}: $($_.Exception.Message)"
    }
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $false
}
[ordered]@{
    computer_name  = $env:COMPUTERNAME
    instance_id    = if ($instanceId) { "$instanceId" } else { $null }
    imds_error     = $imdsError
    disks          = $disks
    diskpart       = $lists + $details
    diskpart_paths = $paths
    partitions     = $partitions
    diskpart_partitions = $partitionText
}
