/**
 * The lifecycle bench's workflow bundle: every gpuops workflow, and benchBare, the baseline deployModel is compared
 * with (bench/lifecycle.ts). Not registered on any gpuops worker.
 */
import { proxyActivities, sleep } from '@temporalio/workflow';

export * from '../workflows';

/** One step of benchBare: a no-op activity on a task queue, or a timer. */
export type BareStep = { activity: 'noop'; taskQueue: string } | { timerMs: number };

/** Run `steps` one after another: the no-op activities and the timers of a deployModel history, and nothing else. */
export async function benchBare(steps: BareStep[]): Promise<number> {
  for (const s of steps) {
    if ('timerMs' in s) {
      await sleep(s.timerMs);
      continue;
    }
    const { noop } = proxyActivities<{ noop: () => Promise<void> }>({
      taskQueue: s.taskQueue,
      startToCloseTimeout: '30s',
    });
    await noop();
  }
  return steps.length;
}
