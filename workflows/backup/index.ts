/**
 * Backups: runBackup (one run of a plan, started by its Temporal Schedule `backup:<plan>`), restoreBackup (a
 * verified restore, workflow ID restore:<plan>:<snapshot>) and backupReport (read-only facts for `gpuops backup
 * status`). restic runs on the node's queue; the VM config comes from the hypervisor side (the Proxmox API on the
 * control worker); failures notify.
 */
export { runBackup } from './run-backup';
export { restoreBackup } from './restore-backup';
export { backupReport } from './backup-report';
