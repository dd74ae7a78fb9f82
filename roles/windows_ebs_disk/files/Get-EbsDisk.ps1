# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Report the disks of the given EBS volumes: disk number, serial, offline/read-only state and, per
# partition, its number and drive letter. Disks are found by volume id in Get-Disk's SerialNumber
# (NVMe EBS: "vol0123..." without the dash), never by disk number. Changes nothing.
# Sent by the windows_ebs_disk role (entry point disks) through ansible.windows.win_powershell.
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string[]]$VolumeId
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

function Find-EbsDisk {
    param(
        [string]$Id
    )
    $serial = ConvertTo-EbsSerial -Id $Id
    $found = @(Get-Disk | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
    if ($found.Count -eq 0) {
        throw "No disk has the serial number of EBS volume $Id ($serial); is it attached to this instance?"
    }
    if ($found.Count -gt 1) {
        throw "Several disks ($($found.Number -join ', ')) carry the serial of EBS volume $Id; refusing to guess."
    }
    return $found[0]
}

$report = foreach ($id in $VolumeId) {
    $disk = Find-EbsDisk -Id $id
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
        serial      = $disk.SerialNumber.Trim()
        offline     = [bool]$disk.IsOffline
        read_only   = [bool]$disk.IsReadOnly
        partitions  = $parts
    }
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $false
}
$report
