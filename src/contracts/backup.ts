/**
 * The backup workflows' contract: runBackup (what a plan's Schedule starts), restoreBackup and backupReport, their
 * inputs and records. Workflow-safe (zod and src/domain only).
 */
import { defineQuery } from '@temporalio/workflow';
import { z } from 'zod';
import type { BackupOutcome } from '../../activities/backup';
import { DurationSchema, ReadDataSubsetSchema, commandArg, gpuopsId } from '../domain/schemas';
import { workflowContract } from './common';

const id = gpuopsId('an id');
const duration = DurationSchema;
const keep = z.int().min(0).optional();

/** The plan as runBackup needs it (gpuops.yaml's backup plan without its schedule). No secrets: paths only. */
export const BackupPlanInput = z.strictObject({
  id,
  node: id,
  what: z.enum(['model-store', 'vm-config', 'gpu-config', 'gpuops-config']),
  // Paths, repository and password file reach restic's command line or environment.
  paths: z.array(commandArg(z.string().min(1))).default([]),
  repository: commandArg(z.string().min(1))
    // Credentials in a URL would land in workflow history: they belong in files the node reads.
    .refine((r) => !/^[a-z0-9]+:.*\/\/[^/@\s]*:[^/@\s]*@/i.test(r), {
      message: 'must not embed credentials (user:password@); use the backend credential files',
    }),
  passwordFile: commandArg(z.string().min(1)),
  retention: z
    .strictObject({
      keepLast: keep,
      keepHourly: keep,
      keepDaily: keep,
      keepWeekly: keep,
      keepMonthly: keep,
      keepYearly: keep,
    })
    .default({}),
  rpo: duration,
  rto: duration.optional(),
  /** A local repository with less free space than this fails the pre-check (gpuops.yaml's minFree, in bytes). */
  minFreeBytes: z.int().min(0).optional(),
  verify: z
    .strictObject({ readDataSubset: ReadDataSubsetSchema.default('5%'), testRestore: z.boolean().default(false) })
    .default({ readDataSubset: '5%', testRestore: false }),
});

/** Timeouts, as parameters so tests run in seconds. */
const Timings = z
  .strictObject({
    /** How long the node worker has to pick up a step before the node counts as down. */
    pickupTimeout: duration.default('5m'),
    /** A backup or restore whose worker stops heartbeating this long is retried (on the restarted worker). */
    heartbeatTimeout: duration.default('60s'),
    /** Upper bound of one backup or restore attempt. */
    runTimeout: duration.default('12h'),
  })
  .default({ pickupTimeout: '5m', heartbeatTimeout: '60s', runTimeout: '12h' });

/** Input of runBackup (what `gpuops schedules sync` puts in the schedule's action). */
export const RunBackupInput = z.strictObject({
  plan: BackupPlanInput,
  /** vm-config plans: the node's VM (from nodes[].vm). */
  vm: z.strictObject({ hypervisor: id, vmid: z.int().min(100) }).optional(),
  /** Run the sample test restore even if the plan's verify policy does not ask for it. */
  testRestore: z.boolean().optional(),
  /** Send notifications on failure (default true). */
  notify: z.boolean().default(true),
  /** restic --limit-upload, KiB/s (bandwidth cap). */
  limitUploadKiB: z.int().min(1).optional(),
  timings: Timings,
});
export type RunBackupInput = z.input<typeof RunBackupInput>;

/** One step of a run, as it happened. */
export interface BackupStep {
  step: 'precheck' | 'vm-config' | 'backup' | 'forget' | 'check' | 'test-restore' | 'notify';
  ok: boolean;
  detail: string;
}

/** What one run did: the result of runBackup. */
export interface BackupRecord {
  plan: string;
  node: string;
  what: string;
  status: 'ok' | 'warning' | 'failed';
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  snapshotId: string | null;
  /** Repository created by this run (first run of the plan). */
  initialisedRepository: boolean;
  backup: BackupOutcome | null;
  retention: { kept: string[]; removed: string[] } | null;
  verify: {
    ok: boolean;
    readDataSubset: string;
    output: string;
    testRestore: { ok: boolean; compared: number; mismatches: string[] } | null;
  } | null;
  steps: BackupStep[];
}

/** Input of restoreBackup. */
export const RestoreBackupInput = z.strictObject({
  plan: BackupPlanInput,
  /** "latest" or a snapshot id (short or full). */
  snapshot: z
    .string()
    .regex(/^(latest|[0-9a-f]{8,64})$/, { message: 'must be "latest" or a snapshot id (8-64 hex digits)' })
    .default('latest'),
  /** Directory on the node to restore into. */
  target: commandArg(z.string().min(1, { message: 'must be a directory path' })),
  /** Restore into a non-empty target. */
  force: z.boolean().default(false),
  timings: Timings,
});
export type RestoreBackupInput = z.input<typeof RestoreBackupInput>;

/** Result of restoreBackup. */
export interface RestoreRecord {
  plan: string;
  node: string;
  snapshotId: string;
  target: string;
  files: number;
  bytes: number;
  /** sha256 over every restored file's path and content. */
  sha256: string;
  /** restic restore --verify passed. */
  verified: boolean;
  durationMs: number;
  rtoMs: number | null;
  /** Took longer than the plan's RTO. */
  rtoBreached: boolean;
}

/** Input of backupReport. */
export const BackupReportInput = z.strictObject({
  plan: BackupPlanInput,
  timings: Timings,
});
export type BackupReportInput = z.input<typeof BackupReportInput>;

/** Facts about one plan's repository, read on its node. */
export interface BackupReport {
  plan: string;
  snapshots: { id: string; time: string }[];
  repositorySizeBytes: number | null;
  error: string | null;
}

/** Query `record` on runBackup: the record so far (the steps done, the backup's outcome once it is in). */
export const getBackupRecordQuery = defineQuery<BackupRecord>('record');
/** runBackup, by typed reference (a plan's Schedule `backup:<plan>` starts it). */
export const runBackupWorkflow = workflowContract<RunBackupInput, BackupRecord>('runBackup');
/** restoreBackup, by typed reference. ID `restore:<plan>:<snapshot>` (workflowIds.restore). */
export const restoreBackupWorkflow = workflowContract<RestoreBackupInput, RestoreRecord>('restoreBackup');
/** backupReport, by typed reference. */
export const backupReportWorkflow = workflowContract<BackupReportInput, BackupReport>('backupReport');
