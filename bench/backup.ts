/**
 * A backup plan's wall time (the runBackup workflow: pre-check, restic backup on the node's queue, forget --prune,
 * check --read-data-subset) divided by a bare `restic backup` of the same data, in the same run, on a real Temporal
 * dev server and a sandbox node worker. Measured for a first (full) and a second (incremental) run; both
 * repositories are initialised before timing starts. Prints the ratios; it is not a timed test.
 *
 *   npx tsx bench/backup.ts          (or npm run bench)
 *   BENCH_BACKUP_MB=200 npx tsx bench/backup.ts
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { nodeTaskQueue } from '../src/contracts';
import { ResticCli } from '../src/hosts/restic';
import type { RunBackupInput } from '../src/contracts';
import { controlWorker, startTestSandbox, waitForPoller } from '../test/helpers/env';
import { runIfMain, withBenchServer, type BenchServer } from './harness';

const MB = Math.min(2000, Math.max(1, Number(process.env.BENCH_BACKUP_MB ?? 64)));

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
    await repo('bare').init();
    await repo('plan').init();

    const input: RunBackupInput = {
      plan: {
        id: 'bench',
        node: sbx.nodeId,
        what: 'model-store',
        paths: [data],
        repository: path.join(dir, 'plan'),
        passwordFile: path.join(dir, 'pw'),
        retention: { keepLast: 7 },
        rpo: '1d',
        verify: { readDataSubset: '5%', testRestore: false },
      },
      timings: { pickupTimeout: '30s', heartbeatTimeout: '30s' },
    };
    const worker = await controlWorker(env, sbx.loaded);
    const rows: [string, number, number][] = [];
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
      for (const phase of ['full', 'incremental']) {
        let t = performance.now();
        await repo('bare').backup([data], { host: sbx.nodeId });
        const bare = performance.now() - t;
        t = performance.now();
        await env.client.workflow.execute('runBackup', {
          taskQueue: env.controlQueue,
          workflowId: `bench-${phase}`,
          args: [input],
        });
        rows.push([phase, performance.now() - t, bare]);
      }
    });
    console.log(`data: ${MB} MiB in ${big + 20} files; restic ${(await repo('bare').run(['version'])).stdout}`);
    for (const [phase, plan, bare] of rows) {
      console.log(
        `${phase.padEnd(12)} plan (runBackup) ${plan.toFixed(0).padStart(6)} ms   bare restic backup ${bare.toFixed(0).padStart(6)} ms   ratio ${(plan / bare).toFixed(2)}`,
      );
    }
  } finally {
    await sbx.stop();
  }
}

runIfMain(module, run);
