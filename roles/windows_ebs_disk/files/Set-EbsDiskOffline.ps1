# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Seed 001 restore, step 3 (Windows): take the mirror disk offline before its EBS volume is
# detached. The disk is found by volume id (Get-Disk SerialNumber), never by disk number; the
# drive letters of its partitions are returned so that step 4 can give them back
# (Set-EbsDiskOnline.ps1 -DriveLetter). Check mode: -WhatIf (win_powershell passes it when the
# task runs in check mode), nothing changes.
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)]
    [string]$VolumeId
)

$ErrorActionPreference = 'Stop'

if ($VolumeId -notmatch '^vol-[0-9a-f]{8,17}$') {
    throw "Invalid EBS volume id '$VolumeId': expected vol- followed by 8 to 17 hex digits."
}
$serial = $VolumeId.Replace('-', '')
$disks = @(Get-Disk | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
if ($disks.Count -ne 1) {
    throw "Expected exactly one disk with the serial of $VolumeId ($serial), found $($disks.Count); refusing."
}
$disk = $disks[0]
if ($disk.IsBoot -or $disk.IsSystem) {
    throw "Disk $($disk.Number) of $VolumeId holds the running system; refusing to take it offline."
}

$letters = [ordered]@{}
foreach ($part in @(Get-Partition -DiskNumber $disk.Number -ErrorAction SilentlyContinue)) {
    if ($part.DriveLetter -and $part.DriveLetter -ne [char]0) {
        $letters[[string]$part.PartitionNumber] = [string]$part.DriveLetter
    }
}

$changed = $false
if (-not $disk.IsOffline) {
    if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($VolumeId)", 'Set-Disk -IsOffline $true')) {
        Set-Disk -Number $disk.Number -IsOffline $true
    }
    $changed = $true
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $changed
}
[ordered]@{
    volume_id     = $VolumeId
    disk_number   = $disk.Number
    was_offline   = [bool]$disk.IsOffline
    drive_letters = $letters
}
