/**
 * The rung table: what each rung of the ladder does to the node, each owning its rule — restart the implicated
 * engines; reset the implicated GPUs with their engines stopped around the reset; restart the VM through the
 * hypervisor, a hung guest getting one hard reset; escalate to a human. What a rung needs of the node, and how long
 * its verification waits, are pure rules in src/domain/rungs.ts.
 */
import { ActivityFailure, CancellationScope, TimeoutFailure, isCancellation, patched } from '@temporalio/workflow';
import type { NodeFacts } from '../../activities/recovery';
import type { HealthReport } from '../../src/domain/classify';
import { parseDuration } from '../../src/domain/durations';
import {
  enginesOnGpu,
  escalationNotice,
  gpuResetOutcome,
  implicatedEngines,
  implicatedGpus,
} from '../../src/domain/incident';
import { RUNG_RULES, hardResetDue, runtimeAction, type ActionRung, type GuestRestart } from '../../src/domain/rungs';
import type { RungAttempt } from '../../src/contracts';
import { failureMessage, type RecoveryContext } from './context';

type Engine = NodeFacts['engines'][number];
type Vm = NonNullable<NodeFacts['vm']>;

/** One action rung: act on the node and verify; the health after it, or null when it did nothing to verify. */
export type RungPlay = (ctx: RecoveryContext, attempt: RungAttempt) => Promise<HealthReport | null>;

/** Verify after `rung` for as long as its rule says, counting only Xid events since the attempt began. */
function verifyAfter(ctx: RecoveryContext, attempt: RungAttempt, rung: ActionRung): Promise<HealthReport> {
  return ctx.verify(attempt.startedAt, ctx.input[RUNG_RULES[rung].verifyWithin]);
}

/** Restart the engines the problems implicate (all of them when none is named). */
const restartContainer: RungPlay = async (ctx, attempt) => {
  await ctx.actions(attempt, async () => {
    for (const e of implicatedEngines(ctx.facts.engines, ctx.current.problems)) {
      await ctx.act(attempt, runtimeAction('restart', e), () =>
        ctx.acts.node.restartContainer({ container: e.container, timeoutSec: ctx.stopSec }),
      );
    }
    return true;
  });
  return verifyAfter(ctx, attempt, 'restart-container');
};

/** Reset the GPUs the problems implicate; skipped when no GPU could be reset (the ladder climbs on). */
const resetGpu: RungPlay = async (ctx, attempt) => {
  const acted = await ctx.actions(attempt, async () => {
    let anyReset = false;
    for (const index of implicatedGpus(ctx.facts.gpus, ctx.current)) {
      if (await resetOneGpu(ctx, attempt, index)) anyReset = true;
    }
    return anyReset;
  });
  return acted ? verifyAfter(ctx, attempt, 'reset-gpu') : null;
};

/**
 * Runs begun before this rule stopped every engine before the reset's try, cancelled its commands without waiting
 * for them and restarted the engines in a cancellable scope: a failed stop restarted nothing, a cancel left them
 * stopped. Their histories replay that way; decided once per GPU.
 */
const ENGINES_RESTART_WHATEVER_HAPPENS = 'gpu-reset-restarts-engines-whatever-happens';

/**
 * Reset one GPU. A reset needs the GPU idle: its engines stop first, and each engine a stop was issued for starts
 * again whatever happens — a failed stop, a refused reset, or a cancelled recovery (the restarts run in a
 * non-cancellable scope, once the cancelled stop or reset has ended). Resolves to whether the GPU was reset.
 */
async function resetOneGpu(ctx: RecoveryContext, attempt: RungAttempt, index: number): Promise<boolean> {
  const whateverHappens = patched(ENGINES_RESTART_WHATEVER_HAPPENS);
  const node = whateverHappens ? ctx.acts.nodeAwaited : ctx.acts.node;
  const engines = enginesOnGpu(ctx.facts.engines, index);
  const stopped: Engine[] = [];
  const stopAll = async (): Promise<void> => {
    for (const e of engines) {
      stopped.push(e);
      await ctx.act(attempt, runtimeAction('stop', e), () =>
        node.stopContainer({ container: e.container, timeoutSec: ctx.stopSec }),
      );
    }
  };
  const startStopped = async (): Promise<void> => {
    for (const e of stopped) {
      await ctx.act(attempt, runtimeAction('start', e), () =>
        ctx.acts.nodeStart.startContainer({ container: e.container }),
      );
    }
  };
  if (!whateverHappens) await stopAll();
  try {
    if (whateverHappens) await stopAll();
    const answer = await ctx.act(
      attempt,
      `nvidia-smi --gpu-reset -i ${index}`,
      () => node.resetGpu({ index }),
      (r) => gpuResetOutcome(index, r).line,
    );
    const { impossible } = gpuResetOutcome(index, answer);
    if (impossible) attempt.detail = impossible;
    return answer.ok;
  } finally {
    await (whateverHappens ? CancellationScope.nonCancellable(startStopped) : startStopped());
  }
}

/**
 * Runs begun before the hung-guest rule lived in one place could hard-reset a guest a second time when it was still
 * unreachable after the first reset; their histories replay that way.
 */
const ONE_HARD_RESET = 'hung-guest-one-hard-reset';

/**
 * A reboot whose activity timed out (the control worker running it died, or its answer was lost) may well have
 * happened: runs since this patch wait for the node instead of hard-resetting at once, and the boot-timeout check
 * still resets a guest that does not come back. Runs begun before it reset at once; their histories replay that way.
 */
const REBOOT_UNKNOWN_WAITS = 'reboot-timeout-waits-for-boot';

/** The activity timed out: whatever it asked for may or may not have been done. */
const outcomeUnknown = (err: unknown): boolean => err instanceof ActivityFailure && err.cause instanceof TimeoutFailure;

/**
 * Restart the VM through its hypervisor and wait for the node to come back. The hung-guest rule (hardResetDue) is
 * asked twice, here only: after the reboot (refused, or its task timed out: hard reset; its activity timed out, so it
 * may have happened: wait) and after the boot timeout (still unreachable and not reset yet: hard reset) — one hard
 * reset, never a loop.
 */
const restartVm: RungPlay = async (ctx, attempt) => {
  const vm = ctx.facts.vm;
  if (!vm) return null;
  const guest: GuestRestart = { rebootOk: false, hardResets: 0 };
  const hardReset = async (): Promise<void> => {
    guest.hardResets++;
    await power(ctx, attempt, vm, 'reset');
  };
  await ctx.actions(attempt, async () => {
    let unknown = false;
    guest.rebootOk = await power(ctx, attempt, vm, 'reboot').catch((err: unknown) => {
      if (isCancellation(err)) throw err;
      unknown = outcomeUnknown(err) && patched(REBOOT_UNKNOWN_WAITS);
      return false;
    });
    if (!unknown && hardResetDue(guest, null)) await hardReset();
    return true;
  });
  let report = await verifyAfter(ctx, attempt, 'restart-vm');
  const after = { healthy: report.healthy, reachable: report.observation.reachable };
  const legacySecondReset =
    guest.hardResets > 0 && hardResetDue({ ...guest, hardResets: 0 }, after) && !patched(ONE_HARD_RESET);
  if (hardResetDue(guest, after) || legacySecondReset) {
    // Not under `actions`: as ever, a reset that fails here fails the recovery.
    await hardReset();
    report = await verifyAfter(ctx, attempt, 'restart-vm');
  }
  return report;
};

/** One power action on the VM, on the hypervisor's queue (qm) or through the Proxmox API. Whether it succeeded. */
async function power(ctx: RecoveryContext, attempt: RungAttempt, vm: Vm, action: 'reboot' | 'reset'): Promise<boolean> {
  if (vm.hypervisorType === 'qm') {
    const what = `qm ${action} ${vm.vmid} on ${vm.hypervisor}`;
    const r = await ctx.act(
      attempt,
      what,
      () => ctx.acts.qm(vm.hypervisor).qmPower({ vmid: vm.vmid, action }),
      (x) => `${what}: ${x.ok ? 'ok' : x.output}`,
    );
    return r.ok;
  }
  const what = `Proxmox ${action} VM ${vm.vmid} on ${vm.hypervisor}`;
  const upid = await ctx.act(
    attempt,
    what,
    () => ctx.acts.vmPower.vmPower({ hypervisor: vm.hypervisor, vmid: vm.vmid, action }),
    (u) => `${what}: ${u ?? 'already in state'}`,
  );
  if (upid === null) return true;
  const task = await ctx.act(
    attempt,
    `task ${upid}`,
    () =>
      ctx.acts.vmTask.waitVmTask({ hypervisor: vm.hypervisor, upid, timeoutMs: parseDuration(ctx.input.powerTimeout) }),
    (t) => `task ${t.status}${t.exitstatus ? ` (${t.exitstatus})` : ''}`,
  );
  return task.ok;
}

/** The action rungs, least to most disruptive. */
export const RUNG_TABLE: Readonly<Record<ActionRung, RungPlay>> = {
  'restart-container': restartContainer,
  'reset-gpu': resetGpu,
  'restart-vm': restartVm,
};

/**
 * The last rung: drain the node's engines in the router and notify a human, saying why and what was tried. Neither
 * failing stops the other, and neither ends the escalation (not even a cancel: a human hears of it); what failed is
 * recorded.
 */
export async function escalate(ctx: RecoveryContext, attempt: RungAttempt): Promise<void> {
  const { record, input } = ctx;
  const notice = escalationNotice({ ...record, problems: ctx.current.problems });
  const engines = ctx.facts.engines.map((e) => e.url);
  const escalation = {
    notified: [] as string[],
    notifyFailed: [] as string[],
    drained: [] as string[],
    detail: notice.why,
  };
  try {
    const d = await ctx.act(
      attempt,
      'drain engines',
      () => ctx.acts.control.drainEngines({ node: input.node, engines, reason: notice.why }),
      (x) => x.drained.map((u) => `drain ${u}`),
    );
    escalation.drained = d.drained;
    if (d.note) escalation.detail += `; ${d.note}`;
  } catch (err) {
    escalation.detail += `; drain failed: ${failureMessage(err)}`;
  }
  try {
    const n = await ctx.act(
      attempt,
      'notify',
      () =>
        ctx.acts.control.notify({
          title: notice.title,
          text: notice.text,
          severity: 'critical',
          fields: notice.fields,
        }),
      (x) => x.sent.map((s) => `notify ${s}`),
    );
    escalation.notified = n.sent;
    escalation.notifyFailed = n.failed.map((f) => `${f.name}: ${f.error}`);
  } catch (err) {
    escalation.notifyFailed = [`notify failed: ${failureMessage(err)}`];
  }
  record.escalation = escalation;
  attempt.outcome = 'skipped';
  attempt.detail = escalation.detail;
  attempt.endedAt = ctx.now();
  record.outcome = 'escalated';
}
