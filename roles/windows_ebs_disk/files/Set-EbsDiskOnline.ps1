# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Seed 001 restore, step 4 (Windows): bring the disk of the newly attached EBS volume online,
# writable, and give its partitions the drive letters they had before the swap (the mirror's
# cluster partition and data partition letters, e.g. R: and M:). The disk is found by volume id
# (Get-Disk SerialNumber), never by disk number. -DriveLetter maps partition number -> letter, as
# Set-EbsDiskOffline.ps1 returned it. A letter held by a partition of another disk is refused,
# never taken away. Check mode: -WhatIf.
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)]
    [string]$VolumeId,

    [hashtable]$DriveLetter = @{}
)

$ErrorActionPreference = 'Stop'

if ($VolumeId -notmatch '^vol-[0-9a-f]{8,17}$') {
    throw "Invalid EBS volume id '$VolumeId': expected vol- followed by 8 to 17 hex digits."
}
$serial = $VolumeId.Replace('-', '')
$disks = @(Get-Disk | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
if ($disks.Count -ne 1) {
    throw "Expected exactly one disk with the serial of $VolumeId ($serial), found $($disks.Count); is it attached?"
}
$disk = $disks[0]
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
    drive_letters = $moves
}
