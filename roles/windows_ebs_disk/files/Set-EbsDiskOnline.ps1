# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Seed 001 restore, step 4 (Windows): bring the disk of the newly attached EBS volume online,
# writable, and give its partitions the drive letters they had before the swap (the mirror's
# cluster partition and data partition letters, e.g. R: and M:). The disk is found by volume id
# (Get-Disk SerialNumber), never by disk number. -DriveLetter maps partition number -> letter, as
# Set-EbsDiskOffline.ps1 returned it. A letter held by a partition of another disk is refused,
# never taken away. Check mode: -WhatIf.
# On a host with Xen PV disks (a Get-Disk Path holds PROD_PVDISK) and only then, -Device (the device name EC2
# reports the volume attached at, read on the controller) gives the disk's location instead: the one disk at
# Win32_DiskDrive bus 0, target N, LUN 0 (AWS's table: /dev/sda1 is 0, xvdb..xvdz are 1..25) whose Path holds
# PROD_PVDISK and whose serial carries no volume id; any other device name is refused there. Without -Device,
# or on a host without PV disks, the lookup is by serial only, as before.
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)]
    [string]$VolumeId,

    [string]$Device = '',

    [hashtable]$DriveLetter = @{}
)

$ErrorActionPreference = 'Stop'

function Get-PvTarget {
    param(
        [string]$Device,
        [string]$Id
    )
    # AWS, "Map non-NVMe disks on Amazon EC2 Windows instance to volumes", table "EBS volumes": bus 0, LUN 0,
    # target 0 is /dev/sda1, targets 1 to 25 are xvdb to xvdz; no other device name has an EBS location there.
    $bare = $Device.Trim().ToLowerInvariant()
    if ($bare.StartsWith('/dev/')) {
        $bare = $bare.Substring(5)
    }
    if ($bare -eq 'sda1') {
        return 0
    }
    if ($bare -match '^xvd([b-z])$') {
        return [int][char]$Matches[1] - [int][char]'a'
    }
    throw "EBS volume $Id is attached at '$Device', a device name AWS's table gives no Xen PV location (only /dev/sda1 and xvdb to xvdz); refusing to pick a disk on this host with Xen PV disks."
}

function Find-PvDisk {
    param(
        [string]$Id,
        [string]$Device,
        [object[]]$Disks
    )
    $target = Get-PvTarget -Device $Device -Id $Id
    $at = @(Get-CimInstance -ClassName Win32_DiskDrive | Where-Object {
            $_.SCSIBus -eq 0 -and $_.SCSITargetId -eq $target -and $_.SCSILogicalUnit -eq 0
        })
    if ($at.Count -ne 1) {
        throw "Expected exactly one disk at Xen PV bus 0, target $target, LUN 0 (where $Id is attached, $Device), found $($at.Count); refusing."
    }
    $deviceId = "$($at[0].DeviceID)".ToUpperInvariant()
    $found = @($Disks | Where-Object { "\\.\PHYSICALDRIVE$($_.Number)" -eq $deviceId })
    if ($found.Count -ne 1 -or "$($found[0].Path)" -notmatch 'PROD_PVDISK') {
        throw "The disk at Xen PV target $target ($deviceId) is not one Xen PV disk (Get-Disk found $($found.Count), Path '$($found.Path)'); refusing."
    }
    if ($found[0].SerialNumber -and ($found[0].SerialNumber.Trim() -match '^vol[0-9a-f]{8,17}(\b|_|$)')) {
        throw "The disk at Xen PV target $target carries an EBS volume id in its serial ($($found[0].SerialNumber)); refusing."
    }
    return [pscustomobject]@{ Disk = $found[0]; PvTarget = $target }
}

if ($VolumeId -notmatch '^vol-[0-9a-f]{8,17}$') {
    throw "Invalid EBS volume id '$VolumeId': expected vol- followed by 8 to 17 hex digits."
}
$serial = $VolumeId.Replace('-', '')
$all = @(Get-Disk)
$pvTarget = $null
if ($Device -and @($all | Where-Object { "$($_.Path)" -match 'PROD_PVDISK' }).Count -gt 0) {
    $hit = Find-PvDisk -Id $VolumeId -Device $Device -Disks $all
    $disk = $hit.Disk
    $pvTarget = $hit.PvTarget
}
else {
    $disks = @($all | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
    if ($disks.Count -ne 1) {
        throw "Expected exactly one disk with the serial of $VolumeId ($serial), found $($disks.Count); is it attached?"
    }
    $disk = $disks[0]
}
$changed = $false

if ($disk.IsOffline) {
    if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($VolumeId)", 'Set-Disk -IsOffline $false')) {
        Set-Disk -Number $disk.Number -IsOffline $false
    }
    $changed = $true
}
if ($disk.IsReadOnly) {
    if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($VolumeId)", 'Set-Disk -IsReadOnly $false')) {
        Set-Disk -Number $disk.Number -IsReadOnly $false
    }
    $changed = $true
}

$moves = @()
foreach ($key in $DriveLetter.Keys) {
    $number = [int]$key
    $wanted = ([string]$DriveLetter[$key]).TrimEnd(':').ToUpper()
    if ($wanted -notmatch '^[D-Z]$') {
        throw "Drive letter '$wanted' for partition $number is not one of D to Z."
    }
    $holder = Get-Partition -DriveLetter $wanted -ErrorAction SilentlyContinue
    if ($holder -and $holder.DiskNumber -ne $disk.Number) {
        throw "Drive letter ${wanted}: is held by partition $($holder.PartitionNumber) of disk $($holder.DiskNumber), not by $VolumeId; free it first."
    }
    $current = $null
    if (-not $disk.IsOffline -or -not $WhatIfPreference) {
        $current = Get-Partition -DiskNumber $disk.Number -PartitionNumber $number -ErrorAction SilentlyContinue
    }
    if ($current -and [string]$current.DriveLetter -eq $wanted) {
        continue
    }
    if ($PSCmdlet.ShouldProcess("partition $number of disk $($disk.Number)", "Set-Partition -NewDriveLetter $wanted")) {
        Set-Partition -DiskNumber $disk.Number -PartitionNumber $number -NewDriveLetter $wanted
    }
    $moves += [ordered]@{ partition_number = $number; drive_letter = $wanted }
    $changed = $true
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $changed
}
[ordered]@{
    volume_id     = $VolumeId
    disk_number   = $disk.Number
    found_by      = if ($null -eq $pvTarget) { 'nvme-serial' } else { 'pv-target' }
    pv_target     = $pvTarget
    drive_letters = $moves
}
