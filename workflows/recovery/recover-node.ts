/**
 * recoverNode: the recovery ladder — restart the engine container → reset the GPU → restart the VM through the
 * hypervisor → escalate to a human — verifying health after each rung, within a per-node budget so it never loops.
 */
import { setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import { firstRung, ladderFrom, rungUnmet, type LadderRung } from '../../src/domain/rungs';
import { parseInput } from '../../src/domain/validation';
import { RecoverNodeInput, SEARCH_ATTRIBUTES, getIncidentQuery, type IncidentRecord } from '../../src/contracts';
import { RecoveryContext } from './context';
import { RUNG_TABLE, escalate } from './rungs';

/**
 * Recover a node: diagnose, then climb the ladder from the rung the fault calls for, verifying health after each
 * rung; escalate (drain + notify) when nothing helps or the budget is spent. One at a time per node
 * (ID `recover:<node>`). Start it from the UI, `gpuops recover <node>`, the watcher or the Alertmanager hook.
 */
export async function recoverNode(rawInput: RecoverNodeInput): Promise<IncidentRecord> {
  const input = parseInput(RecoverNodeInput, rawInput, 'recoverNode input');
  const ctx = new RecoveryContext(input);
  setHandler(getIncidentQuery, () => ctx.record);
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  ctx.stage('diagnosing', 'diagnosing');

  const initial = await ctx.diagnose();
  // The watcher asks for escalation when its probe rounds failed (it saw nothing); a diagnosis that sees the node
  // healthy overrules that: draining a healthy node's engines and paging for a failed probe would do harm.
  const overruled = input.startRung === 'escalate' && input.trigger.source === 'watcher' && initial.healthy;
  const start = firstRung(overruled ? undefined : input.startRung, initial.recommendedRung, ctx.record.budget.exceeded);
  if (start === 'none') {
    ctx.record.outcome = 'no-fault-found';
    return ctx.finish();
  }
  for (const rung of ladderFrom(start)) {
    if (await climb(ctx, rung)) break;
  }
  return ctx.finish();
}

/** One rung: escalate, skip it (its rule unmet), or act and verify. Resolves to whether the ladder ends here. */
async function climb(ctx: RecoveryContext, rung: LadderRung): Promise<boolean> {
  const attempt = ctx.begin(rung);
  if (rung === 'escalate') {
    await escalate(ctx, attempt);
    return true;
  }
  const unmet = rungUnmet(rung, { reachable: ctx.current.observation.reachable, hasVm: ctx.facts.vm !== null });
  const report = unmet === null ? await RUNG_TABLE[rung](ctx, attempt) : null;
  if (report === null) {
    ctx.skip(attempt, unmet);
    return false;
  }
  return ctx.judge(attempt, report);
}
