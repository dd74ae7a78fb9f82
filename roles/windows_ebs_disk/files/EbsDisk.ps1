# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# The single-disk read of the CLUSTERPRO backup on a Windows server (entry point disks of the windows_ebs_disk role),
# sent alone through ansible.windows.win_powershell.
#   -Action Get      Report the disks of the given EBS volumes: disk number, serial, Get-Disk Path, how the disk was
#                    found (found_by nvme-serial / pv-target, pv_target), offline/read-only state and, per partition,
#                    its number and drive letter (what the catalog records as drive_letters). Changes nothing.
# The restore's disk steps (offline before the detach, online with the letters by partition number after the attach)
# are win_array_host's (Get-EbsArrayDisks.ps1, Set-EbsArrayDisks.ps1 beside this file; docs/clusterpro.md).
# Disks are found by volume id in Get-Disk's SerialNumber (NVMe EBS: "vol0123..." without the dash), never by disk
# number. On a host with Xen PV disks (a Get-Disk Path holds PROD_PVDISK) and only then, -Device (the device name EC2
# reports each volume attached at, read on the controller; one per -VolumeId) gives the disk's location instead: the
# one disk at Win32_DiskDrive bus 0, target N, LUN 0 (AWS's table: /dev/sda1 is 0, xvdb..xvdz are 1..25) whose Path
# holds PROD_PVDISK and whose serial carries no volume id; any other device name is refused there. Without -Device,
# or on a host without PV disks, the lookup is by serial only.
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [ValidateSet('Get')]
    [string]$Action,

    [Parameter(Mandatory = $true)]
    [string[]]$VolumeId,

    [string[]]$Device = @()
)

$ErrorActionPreference = 'Stop'

function ConvertTo-EbsSerial {
    param(
        [string]$Id
    )
    if ($Id -notmatch '^vol-[0-9a-f]{8,17}$') {
        throw "Invalid EBS volume id '$Id': expected vol- followed by 8 to 17 hex digits."
    }
    return $Id.Replace('-', '')
}

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

function Find-EbsDisk {
    param(
        [string]$Id,
        [string]$Where,
        [object[]]$Disks
    )
    $serial = ConvertTo-EbsSerial -Id $Id
    $pv = @($Disks | Where-Object { "$($_.Path)" -match 'PROD_PVDISK' })
    if ($Where -and $pv.Count -gt 0) {
        return Find-PvDisk -Id $Id -Device $Where -Disks $Disks
    }
    $found = @($Disks | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
    if ($found.Count -eq 0) {
        throw "No disk has the serial number of EBS volume $Id ($serial); is it attached to this instance?"
    }
    if ($found.Count -gt 1) {
        throw "Several disks ($($found.Number -join ', ')) carry the serial of EBS volume $Id; refusing to guess."
    }
    return [pscustomobject]@{ Disk = $found[0]; PvTarget = $null }
}

if ($Device.Count -gt 0 -and $Device.Count -ne $VolumeId.Count) {
    throw "Got $($Device.Count) device names for $($VolumeId.Count) volumes; give one per volume or none."
}
$all = @(Get-Disk)

$output = for ($i = 0; $i -lt $VolumeId.Count; $i++) {
    $id = $VolumeId[$i]
    $where = if ($Device.Count -gt 0) { $Device[$i] } else { $null }
    $hit = Find-EbsDisk -Id $id -Where $where -Disks $all
    $disk = $hit.Disk
    $parts = @(Get-Partition -DiskNumber $disk.Number -ErrorAction SilentlyContinue | ForEach-Object {
            [ordered]@{
                partition_number = $_.PartitionNumber
                drive_letter     = if ($_.DriveLetter -and $_.DriveLetter -ne [char]0) { [string]$_.DriveLetter } else { $null }
                size             = $_.Size
            }
        })
    [ordered]@{
        volume_id   = $id
        disk_number = $disk.Number
        serial      = "$($disk.SerialNumber)".Trim()
        path        = "$($disk.Path)"
        found_by    = if ($null -eq $hit.PvTarget) { 'nvme-serial' } else { 'pv-target' }
        pv_target   = $hit.PvTarget
        offline     = [bool]$disk.IsOffline
        read_only   = [bool]$disk.IsReadOnly
        partitions  = $parts
    }
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $false
}
$output
