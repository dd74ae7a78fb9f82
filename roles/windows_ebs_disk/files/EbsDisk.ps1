# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# The single-disk steps of the CLUSTERPRO roles on a Windows server: one script for the three entry points of the
# windows_ebs_disk role, each run sent alone through ansible.windows.win_powershell, so the disk lookup is written
# once, here.
#   -Action Get      (entry point disks) Report the disks of the given EBS volumes: disk number, serial, Get-Disk
#                    Path, how the disk was found (found_by nvme-serial / pv-target, pv_target), offline/read-only
#                    state and, per partition, its number and drive letter. Changes nothing.
#   -Action Offline  (entry point offline; seed 001 restore, step 3) Take the disk of one volume offline before the
#                    volume is detached, never the disk that holds the running system; the drive letters of its
#                    partitions are returned so that step 4 can give them back (-Action Online -DriveLetter).
#   -Action Online   (entry point online; step 4) Bring the disk of the newly attached volume online, writable, and
#                    give its partitions the drive letters they had before the swap (the mirror's cluster partition
#                    and data partition letters, e.g. R: and M:). -DriveLetter maps partition number -> letter, as
#                    -Action Offline returned it. A letter held by a partition of another disk is refused, never
#                    taken away.
# Offline and Online take one -VolumeId and at most one -Device. Check mode: -WhatIf (win_powershell passes it when
# the task runs in check mode), nothing changes; the disks entry point runs with check_mode: false, it only reads.
# Disks are found by volume id in Get-Disk's SerialNumber (NVMe EBS: "vol0123..." without the dash), never by disk
# number. On a host with Xen PV disks (a Get-Disk Path holds PROD_PVDISK) and only then, -Device (the device name EC2
# reports each volume attached at, read on the controller; one per -VolumeId) gives the disk's location instead: the
# one disk at Win32_DiskDrive bus 0, target N, LUN 0 (AWS's table: /dev/sda1 is 0, xvdb..xvdz are 1..25) whose Path
# holds PROD_PVDISK and whose serial carries no volume id; any other device name is refused there. Without -Device,
# or on a host without PV disks, the lookup is by serial only.
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    [Parameter(Mandatory = $true)]
    [ValidateSet('Get', 'Offline', 'Online')]
    [string]$Action,

    [Parameter(Mandatory = $true)]
    [string[]]$VolumeId,

    [string[]]$Device = @(),

    [hashtable]$DriveLetter = @{}
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
        [string]$Action,
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
    if ($Action -eq 'Get' -and $found.Count -eq 0) {
        throw "No disk has the serial number of EBS volume $Id ($serial); is it attached to this instance?"
    }
    if ($Action -eq 'Get' -and $found.Count -gt 1) {
        throw "Several disks ($($found.Number -join ', ')) carry the serial of EBS volume $Id; refusing to guess."
    }
    if ($found.Count -ne 1) {
        $why = if ($Action -eq 'Offline') { 'refusing.' } else { 'is it attached?' }
        throw "Expected exactly one disk with the serial of $Id ($serial), found $($found.Count); $why"
    }
    return [pscustomobject]@{ Disk = $found[0]; PvTarget = $null }
}

if ($Action -ne 'Get') {
    # one volume: a list given here reads as one string (as a [string] parameter would), refused as an invalid id
    # (a device name likewise, refused on a PV host), before any disk is read
    $VolumeId = @("$VolumeId")
    $Device = @("$Device")
    $null = ConvertTo-EbsSerial -Id $VolumeId[0]
}
elseif ($Device.Count -gt 0 -and $Device.Count -ne $VolumeId.Count) {
    throw "Got $($Device.Count) device names for $($VolumeId.Count) volumes; give one per volume or none."
}
$all = @(Get-Disk)
$changed = $false

if ($Action -eq 'Get') {
    $output = for ($i = 0; $i -lt $VolumeId.Count; $i++) {
        $id = $VolumeId[$i]
        $where = if ($Device.Count -gt 0) { $Device[$i] } else { $null }
        $hit = Find-EbsDisk -Action $Action -Id $id -Where $where -Disks $all
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
}
else {
    $id = $VolumeId[0]
    $hit = Find-EbsDisk -Action $Action -Id $id -Where $Device[0] -Disks $all
    $disk = $hit.Disk
    $output = [ordered]@{
        volume_id   = $id
        disk_number = $disk.Number
        found_by    = if ($null -eq $hit.PvTarget) { 'nvme-serial' } else { 'pv-target' }
        pv_target   = $hit.PvTarget
    }
}

if ($Action -eq 'Offline') {
    if ($disk.IsBoot -or $disk.IsSystem) {
        throw "Disk $($disk.Number) of $id holds the running system; refusing to take it offline."
    }
    $letters = [ordered]@{}
    foreach ($part in @(Get-Partition -DiskNumber $disk.Number -ErrorAction SilentlyContinue)) {
        if ($part.DriveLetter -and $part.DriveLetter -ne [char]0) {
            $letters[[string]$part.PartitionNumber] = [string]$part.DriveLetter
        }
    }
    if (-not $disk.IsOffline) {
        if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($id)", 'Set-Disk -IsOffline $true')) {
            Set-Disk -Number $disk.Number -IsOffline $true
        }
        $changed = $true
    }
    $output['was_offline'] = [bool]$disk.IsOffline
    $output['drive_letters'] = $letters
}
elseif ($Action -eq 'Online') {
    if ($disk.IsOffline) {
        if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($id)", 'Set-Disk -IsOffline $false')) {
            Set-Disk -Number $disk.Number -IsOffline $false
        }
        $changed = $true
    }
    if ($disk.IsReadOnly) {
        if ($PSCmdlet.ShouldProcess("disk $($disk.Number) ($id)", 'Set-Disk -IsReadOnly $false')) {
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
            throw "Drive letter ${wanted}: is held by partition $($holder.PartitionNumber) of disk $($holder.DiskNumber), not by $id; free it first."
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
    $output['drive_letters'] = $moves
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = $changed
}
$output
