/**
 * Lifecycle overhead (issue #11 goal 5): deployModel's wall time when every activity it calls returns at once,
 * divided by a bare workflow (benchBare, bench/workflows.ts) that runs the same activities as no-ops on the same
 * queues, and the same timers, in the same order, on the same worker and dev server. Goal ≤ 1.30.
 *
 * The instant activities answer what the real ones answered in a recorded promote (test/histories/
 * deploy-model-html-report-promoted.json: nodeFacts, pull, golden prompts, low risk, a passing canary analysis,
 * promote, rollback window, deployment page), each type's n-th call its n-th recorded result, so deployModel takes
 * its normal promote path; the policy's stepDuration/analysisInterval/rollbackWindow are 1ms/10ms/1ms so timers cost
 * a round trip, not a wait. The bare workflow's steps are read from the deployModel run's own history: one no-op per
 * ActivityTaskScheduled (on that event's task queue) and one timer per TimerStarted (its duration). Repetitions
 * alternate the two; the medians are compared.
 *
 *   npx tsx bench/lifecycle.ts          (or npm run bench lifecycle)
 *   BENCH_LIFECYCLE_N=20 npx tsx bench/lifecycle.ts
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { bundleWorkflowCode, Worker } from '@temporalio/worker';
import { nodeTaskQueue, workflowIds, type DeployModelInput } from '../src/contracts';
import { workflowMetricSinks } from '../src/metrics/runtime';
import { quietLogger } from '../test/helpers/env';
import type { BareStep } from './workflows';
import { median, runIfMain, withBenchServer, type BenchServer } from './harness';

const N = Math.min(200, Math.max(1, Number(process.env.BENCH_LIFECYCLE_N ?? 10)));
const RECORDED = path.join(__dirname, '..', 'test', 'histories', 'deploy-model-html-report-promoted.json');

type History = temporal.api.history.v1.IHistory;
type JsonEvent = Record<string, unknown> & { eventId: string; eventType: string };
const EventType = temporal.api.enums.v1.EventType;

/** The recorded promote: its input, and each activity type's results in call order. */
export function recordedPromote(): { input: DeployModelInput; results: Map<string, unknown[]> } {
  const events = (JSON.parse(readFileSync(RECORDED, 'utf8')) as { events: JsonEvent[] }).events;
  type Payloads = { payloads?: { data?: string }[] };
  const decode = (p: Payloads | undefined): unknown => {
    const data = p?.payloads?.[0]?.data;
    return data === undefined ? undefined : JSON.parse(Buffer.from(data, 'base64').toString('utf8'));
  };
  const typeOf = new Map<string, string>();
  const results = new Map<string, unknown[]>();
  let input: DeployModelInput | undefined;
  for (const e of events) {
    const attrs = (k: string): Record<string, unknown> => e[k] as Record<string, unknown>;
    if (e.eventType === 'EVENT_TYPE_WORKFLOW_EXECUTION_STARTED') {
      input = decode(attrs('workflowExecutionStartedEventAttributes').input as Payloads) as DeployModelInput;
    } else if (e.eventType === 'EVENT_TYPE_ACTIVITY_TASK_SCHEDULED') {
      const type = attrs('activityTaskScheduledEventAttributes').activityType as { name: string };
      typeOf.set(e.eventId, type.name);
    } else if (e.eventType === 'EVENT_TYPE_ACTIVITY_TASK_COMPLETED') {
      const done = attrs('activityTaskCompletedEventAttributes');
      const type = typeOf.get(String(done.scheduledEventId));
      if (!type) throw new Error(`${RECORDED}: completion of an unscheduled activity (event ${e.eventId})`);
      results.set(type, [...(results.get(type) ?? []), decode(done.result as Payloads)]);
    }
  }
  if (!input) throw new Error(`${RECORDED}: no WorkflowExecutionStarted event`);
  return { input, results };
}

/** Activities that answer at once: each type's n-th call since `reset()` gets its n-th recorded result. */
function instantActivities(results: Map<string, unknown[]>) {
  const calls = new Map<string, number>();
  const acts: Record<string, () => Promise<unknown>> = { noop: () => Promise.resolve() };
  for (const [type, list] of results) {
    acts[type] = () => {
      const n = calls.get(type) ?? 0;
      calls.set(type, n + 1);
      if (n >= list.length)
        throw new Error(`${type} called ${n + 1} times; the recorded promote called it ${list.length}`);
      return Promise.resolve(list[n]);
    };
  }
  return { acts, reset: () => calls.clear() };
}

/** The bare workflow's steps from a deployModel history; and its workflow tasks, activities and timers. */
function shapeOf(history: History): { steps: BareStep[]; workflowTasks: number; activities: number; timers: number } {
  const steps: BareStep[] = [];
  let workflowTasks = 0;
  for (const e of history.events ?? []) {
    if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) workflowTasks++;
    const a = e.activityTaskScheduledEventAttributes;
    if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && a) {
      steps.push({ activity: 'noop', taskQueue: a.taskQueue?.name ?? '' });
    }
    const t = e.timerStartedEventAttributes;
    if (e.eventType === EventType.EVENT_TYPE_TIMER_STARTED && t) {
      const d = t.startToFireTimeout;
      steps.push({ timerMs: Math.max(1, Number(d?.seconds ?? 0) * 1000 + Math.round((d?.nanos ?? 0) / 1e6)) });
    }
  }
  const activities = steps.filter((s) => 'activity' in s).length;
  return { steps, workflowTasks, activities, timers: steps.length - activities };
}

/** Run the benchmark and print its ratio. */
export async function run(): Promise<void> {
  await withBenchServer('lifecycle', deployVsBare);
}

async function deployVsBare({ env }: BenchServer): Promise<void> {
  const { input: recorded, results } = recordedPromote();
  const input: DeployModelInput = {
    ...recorded,
    policy: { ...recorded.policy, stepDuration: '1ms', analysisInterval: '10ms', rollbackWindow: '1ms' },
  };
  const { acts, reset } = instantActivities(results);
  const workflowBundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('./workflows'),
    logger: quietLogger,
  });
  const worker = (taskQueue: string): Promise<Worker> =>
    Worker.create({
      connection: env.connection,
      namespace: 'default',
      taskQueue,
      workflowBundle,
      activities: acts,
      sinks: workflowMetricSinks(),
    });
  const control = await worker(env.controlQueue);
  const node = await worker(nodeTaskQueue(input.node));
  const workflowId = workflowIds.deploy(input.node, input.alias);
  const deploy = async (): Promise<{ ms: number; history: History }> => {
    reset();
    const t = performance.now();
    const h = await env.client.workflow.start('deployModel', {
      taskQueue: env.controlQueue,
      workflowId,
      args: [input],
    });
    const status = (await h.result()) as { outcome?: string };
    const ms = performance.now() - t;
    if (status.outcome !== 'promoted') throw new Error(`deployModel ended ${status.outcome}, not promoted`);
    return { ms, history: await h.fetchHistory() };
  };
  const bare = async (steps: BareStep[], i: number): Promise<{ ms: number; history: History }> => {
    const t = performance.now();
    const h = await env.client.workflow.start('benchBare', {
      taskQueue: env.controlQueue,
      workflowId: `bench-bare-${i}`,
      args: [steps],
    });
    await h.result();
    const ms = performance.now() - t;
    return { ms, history: await h.fetchHistory() };
  };
  const times = { deploy: [] as number[], bare: [] as number[] };
  let shape: ReturnType<typeof shapeOf> | undefined;
  let bareShape: ReturnType<typeof shapeOf> | undefined;
  await node.runUntil(() =>
    control.runUntil(async () => {
      // The first run of each warms the bundle and the caches, and gives the bare workflow its steps.
      shape = shapeOf((await deploy()).history);
      bareShape = shapeOf((await bare(shape.steps, 0)).history);
      for (let i = 1; i <= N; i++) {
        times.deploy.push((await deploy()).ms);
        times.bare.push((await bare(shape.steps, i)).ms);
      }
    }),
  );
  if (!shape || !bareShape) throw new Error('no warm-up run');
  const d = median(times.deploy);
  const b = median(times.bare);
  console.log(
    `deployModel (promote, instant activities): ${shape.activities} activities, ${shape.timers} timers, ${shape.workflowTasks} workflow tasks; bare: ${bareShape.activities} activities, ${bareShape.timers} timers, ${bareShape.workflowTasks} workflow tasks`,
  );
  console.log(
    `median of ${N}: deployModel ${d.toFixed(0)} ms, bare ${b.toFixed(0)} ms (min ${Math.min(...times.deploy).toFixed(0)} / ${Math.min(...times.bare).toFixed(0)} ms)`,
  );
  console.log(`deployModel ÷ bare ${(d / b).toFixed(2)} (goal ≤ 1.30)`);
}

runIfMain(module, run);
