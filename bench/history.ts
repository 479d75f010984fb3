/**
 * History per analysis hour (issue #11 goal 6): deployModel's canary, one step of BENCH_HISTORY_SECONDS (40) analysed
 * as often as the dev server fires its timers, with every activity answering at once what the recorded promote answered (bench/lifecycle.ts; getStats always its passing
 * analysis, so no round tops up). Run once without a bound (maxHistoryEvents at its maximum, 40,000) to measure the
 * events one analysis round adds, extrapolated to an hour at the default 5 s analysisInterval; then with a bound, to
 * show the chain of runs it continues as new into and the most events any one run reached.
 *
 *   npx tsx bench/history.ts          (or npm run bench history)
 *   BENCH_HISTORY_SECONDS=120 BENCH_HISTORY_BOUND=1000 npx tsx bench/history.ts
 */
import type { WorkflowHandle } from '@temporalio/client';
import { bundleWorkflowCode, Worker } from '@temporalio/worker';
import { nodeTaskQueue, workflowIds, type DeployModelInput } from '../src/contracts';
import { workflowMetricSinks } from '../src/metrics/runtime';
import { quietLogger } from '../test/helpers/env';
import { recordedPromote } from './lifecycle';
import { runIfMain, withBenchServer, type BenchServer } from './harness';

const STEP_S = Math.min(600, Math.max(5, Number(process.env.BENCH_HISTORY_SECONDS ?? 40)));
const BOUND = Math.min(40_000, Math.max(100, Number(process.env.BENCH_HISTORY_BOUND ?? 250)));
/** As often as the dev server fires timers (about one a second under load, whatever shorter interval is asked). */
const INTERVAL_MS = 50;
/** Temporal terminates a workflow whose history reaches this many events. */
const TEMPORAL_LIMIT = 51_200;
/** Analysis rounds in an hour at the default analysisInterval (5s). */
const ROUNDS_PER_HOUR = 3600 / 5;

/** Activities that answer at once: each type its n-th recorded result, the last one again after the record ends. */
function replayingActivities(results: Map<string, unknown[]>) {
  const calls = new Map<string, number>();
  const acts = Object.fromEntries(
    [...results].map(([type, list]) => [
      type,
      () => {
        const n = calls.get(type) ?? 0;
        calls.set(type, n + 1);
        // getStats: always the last (passing) analysis, so the step neither tops up nor breaches.
        return Promise.resolve(type === 'getStats' ? list.at(-1) : (list[n] ?? list.at(-1)));
      },
    ]),
  );
  return { acts, reset: () => calls.clear() };
}

type Events = NonNullable<Awaited<ReturnType<WorkflowHandle['fetchHistory']>>['events']>;

/** Analysis rounds in a run (getStats calls), and the events from the first round's to the last round's. */
function roundsOf(events: Events): { rounds: number; span: number } {
  const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'getStats');
  const first = Number(scheduled[0]?.eventId ?? 0);
  const last = Number(scheduled.at(-1)?.eventId ?? 0);
  return { rounds: scheduled.length, span: last - first };
}

export async function run(): Promise<void> {
  await withBenchServer('history', eventsPerHour);
}

async function eventsPerHour({ env }: BenchServer): Promise<void> {
  const { input: recorded, results } = recordedPromote();
  const { acts, reset } = replayingActivities(results);
  const workflowBundle = await bundleWorkflowCode({
    workflowsPath: require.resolve('./workflows'),
    logger: quietLogger,
  });
  const [control, node] = await Promise.all(
    [env.controlQueue, nodeTaskQueue(recorded.node)].map((taskQueue) =>
      Worker.create({
        connection: env.connection,
        taskQueue,
        workflowBundle,
        activities: acts,
        sinks: workflowMetricSinks(),
      }),
    ),
  );
  if (!control || !node) throw new Error('no workers');
  /** One deployment (the recorded alias), its one step STEP_S long: each run of its chain, first run first. */
  const deploy = async (maxHistoryEvents: number): Promise<Events[]> => {
    reset();
    const input: DeployModelInput = {
      ...recorded,
      maxHistoryEvents,
      policy: {
        ...recorded.policy,
        canarySteps: [50],
        analysisInterval: `${INTERVAL_MS}ms`,
        stepDuration: `${STEP_S}s`,
        rollbackWindow: '1ms',
      },
    };
    const workflowId = workflowIds.deploy(input.node, input.alias);
    const h = await env.client.workflow.start('deployModel', {
      taskQueue: env.controlQueue,
      workflowId,
      args: [input],
    });
    const status = (await h.result()) as { outcome?: string };
    if (status.outcome !== 'promoted') throw new Error(`deployModel ended ${status.outcome}, not promoted`);
    const runs: Events[] = [];
    for (let runId: string | null | undefined = h.firstExecutionRunId; runId;) {
      const events: Events = (await env.client.workflow.getHandle(workflowId, runId).fetchHistory()).events ?? [];
      runs.push(events);
      runId = events.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
    }
    return runs;
  };
  const { unbounded, bounded } = await node.runUntil(() =>
    control.runUntil(async () => ({
      unbounded: await deploy(40_000),
      bounded: await deploy(BOUND),
    })),
  );
  const one = unbounded[0] ?? [];
  const { rounds, span } = roundsOf(one);
  const perRound = span / Math.max(1, rounds - 1);
  const perHour = perRound * ROUNDS_PER_HOUR;
  const sizes = bounded.map((r) => r.length);
  const boundedRounds = bounded.reduce((n, r) => n + roundsOf(r).rounds, 0);
  console.log(
    `one canary step of ${STEP_S} s, analysed every ${INTERVAL_MS} ms (instant activities): ${rounds} rounds, ${one.length} events in one run, ${perRound.toFixed(1)} per round`,
  );
  console.log(
    `events per analysis hour at the default 5s analysisInterval: ${Math.round(perHour)}; without a bound a run passes Temporal's ${TEMPORAL_LIMIT} after ${(TEMPORAL_LIMIT / perHour).toFixed(1)} h of canary`,
  );
  console.log(
    `the same step with maxHistoryEvents ${BOUND}: ${boundedRounds} rounds in ${bounded.length} runs (${sizes.join(', ')} events), at most ${Math.max(...sizes)} events in one run — bounded for any canary length`,
  );
}

runIfMain(module, run);
