/**
 * Failure recovery. `watchNode` probes a node forever (continue-as-new keeps its history bounded) and starts
 * `recoverNode` when a fault persists; `recoverNode` climbs the ladder — restart the engine container → reset the GPU
 * → restart the VM through the hypervisor → escalate to a human — verifying health after each rung, within a per-node
 * budget so it never loops. Both are plain workflow code: every action is an activity on the right queue.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import {
  ApplicationFailure,
  ParentClosePolicy,
  allHandlersFinished,
  condition,
  continueAsNew,
  patched,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { z } from 'zod';
import type * as controlActivities from '../activities/control';
import type * as hypervisorActivities from '../activities/hypervisor';
import type * as nodeActivities from '../activities/node';
import type { NodeFacts } from '../activities/recovery';
import { restartLoopProblems, type HealthReport, type Problem } from '../src/domain/classify';
import { parseDuration } from '../src/domain/durations';
import { RUNGS, rungIndex, runtimeAction, type Rung } from '../src/domain/rungs';
import { parseInput } from '../src/domain/validation';
import {
  MaintenanceInput,
  RecoverNodeInput,
  SEARCH_ATTRIBUTES,
  WatchNodeInput,
  getIncidentQuery,
  getWatchStatusQuery,
  hypervisorTaskQueue,
  nodeTaskQueue,
  setMaintenanceUpdate,
  workflowIds,
  type IncidentRecord,
  type MaintenanceWindow,
  type ProblemSummary,
  type RungAttempt,
  type SetMaintenanceInput,
  type WatchStatus,
} from '../src/contracts';
import { probeNode } from './probe';

type ControlActivities = ReturnType<typeof controlActivities.createControlActivities>;
type NodeActivities = ReturnType<typeof nodeActivities.createNodeActivities>;
type HypervisorActivities = ReturnType<typeof hypervisorActivities.createHypervisorActivities>;

// ---------------------------------------------------------------------------------------------------------------
// recoverNode
// ---------------------------------------------------------------------------------------------------------------

function summarize(r: HealthReport): ProblemSummary {
  return {
    at: r.observedAt,
    healthy: r.healthy,
    reachable: r.observation.reachable,
    recommendedRung: r.recommendedRung,
    problems: r.problems,
  };
}

/** Engines a set of problems implicates (by engine or container name); all engines when none is named. */
function implicatedEngines(facts: NodeFacts, problems: Problem[]): NodeFacts['engines'] {
  const named = facts.engines.filter((e) => problems.some((p) => p.subject === e.name || p.subject === e.container));
  return named.length ? named : facts.engines;
}

/** GPU indices a set of problems implicates (gpuN subjects or PCI bus ids); all GPUs when none is named. */
function implicatedGpus(facts: NodeFacts, report: HealthReport): number[] {
  const busToIndex = new Map(report.observation.gpus.map((g) => [g.pciBusId.toLowerCase(), g.index]));
  const out = new Set<number>();
  for (const p of report.problems) {
    const m = /^gpu(\d+)$/.exec(p.subject);
    if (m?.[1]) out.add(Number(m[1]));
    for (const [bus, idx] of busToIndex) if (bus.endsWith(p.subject.toLowerCase())) out.add(idx);
  }
  return out.size ? [...out] : facts.gpus;
}

/**
 * Recover a node: diagnose, then climb the ladder from the rung the fault calls for, verifying health after each
 * rung; escalate (drain + notify) when nothing helps or the budget is spent. One at a time per node
 * (ID `recover:<node>`). Start it from the UI, `gpuops recover <node>`, the watcher or the Alertmanager hook.
 */
export async function recoverNode(rawInput: RecoverNodeInput): Promise<IncidentRecord> {
  const input = parseInput(RecoverNodeInput, rawInput, 'recoverNode input');
  const info = workflowInfo();
  const now = (): string => new Date(Date.now()).toISOString();
  const record: IncidentRecord = {
    node: input.node,
    reason: input.reason,
    trigger: input.trigger,
    startedAt: now(),
    endedAt: null,
    outcome: 'in-progress',
    budget: { used: 0, max: input.maxRecoveries, window: input.budgetWindow, exceeded: false },
    initial: null,
    evidence: { xids: [], probes: [] },
    rungs: [],
    final: null,
    escalation: null,
  };
  setHandler(getIncidentQuery, () => record);
  const stage = (s: string, details: string): void => {
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.stage, value: s }]);
    setCurrentDetails(`Recovering **${input.node}** — ${details}`);
  };
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  stage('diagnosing', 'diagnosing');

  const control = proxyActivities<ControlActivities>({
    startToCloseTimeout: '30s',
    retry: { maximumAttempts: 5, initialInterval: '1s' },
  });
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeTaskQueue(input.node),
    scheduleToStartTimeout: input.pickupTimeout,
    // docker stop/restart wait for the engine to exit; a GPU reset can take a while.
    startToCloseTimeout: '3m',
    retry: { maximumAttempts: 3, initialInterval: '1s' },
  });
  // VM power actions are never retried automatically: a retry after a lost answer would reboot twice. The workflow
  // instead watches whether the node comes back, and falls back to a hard reset once.
  const vmPower = proxyActivities<ControlActivities>({
    startToCloseTimeout: '1m',
    retry: { maximumAttempts: 1 },
  });

  const facts = await control.nodeFacts({ node: input.node });
  const probeOpts = (since: string) => ({
    generate: input.generate,
    expectedGpus: facts.gpus.length || undefined,
    xidSince: since,
    pickupTimeout: input.pickupTimeout,
    probeTimeout: input.probeTimeout,
  });

  // Budget: every recoverNode run for this node in the window counts, whoever started it.
  const windowStart = new Date(Date.now() - parseDuration(input.budgetWindow)).toISOString();
  record.budget.used = await control.countRecentRecoveries({
    node: input.node,
    since: windowStart,
    excludeRunId: info.runId,
  });
  record.budget.exceeded = record.budget.used >= input.maxRecoveries;

  const initial = await probeNode(input.node, probeOpts(new Date(Date.now() - 10 * 60_000).toISOString()));
  record.initial = summarize(initial);
  record.evidence = {
    xids: initial.observation.xids.map((x) => ({ xid: x.xid, message: x.message, time: x.time })),
    probes: initial.problems.map((p) => `${p.kind} ${p.subject}: ${p.detail}`),
  };

  let start: Rung = input.startRung ?? initial.recommendedRung;
  if (start === 'none') {
    record.outcome = 'no-fault-found';
    record.final = record.initial;
    record.endedAt = now();
    stage('no-fault-found', 'no fault found; nothing done');
    return record;
  }
  if (record.budget.exceeded) start = 'escalate';

  /** Probe until healthy or the deadline; the last report either way. */
  const verify = async (since: string, timeout: string): Promise<HealthReport> => {
    const deadline = Date.now() + parseDuration(timeout);
    let last = await probeNode(input.node, probeOpts(since));
    while (!last.healthy && Date.now() < deadline) {
      await sleep(input.verifyInterval);
      last = await probeNode(input.node, probeOpts(since));
    }
    return last;
  };

  const stopSec = Math.max(1, Math.round(parseDuration(input.containerStopTimeout) / 1000));
  let current = initial;
  for (const rung of RUNGS.slice(rungIndex(start))) {
    if (rung === 'none') continue;
    const attempt: RungAttempt = { rung, startedAt: now(), endedAt: '', actions: [], outcome: 'failed', detail: '' };
    record.rungs.push(attempt);
    stage(rung, `rung **${rung}**`);

    if (rung === 'escalate') {
      record.escalation = await escalate(input.node, facts, record, current, control);
      attempt.actions.push(
        ...record.escalation.drained.map((d) => `drain ${d}`),
        ...record.escalation.notified.map((n) => `notify ${n}`),
      );
      attempt.outcome = 'skipped';
      attempt.detail = record.escalation.detail;
      attempt.endedAt = now();
      record.outcome = 'escalated';
      break;
    }

    const since = attempt.startedAt;
    try {
      if (rung === 'restart-container') {
        if (!current.observation.reachable) {
          attempt.outcome = 'skipped';
          attempt.detail = 'node unreachable: container actions need its node worker';
        } else {
          for (const e of implicatedEngines(facts, current.problems)) {
            await node.restartContainer({ container: e.container, timeoutSec: stopSec });
            attempt.actions.push(runtimeAction('restart', e));
          }
        }
      } else if (rung === 'reset-gpu') {
        if (!current.observation.reachable) {
          attempt.outcome = 'skipped';
          attempt.detail = 'node unreachable: a GPU reset needs its node worker';
        } else {
          const done = await resetGpus(node, facts, implicatedGpus(facts, current), attempt, stopSec);
          if (!done) attempt.outcome = 'skipped';
        }
      } else if (rung === 'restart-vm') {
        if (!facts.vm) {
          attempt.outcome = 'skipped';
          attempt.detail = 'the node has no vm in gpuops.yaml: gpuops cannot power-cycle it';
        } else {
          await restartVm(facts.vm, input, attempt, vmPower);
        }
      }
    } catch (err) {
      attempt.actions.push(`failed: ${(err as Error).message}`);
      attempt.detail = `action failed: ${(err as Error).message}`;
    }

    if (attempt.outcome === 'skipped') {
      attempt.endedAt = now();
      continue;
    }
    const timeout = rung === 'restart-vm' ? input.bootTimeout : input.verifyTimeout;
    current = await verify(since, timeout);
    if (!current.healthy && rung === 'restart-vm' && facts.vm && !current.observation.reachable) {
      // A guest that ignored the reboot (hung) gets one hard reset, never a loop.
      await powerAndWait(facts.vm, 'reset', input, attempt, vmPower);
      current = await verify(since, input.bootTimeout);
    }
    attempt.endedAt = now();
    if (current.healthy) {
      attempt.outcome = 'healthy';
      attempt.detail ||= 'verified healthy';
      record.outcome = 'recovered';
      // A node drained by an earlier escalation goes back into the router once it is verified healthy.
      const undrained = await control.undrainEngines({ node: input.node, engines: facts.engines.map((e) => e.url) });
      attempt.actions.push(undrained.note ?? `undrained ${undrained.drained.join(', ') || 'nothing'}`);
      break;
    }
    attempt.outcome = 'still-faulty';
    attempt.detail ||= `still faulty after ${rung}: ${current.problems.map((p) => p.kind).join(', ')}`;
  }

  record.final = summarize(current);
  record.endedAt = now();
  stage(record.outcome, `${record.outcome} after ${record.rungs.map((r) => r.rung).join(' → ')}`);
  return record;
}

async function resetGpus(
  node: NodeActivities,
  facts: NodeFacts,
  gpus: number[],
  attempt: RungAttempt,
  stopSec: number,
): Promise<boolean> {
  let anyReset = false;
  for (const index of gpus) {
    // A reset needs the GPU idle: stop the engines on it first, and start them again whatever happens.
    const engines = facts.engines.filter((e) => e.gpus.includes(index) || e.gpus.length === 0);
    for (const e of engines) {
      await node.stopContainer({ container: e.container, timeoutSec: stopSec });
      attempt.actions.push(runtimeAction('stop', e));
    }
    try {
      const r = await node.resetGpu({ index });
      attempt.actions.push(
        `nvidia-smi --gpu-reset -i ${index}: ${r.ok ? 'ok' : `${r.reason ?? 'failed'}: ${r.message}`}`,
      );
      if (r.ok) anyReset = true;
      else if (r.reason === 'not-supported' || r.reason === 'permission') {
        // On a passthrough VM an in-guest reset is often impossible: go on to the next rung.
        attempt.detail = `GPU ${index} cannot be reset in the guest (${r.reason})`;
      }
    } finally {
      for (const e of engines) {
        await node.startContainer({ container: e.container });
        attempt.actions.push(runtimeAction('start', e));
      }
    }
  }
  return anyReset;
}

async function powerAndWait(
  vm: NonNullable<NodeFacts['vm']>,
  action: 'reboot' | 'reset',
  input: z.output<typeof RecoverNodeInput>,
  attempt: RungAttempt,
  control: ControlActivities,
): Promise<boolean> {
  if (vm.hypervisorType === 'qm') {
    // qm runs on the Proxmox host's own worker: a node never restarts its own VM.
    const hv = proxyActivities<HypervisorActivities>({
      taskQueue: hypervisorTaskQueue(vm.hypervisor),
      scheduleToStartTimeout: '1m',
      startToCloseTimeout: input.powerTimeout,
      retry: { maximumAttempts: 1 },
    });
    const r = await hv.qmPower({ vmid: vm.vmid, action });
    attempt.actions.push(`qm ${action} ${vm.vmid} on ${vm.hypervisor}: ${r.ok ? 'ok' : r.output}`);
    return r.ok;
  }
  const upid = await control.vmPower({ hypervisor: vm.hypervisor, vmid: vm.vmid, action });
  attempt.actions.push(`Proxmox ${action} VM ${vm.vmid} on ${vm.hypervisor}: ${upid ?? 'already in state'}`);
  if (upid === null) return true;
  const waited = proxyActivities<ControlActivities>({
    startToCloseTimeout: parseDuration(input.powerTimeout) + 30_000,
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 3 },
  });
  const t = await waited.waitVmTask({ hypervisor: vm.hypervisor, upid, timeoutMs: parseDuration(input.powerTimeout) });
  attempt.actions.push(`task ${t.status}${t.exitstatus ? ` (${t.exitstatus})` : ''}`);
  return t.ok;
}

async function restartVm(
  vm: NonNullable<NodeFacts['vm']>,
  input: z.output<typeof RecoverNodeInput>,
  attempt: RungAttempt,
  control: ControlActivities,
): Promise<void> {
  let ok = false;
  try {
    ok = await powerAndWait(vm, 'reboot', input, attempt, control);
  } catch (err) {
    attempt.actions.push(`reboot failed: ${(err as Error).message}`);
  }
  if (!ok) {
    // ACPI reboot refused or timed out (a hung guest ignores it): hard reset, once.
    await powerAndWait(vm, 'reset', input, attempt, control);
  }
}

async function escalate(
  nodeName: string,
  facts: NodeFacts,
  record: IncidentRecord,
  current: HealthReport,
  control: ControlActivities,
): Promise<NonNullable<IncidentRecord['escalation']>> {
  const tried = record.rungs
    .filter((r) => r.rung !== 'escalate')
    .map((r) => `- ${r.rung}: ${r.outcome}${r.detail ? ` — ${r.detail}` : ''}`)
    .join('\n');
  const why = record.budget.exceeded
    ? `recovery budget spent (${record.budget.used} recoveries in ${record.budget.window}, max ${record.budget.max})`
    : 'no rung restored health';
  const drained: string[] = [];
  let detail = why;
  try {
    const d = await control.drainEngines({ node: nodeName, engines: facts.engines.map((e) => e.url), reason: why });
    drained.push(...d.drained);
    if (d.note) detail += `; ${d.note}`;
  } catch (err) {
    detail += `; drain failed: ${(err as Error).message}`;
  }
  let notified: string[] = [];
  let notifyFailed: string[] = [];
  try {
    const n = await control.notify({
      title: `gpuops: node ${nodeName} needs a human`,
      text:
        `${why}.\nTrigger: ${record.trigger.source} ${record.trigger.detail}\n` +
        `Problems now: ${current.problems.map((p) => `${p.kind} (${p.subject}): ${p.detail}`).join('; ') || 'none seen'}\n` +
        `Tried:\n${tried || '- nothing (escalate only)'}`,
      severity: 'critical',
      fields: { node: nodeName, outcome: 'escalated', rungsTried: record.rungs.length, budgetUsed: record.budget.used },
    });
    notified = n.sent;
    notifyFailed = n.failed.map((f) => `${f.name}: ${f.error}`);
  } catch (err) {
    notifyFailed = [`notify failed: ${(err as Error).message}`];
  }
  return { notified, notifyFailed, drained, detail };
}

// ---------------------------------------------------------------------------------------------------------------
// watchNode
// ---------------------------------------------------------------------------------------------------------------

/** The maintenance windows in force at `at`; expired ones drop out. */
function activeWindows(windows: MaintenanceWindow[], at: number): MaintenanceWindow[] {
  return windows.filter((w) => Date.parse(w.until) > at);
}

/** A problem is covered by maintenance when a node-wide window is open, or one for the engine it concerns. */
function coveredByMaintenance(p: Problem, windows: MaintenanceWindow[], facts: NodeFacts | null): boolean {
  return windows.some((w) => {
    if (w.engine === null) return true;
    const e = facts?.engines.find((x) => x.name === w.engine);
    return p.subject === w.engine || (e !== undefined && p.subject === e.container);
  });
}

/**
 * Watch a node: probe every interval on its pinned queue; after `failureThreshold` consecutive failed probes (and
 * outside maintenance) start `recoverNode` and wait for it. ID `watch:<node>`. Messages: Update `maintenance`,
 * Query `status`.
 */
export async function watchNode(rawInput: WatchNodeInput): Promise<never> {
  const input = parseInput(WatchNodeInput, rawInput, 'watchNode input');
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  const control = proxyActivities<ControlActivities>({ startToCloseTimeout: '30s' });
  let facts: NodeFacts | null = null;

  const status: WatchStatus = {
    node: input.node,
    probes: 0,
    consecutiveFailures: input.state?.consecutiveFailures ?? 0,
    lastReport: null,
    maintenance: activeWindows(input.state?.maintenance ?? [], Date.now()),
    lastAction: null,
  };
  setHandler(getWatchStatusQuery, () => ({ ...status, maintenance: activeWindows(status.maintenance, Date.now()) }));
  setHandler(
    setMaintenanceUpdate,
    async (m: SetMaintenanceInput) => {
      const v = MaintenanceInput.parse(m);
      // The engine list comes from the node's config, fetched at start; an early update waits for it.
      await condition(() => facts !== null);
      const known = facts?.engines.map((e) => e.name) ?? [];
      if (v.engine && !known.includes(v.engine)) {
        throw ApplicationFailure.nonRetryable(
          `invalid maintenance: engine: must be one of ${known.join(', ')} (got "${v.engine}")`,
          'ValidationError',
        );
      }
      const at = Date.now();
      if (v.clear) {
        status.maintenance = status.maintenance.filter((w) => (v.engine ? w.engine !== v.engine : false));
      } else {
        const until = v.until ?? new Date(at + parseDuration(v.duration ?? '0s')).toISOString();
        status.maintenance.push({
          reason: v.reason,
          engine: v.engine ?? null,
          by: v.by ?? null,
          since: new Date(at).toISOString(),
          until,
        });
      }
      status.maintenance = activeWindows(status.maintenance, at);
      return status.maintenance;
    },
    {
      validator: (m: SetMaintenanceInput) => {
        const r = MaintenanceInput.safeParse(m);
        if (!r.success) {
          throw ApplicationFailure.nonRetryable(
            `invalid maintenance: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
            'ValidationError',
          );
        }
      },
    },
  );

  // Handlers are registered before the first await so queries and updates work from the first moment.
  const nodeFacts = await control.nodeFacts({ node: input.node });
  facts = nodeFacts;
  const probeMs = parseDuration(input.probeInterval);
  let restartCounts: Record<string, number> = {};
  for (let i = 0; i < input.probesPerRun; i++) {
    const report = await probeNode(input.node, {
      generate: input.generate,
      expectedGpus: nodeFacts.gpus.length || undefined,
      xidSince: new Date(Date.now() - Math.max(probeMs * 3, 60_000)).toISOString(),
      pickupTimeout: input.pickupTimeout,
      probeTimeout: input.probeTimeout,
    });
    status.probes++;
    const at = Date.now();
    status.maintenance = activeWindows(status.maintenance, at);
    // Added after the first release: histories recorded before it replay without the restart-loop check.
    const loops = patched('restart-loop-detection')
      ? restartLoopProblems(restartCounts, report.observation.containers)
      : [];
    restartCounts = Object.fromEntries(report.observation.containers.map((c) => [c.name, c.restartCount]));
    const actionable = [...report.problems, ...loops].filter(
      (p) => p.severity === 'critical' && !coveredByMaintenance(p, status.maintenance, facts),
    );
    status.lastReport = {
      at: report.observedAt,
      healthy: report.healthy,
      recommendedRung: report.recommendedRung,
      problems: [...report.problems, ...loops].map((p) => `${p.kind} ${p.subject}`),
    };
    status.consecutiveFailures = actionable.length ? status.consecutiveFailures + 1 : 0;
    setCurrentDetails(
      `Watching **${input.node}**: ${report.healthy ? 'healthy' : `UNHEALTHY (${status.consecutiveFailures}/${input.failureThreshold})`}` +
        (status.maintenance.length ? ` — maintenance: ${status.maintenance.map((w) => w.reason).join('; ')}` : ''),
    );

    if (status.consecutiveFailures >= input.failureThreshold) {
      const reason = actionable.map((p) => `${p.kind} (${p.subject}): ${p.detail}`).join('; ');
      status.lastAction = { at: new Date(at).toISOString(), action: 'recover', detail: reason };
      try {
        const child = await startChild(recoverNode, {
          workflowId: workflowIds.recover(input.node),
          // The recovery must outlive this run's continue-as-new.
          parentClosePolicy: ParentClosePolicy.ABANDON,
          staticSummary: `Recover ${input.node}: ${actionable[0]?.kind ?? 'fault'} (watcher)`,
          args: [
            {
              ...input.recovery,
              node: input.node,
              reason,
              trigger: { source: 'watcher', detail: `${status.consecutiveFailures} consecutive failed probes` },
            },
          ],
        });
        const incident = await child.result();
        status.lastAction.detail = `${incident.outcome} after ${incident.rungs.map((r) => r.rung).join(' → ') || 'no action'}`;
      } catch (err) {
        if (err instanceof WorkflowExecutionAlreadyStartedError) {
          // Someone else (Alertmanager, an operator) is already recovering this node.
          status.lastAction.detail = 'a recovery is already running';
        } else {
          status.lastAction.detail = `recovery failed: ${(err as Error).message}`;
        }
      }
      status.consecutiveFailures = 0;
    }
    await sleep(probeMs);
  }
  // Wait for in-flight Update handlers, then start over with bounded history, carrying the state.
  await condition(allHandlersFinished);
  return continueAsNew<typeof watchNode>({
    ...rawInput,
    state: { consecutiveFailures: status.consecutiveFailures, maintenance: status.maintenance },
  });
}
