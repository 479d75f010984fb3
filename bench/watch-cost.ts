/**
 * What the watcher benches share: CPU accounting of processes from /proc, polling, and the cost of one watch round
 * read from a watcher's own history.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { getWatchStatusQuery } from '../src/contracts';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll `fn` until it returns a value (not undefined), at most `timeoutMs`. */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

const CLK_TCK = 100;

/** utime + stime + cutime + cstime of a process, in seconds (fields 14–17 of /proc/<pid>/stat). */
export function procCpuSeconds(pid: number | 'self'): number {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state); utime is field 14 → fields[11].
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
  return ticks / CLK_TCK;
}

/** Processes whose command line matches `pattern` (pgrep -f), this one left out. */
export async function pidsMatching(pattern: string): Promise<number[]> {
  try {
    const { stdout } = await promisify(execFile)('pgrep', ['-f', pattern]);
    return stdout
      .split('\n')
      .map((l) => Number(l.trim()))
      .filter((n) => Number.isInteger(n) && n > 0 && n !== process.pid);
  } catch {
    return [];
  }
}

/** CPU seconds over one window: this process, the server's processes, and any other processes named. */
export interface CpuWindow {
  wallS: number;
  selfS: number;
  serverS: number;
  otherS: number;
}

/** Sleep `seconds` and return the CPU time this process, `serverPids` and `otherPids` used meanwhile. */
export async function measureCpu(serverPids: number[], seconds: number, otherPids: number[] = []): Promise<CpuWindow> {
  const sum = (pids: number[]) => (): number => pids.reduce((s, p) => s + procCpuSeconds(p), 0);
  const server = sum(serverPids);
  const other = sum(otherPids);
  const t0 = performance.now();
  const self0 = procCpuSeconds('self');
  const srv0 = server();
  const oth0 = other();
  await sleep(seconds * 1000);
  const self1 = procCpuSeconds('self');
  const srv1 = server();
  const oth1 = other();
  return {
    wallS: (performance.now() - t0) / 1000,
    selfS: self1 - self0,
    serverS: srv1 - srv0,
    otherS: oth1 - oth0,
  };
}

/** A watcher's steady round, from its history between its first and last probeRound: events, bytes, node activities. */
export function roundCost(events: readonly HistoryEvent[]): {
  rounds: number;
  events: number;
  bytes: number;
  activities: number;
} {
  const isRound = (e: HistoryEvent): boolean =>
    e.activityTaskScheduledEventAttributes?.activityType?.name === 'probeRound';
  const first = events.findIndex(isRound);
  const last = events.length - 1 - [...events].reverse().findIndex(isRound);
  const rounds = events.filter(isRound).length - 1;
  if (first < 0 || rounds < 1) return { rounds: 0, events: NaN, bytes: NaN, activities: NaN };
  const slice = events.slice(first, last);
  const nodeQueue = slice.filter((e) =>
    e.activityTaskScheduledEventAttributes?.taskQueue?.name?.startsWith('gpuops-node-'),
  );
  const bytes = temporal.api.history.v1.History.encode({ events: slice }).finish().length;
  return { rounds, events: slice.length / rounds, bytes: bytes / rounds, activities: nodeQueue.length / rounds };
}

/** Terminate a workflow the bench started, if it still runs. */
export async function terminateQuietly(h: WorkflowHandle | undefined): Promise<void> {
  if (!h) return;
  try {
    await h.terminate('bench finished');
  } catch {
    // Not running (finished, or never started): nothing to do.
  }
}

/** Wait until every watcher has finished a healthy probe (an unhealthy one fails the bench, naming its problems). */
export async function firstHealthyProbes(watchers: readonly WorkflowHandle[], timeoutMs: number): Promise<void> {
  for (const h of watchers) {
    await until(`first probe of ${h.workflowId}`, timeoutMs, async () => {
      const s = await h.query(getWatchStatusQuery);
      if (s.lastReport && !s.lastReport.healthy) {
        throw new Error(`${h.workflowId}: unhealthy: ${s.lastReport.problems.join(', ')}`);
      }
      return s.probes > 0 ? true : undefined;
    });
  }
}

/** Probe rounds the watchers have done so far, summed from their status queries. */
export async function probeCount(watchers: readonly WorkflowHandle[]): Promise<number> {
  let n = 0;
  for (const h of watchers) n += (await h.query(getWatchStatusQuery)).probes;
  return n;
}
