/** restoreBackup: a verified restore of one snapshot into a directory on the plan's node. */
import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { parseDuration } from '../../src/domain/durations';
import { parseInput } from '../../src/domain/validation';
import { RestoreBackupInput, SEARCH_ATTRIBUTES, type RestoreRecord } from '../../src/contracts';
import { restoreActivities } from './activities';

/**
 * Restore a snapshot of a plan (latest or by id) into a directory on the plan's node, verify the restored content,
 * and report the duration against the plan's RTO. Refuses a non-empty target unless `force`. Workflow ID
 * restore:<plan>:<snapshot>.
 */
export async function restoreBackup(rawInput: RestoreBackupInput): Promise<RestoreRecord> {
  const input = parseInput(RestoreBackupInput, rawInput, 'restoreBackup input');
  const plan = input.plan;
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.node, value: plan.node },
    { key: SEARCH_ATTRIBUTES.stage, value: 'restore' },
  ]);
  const t = input.timings;
  const acts = restoreActivities(plan.node, t);
  setCurrentDetails(
    `Restoring **${plan.id}** snapshot \`${input.snapshot}\` to \`${input.target}\` on **${plan.node}**`,
  );
  const started = Date.now();
  const r = await acts.resticRestore({
    plan: plan.id,
    repository: plan.repository,
    passwordFile: plan.passwordFile,
    snapshot: input.snapshot,
    target: input.target,
    force: input.force,
  });
  const durationMs = Date.now() - started;
  const rtoMs = plan.rto ? parseDuration(plan.rto) : null;
  const record: RestoreRecord = {
    plan: plan.id,
    node: plan.node,
    snapshotId: r.snapshotId,
    target: input.target,
    files: r.files,
    bytes: r.bytes,
    sha256: r.sha256,
    verified: true,
    durationMs,
    rtoMs,
    rtoBreached: rtoMs !== null && durationMs > rtoMs,
  };
  setCurrentDetails(
    `Restored **${plan.id}** snapshot \`${r.snapshotId}\`: ${r.files} files, ${r.bytes} bytes, verified, in ${durationMs} ms` +
      (rtoMs === null ? '' : ` (RTO ${plan.rto}: ${record.rtoBreached ? 'BREACHED' : 'met'})`),
  );
  return record;
}
