/**
 * A backup plan's wall time (the runBackup workflow: two node activities, pre-check and restic backup, then forget
 * --prune and check --read-data-subset) against two baselines of the same data in the same run, on a real Temporal
 * dev server and a sandbox node worker: the restic commands the plan's activities run, typed by hand one after
 * another (`backup`, `forget --prune`, `check --read-data-subset`: issue #11 goal ≤ 1.10), and a bare `restic
 * backup`. Measured for a first (full) and a second (incremental) run; every repository is initialised
 * before timing starts. Prints the ratios and where the plan's time went (each activity's schedule-to-start and
 * start-to-close, from the history); it is not a timed test.
 *
 *   npx tsx bench/backup.ts          (or npm run bench)
 *   BENCH_BACKUP_MB=200 BENCH_BACKUP_N=5 npx tsx bench/backup.ts   (data size; repetitions, median, default 5)
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { nodeTaskQueue } from '../src/contracts';
import { ResticCli } from '../src/hosts/restic';
import { PARTIAL_DOWNLOAD_EXCLUDES } from '../activities/backup';
import type { RunBackupInput } from '../src/contracts';
import { controlWorker, startTestSandbox, waitForPoller } from '../test/helpers/env';
import { median, runIfMain, withBenchServer, type BenchServer } from './harness';

const MB = Math.min(2000, Math.max(1, Number(process.env.BENCH_BACKUP_MB ?? 64)));
const N = Math.min(50, Math.max(1, Number(process.env.BENCH_BACKUP_N ?? 5)));

/** Run the benchmark and print its ratios. */
export async function run(): Promise<void> {
  await withBenchServer('backup', backupVsBareRestic);
}

async function backupVsBareRestic({ dir, server, env }: BenchServer): Promise<void> {
  const sbx = await startTestSandbox({ address: server.address });
  try {
    await waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
    const data = path.join(dir, 'models');
    mkdirSync(data);
    // Model-store-like data: a few big incompressible blobs and some small files.
    const big = Math.max(1, Math.floor(MB / 16));
    for (let i = 0; i < big; i++) writeFileSync(path.join(data, `blob-${i}`), randomBytes(Math.min(16, MB) * 1048576));
    for (let i = 0; i < 20; i++) writeFileSync(path.join(data, `manifest-${i}.json`), `{"i":${i}}\n`);
    writeFileSync(path.join(dir, 'pw'), 'bench-password\n');
    const repo = (name: string): ResticCli =>
      new ResticCli({ repository: path.join(dir, name), passwordFile: path.join(dir, 'pw') });

    const input: RunBackupInput = {
      plan: {
        id: 'bench',
        node: sbx.nodeId,
        what: 'model-store',
        paths: [data],
        repository: path.join(dir, 'plan-0'),
        passwordFile: path.join(dir, 'pw'),
        retention: { keepLast: 7 },
        rpo: '1d',
        verify: { readDataSubset: '5%', testRestore: false },
      },
      timings: { pickupTimeout: '30s', heartbeatTimeout: '30s' },
    };
    const worker = await controlWorker(env, sbx.loaded);
    const rows: Record<string, { plan: number[]; cmds: number[]; bare: number[]; steps: string }> = {};
    /** What the plan's activities run, by hand: the same restic commands, flags and tags, one after another. */
    const sameCommands = async (cli: ResticCli, phase: string): Promise<void> => {
      const planTag = `plan:${input.plan.id}`;
      const tags = [planTag, `node:${sbx.nodeId}`, `what:${input.plan.what}`, `run:bench-cmds-${phase}`];
      await cli.backup([data], { tags, excludes: PARTIAL_DOWNLOAD_EXCLUDES, host: sbx.nodeId });
      await cli.forget({ keepLast: 7 }, { tags: [planTag], prune: true });
      const check = await cli.check('5%');
      if (!check.ok) throw new Error(`restic check failed: ${check.output}`);
    };
    await worker.runUntil(async () => {
      // Warm the workflow path once (bundle load, worker caches) on a throwaway repository.
      await repo('warm').init();
      await env.client.workflow.execute('runBackup', {
        taskQueue: env.controlQueue,
        workflowId: 'bench-warm',
        args: [
          {
            ...input,
            plan: { ...input.plan, id: 'warm', repository: path.join(dir, 'warm'), paths: [path.join(dir, 'pw')] },
          },
        ],
      });
      for (let r = 0; r < N; r++) {
        // Each repetition backs up into fresh repositories: its first run is a full backup, its second incremental.
        for (const name of ['bare', 'cmds', 'plan']) await repo(`${name}-${r}`).init();
        const planInput = { ...input, plan: { ...input.plan, repository: path.join(dir, `plan-${r}`) } };
        for (const phase of ['full', 'incremental']) {
          const row = (rows[phase] ??= { plan: [], cmds: [], bare: [], steps: '' });
          let t = performance.now();
          await repo(`bare-${r}`).backup([data], { host: sbx.nodeId });
          row.bare.push(performance.now() - t);
          t = performance.now();
          await sameCommands(repo(`cmds-${r}`), `${phase}-${r}`);
          row.cmds.push(performance.now() - t);
          t = performance.now();
          const handle = await env.client.workflow.start('runBackup', {
            taskQueue: env.controlQueue,
            workflowId: `bench-${phase}-${r}`,
            args: [planInput],
          });
          await handle.result();
          row.plan.push(performance.now() - t);
          row.steps = activityTimings(await handle.fetchHistory());
        }
      }
    });
    console.log(`data: ${MB} MiB in ${big + 20} files; restic ${(await repo('bare').run(['version'])).stdout}`);
    const ms = (x: number): string => `${x.toFixed(0).padStart(6)} ms`;
    console.log(`median of ${N} repetition(s), each into fresh repositories`);
    for (const [phase, row] of Object.entries(rows)) {
      const [plan, cmds, bare] = [median(row.plan), median(row.cmds), median(row.bare)];
      console.log(
        `${phase.padEnd(12)} plan (runBackup) ${ms(plan)}   same commands by hand ${ms(cmds)}   bare restic backup ${ms(bare)}`,
      );
      console.log(`${phase.padEnd(12)} plan ÷ same commands ${(plan / cmds).toFixed(2)} (goal ≤ 1.10)`);
      console.log(
        `${phase.padEnd(12)} plan ÷ bare backup ${(plan / bare).toFixed(2)} (no goal: the plan also prunes and checks)`,
      );
      console.log(`${phase.padEnd(12)} last plan run's activities (wait→run ms): ${row.steps}`);
    }
  } finally {
    await sbx.stop();
  }
}

/** Each activity of a history as `type wait→run`: scheduled to started, started to completed (or failed). */
export function activityTimings(history: temporal.api.history.v1.IHistory): string {
  const EventType = temporal.api.enums.v1.EventType;
  const at = (e: temporal.api.history.v1.IHistoryEvent): number =>
    Number(e.eventTime?.seconds ?? 0) * 1000 + Math.round((e.eventTime?.nanos ?? 0) / 1e6);
  const scheduled = new Map<string, { type: string; at: number; startedAt?: number }>();
  const out: string[] = [];
  for (const e of history.events ?? []) {
    const id = String(e.eventId);
    if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) {
      scheduled.set(id, { type: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '?', at: at(e) });
    } else if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) {
      const s = scheduled.get(String(e.activityTaskStartedEventAttributes?.scheduledEventId));
      if (s) s.startedAt = at(e);
    } else {
      const done = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
      const s = done ? scheduled.get(String(done.scheduledEventId)) : undefined;
      if (s) out.push(`${s.type} ${(s.startedAt ?? s.at) - s.at}→${at(e) - (s.startedAt ?? s.at)}`);
    }
  }
  const events = history.events ?? [];
  const total = events.length > 1 ? at(events[events.length - 1]!) - at(events[0]!) : 0;
  return `${out.join(', ')}; workflow ${total} ms, ${events.length} events`;
}

runIfMain(module, run);
