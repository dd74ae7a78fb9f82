# Copyright: stillpoint.snapshots contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Windows restore of an array (win_array_host, apply): runs the steps the controller planned
# (module_utils/_win_restore.py), in order, stopping at the first failure. Each disk is found again here,
# right before its change, never by a disk number sent from the controller: by the EBS volume id in Get-Disk's
# SerialNumber (NVMe), or, when the step gives a Xen PV location (pv_target; pv_targets beside a volume step's
# disks), as the one disk at Win32_DiskDrive bus 0, that target id, LUN 0 whose Get-Disk Path holds PROD_PVDISK
# (the controller computed the location from the device name the volume is attached at, AWS's table, and read
# the instance's block device mappings again just before sending the steps). A volume step names the diskpart
# volume number AND the EBS volumes it must lie on, checked with `detail volume` right before the change.
# Fixed command forms only (docs/windows-vss.md names their sources):
#   offline        diskpart: select disk N / offline disk        (never the boot or system disk)
#   online         diskpart: select disk N / online disk
#   clear_readonly diskpart: select disk N / attributes disk clear readonly
#   new_signature  diskpart: select disk N / uniqueid disk id=<8 hex digits | GUID>
#   import         diskpart: select disk N / import              (the disk's whole foreign group)
#   assign         diskpart: select volume V / assign letter=L | assign mount=<folder>; a step that names a partition
#                  (partition, offset: a restored basic disk's letters by partition number) first checks that
#                  Get-Partition's partition of that number on the disk starts at that offset and that diskpart's
#                  `select disk N` / `select partition P` / `detail partition` shows volume V on it
#   remove_letter  diskpart: select volume V / remove letter=L
#   chkdsk         chkdsk.exe <X:|folder>, without /f: read-only; the exit code is returned, not judged here
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [object[]]$Steps
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
        if ($rc -ne 0) {
            throw "diskpart ($($Line -join ' / ')) failed (rc=$rc): $output"
        }
        return $output
    }
    finally {
        Remove-Item -LiteralPath $script -Force -ErrorAction SilentlyContinue
    }
}

function Find-EbsDiskNumber {
    param(
        [string]$VolumeId
    )
    if ($VolumeId -notmatch '^vol-[0-9a-f]{8,17}$') {
        throw "Invalid EBS volume id '$VolumeId': expected vol- followed by 8 to 17 hex digits."
    }
    $serial = $VolumeId.Replace('-', '')
    $found = @(Get-Disk | Where-Object { $_.SerialNumber -and ($_.SerialNumber.Trim() -match "^$serial(\b|_|$)") })
    if ($found.Count -ne 1) {
        throw "Expected exactly one disk with the serial of $VolumeId ($serial), found $($found.Count); refusing."
    }
    return $found[0]
}

function Find-PvDiskNumber {
    param(
        [string]$VolumeId,
        [int]$Target
    )
    $at = @(Get-CimInstance -ClassName Win32_DiskDrive | Where-Object {
            $_.SCSIBus -eq 0 -and $_.SCSITargetId -eq $Target -and $_.SCSILogicalUnit -eq 0
        })
    if ($at.Count -ne 1) {
        throw "Expected exactly one disk at Xen PV bus 0, target $Target, LUN 0 (where $VolumeId is attached), found $($at.Count); refusing."
    }
    $deviceId = "$($at[0].DeviceID)".ToUpperInvariant()
    $found = @(Get-Disk | Where-Object { "\\.\PHYSICALDRIVE$($_.Number)" -eq $deviceId })
    if ($found.Count -ne 1 -or "$($found[0].Path)" -notmatch 'PROD_PVDISK') {
        throw "The disk at Xen PV target $Target ($deviceId) is not one Xen PV disk (Get-Disk found $($found.Count), Path '$($found.Path)'); refusing."
    }
    if ($found[0].SerialNumber -and ($found[0].SerialNumber.Trim() -match '^vol[0-9a-f]{8,17}(\b|_|$)')) {
        throw "The disk at Xen PV target $Target carries an EBS volume id in its serial ($($found[0].SerialNumber)); refusing."
    }
    return $found[0]
}

function Find-StepDisk {
    param(
        [string]$VolumeId,
        [object]$PvTarget
    )
    if ($null -eq $PvTarget) {
        return Find-EbsDiskNumber -VolumeId $VolumeId
    }
    return Find-PvDiskNumber -VolumeId $VolumeId -Target ([int]$PvTarget)
}

function Assert-VolumeOnDisk {
    param(
        [int]$Volume,
        [string[]]$VolumeId,
        [object[]]$PvTarget = @()
    )
    $numbers = @(for ($i = 0; $i -lt $VolumeId.Count; $i++) {
            $target = if ($i -lt $PvTarget.Count) { $PvTarget[$i] } else { $null }
            (Find-StepDisk -VolumeId $VolumeId[$i] -PvTarget $target).Number
        })
    $want = @($numbers | Sort-Object)
    $detail = Invoke-Diskpart -Line @("select volume $Volume", 'detail volume')
    $have = @([regex]::Matches($detail, '(?m)^\s*\*?\s*Disk (\d+)\s') | ForEach-Object { [int]$_.Groups[1].Value } |
            Sort-Object)
    if (($want -join ',') -ne ($have -join ',')) {
        throw "Volume $Volume lies on disk(s) $($have -join ', '), not on the disks of $($VolumeId -join ', ') ($($want -join ', ')); refusing."
    }
}

function Assert-PartitionVolume {
    param(
        [int]$Volume,
        [string]$VolumeId,
        [object]$PvTarget,
        [int]$Partition,
        [int64]$Offset
    )
    $disk = Find-StepDisk -VolumeId $VolumeId -PvTarget $PvTarget
    $part = Get-Partition -DiskNumber $disk.Number -PartitionNumber $Partition
    if ([int64]$part.Offset -ne $Offset) {
        throw "Partition $Partition of disk $($disk.Number) ($VolumeId) starts at $($part.Offset), not at $Offset as read before; refusing."
    }
    $detail = Invoke-Diskpart -Line @("select disk $($disk.Number)", "select partition $Partition", 'detail partition')
    $have = @([regex]::Matches($detail, '(?m)^\s*\*?\s*Volume (\d+)\s') | ForEach-Object { [int]$_.Groups[1].Value })
    if (($have -join ',') -ne "$Volume") {
        throw "Partition $Partition of disk $($disk.Number) ($VolumeId) holds volume(s) $($have -join ', '), not volume $Volume; refusing."
    }
}

$results = [System.Collections.Generic.List[object]]@()
foreach ($step in $Steps) {
    $op = [string]$step.op
    $record = [ordered]@{ op = $op; rc = 0; output = '' }
    if ($op -in @('offline', 'online', 'clear_readonly', 'new_signature', 'import')) {
        $disk = Find-StepDisk -VolumeId ([string]$step.volume_id) -PvTarget $step.pv_target
        $record.volume_id = [string]$step.volume_id
        $record.disk_number = [int]$disk.Number
        $select = "select disk $($disk.Number)"
        if ($op -eq 'offline') {
            if ($disk.IsBoot -or $disk.IsSystem) {
                throw "Disk $($disk.Number) of $($step.volume_id) holds the running system; refusing to take it offline."
            }
            $record.output = Invoke-Diskpart -Line @($select, 'offline disk')
        }
        elseif ($op -eq 'online') {
            $record.output = Invoke-Diskpart -Line @($select, 'online disk')
        }
        elseif ($op -eq 'clear_readonly') {
            $record.output = Invoke-Diskpart -Line @($select, 'attributes disk clear readonly')
        }
        elseif ($op -eq 'new_signature') {
            $id = [string]$step.id
            if ($id -notmatch '^([0-9a-fA-F]{8}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$') {
                throw "Invalid disk id '$id': 8 hex digits (MBR signature) or a GUID (GPT)."
            }
            $record.output = Invoke-Diskpart -Line @($select, "uniqueid disk id=$id")
        }
        else {
            $record.output = Invoke-Diskpart -Line @($select, 'import')
        }
    }
    elseif ($op -in @('assign', 'remove_letter')) {
        $volume = [int]$step.volume
        Assert-VolumeOnDisk -Volume $volume -VolumeId ([string[]]$step.disks) -PvTarget @($step.pv_targets)
        if ($null -ne $step.partition) {
            $target = if (@($step.pv_targets).Count -gt 0) { @($step.pv_targets)[0] } else { $null }
            Assert-PartitionVolume -Volume $volume -VolumeId ([string]@($step.disks)[0]) -PvTarget $target `
                -Partition ([int]$step.partition) -Offset ([int64]$step.offset)
            $record.partition = [int]$step.partition
        }
        $record.volume = $volume
        if ($op -eq 'remove_letter') {
            $record.output = Invoke-Diskpart -Line @("select volume $volume", "remove letter=$($step.letter)")
        }
        elseif ($step.letter) {
            $record.output = Invoke-Diskpart -Line @("select volume $volume", "assign letter=$($step.letter)")
        }
        else {
            $folder = [string]$step.mount
            if (-not (Test-Path -LiteralPath $folder)) {
                New-Item -ItemType Directory -Path $folder | Out-Null
            }
            $record.output = Invoke-Diskpart -Line @("select volume $volume", "assign mount=`"$folder`"")
        }
    }
    elseif ($op -eq 'chkdsk') {
        $chkdsk = Join-Path -Path $env:SystemRoot -ChildPath 'System32\chkdsk.exe'
        $output = & $chkdsk ([string]$step.path) 2>&1 | Out-String
        $record.rc = $LASTEXITCODE
        $record.output = $output
        $record.path = [string]$step.path
    }
    else {
        throw "Unknown step '$op'."
    }
    $results.Add($record)
}

if (Get-Variable -Name Ansible -ErrorAction SilentlyContinue) {
    $Ansible.Changed = @($results | Where-Object { $_.op -ne 'chkdsk' }).Count -gt 0
}
[ordered]@{ results = $results }
