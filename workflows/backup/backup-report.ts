/** backupReport: a plan's snapshots and repository size, read on its node (for `gpuops backup status`). */
import { upsertSearchAttributes } from '@temporalio/workflow';
import { parseInput } from '../../src/domain/validation';
import { BackupReportInput, SEARCH_ATTRIBUTES, type BackupReport } from '../../src/contracts';
import { errMessage, reportActivities } from './activities';
import { recordBackupStanding } from './run-backup';

/** Read a plan's snapshots and repository size on its node (for `gpuops backup status`). Read-only. */
export async function backupReport(rawInput: BackupReportInput): Promise<BackupReport> {
  const input = parseInput(BackupReportInput, rawInput, 'backupReport input');
  const plan = input.plan;
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: plan.node }]);
  const acts = reportActivities(plan.node, input.timings.pickupTimeout);
  const repo = { plan: plan.id, repository: plan.repository, passwordFile: plan.passwordFile };
  try {
    const snaps = await acts.resticSnapshots(repo);
    const stats = await acts.resticStats(repo);
    if (snaps.length > 0) recordBackupStanding(plan.id, plan.rpo, Math.max(...snaps.map((s) => Date.parse(s.time))));
    return {
      plan: plan.id,
      snapshots: snaps.map((s) => ({ id: s.short_id, time: s.time })),
      repositorySizeBytes: stats.total_size,
      error: null,
    };
  } catch (err) {
    return { plan: plan.id, snapshots: [], repositorySizeBytes: null, error: errMessage(err) };
  }
}
