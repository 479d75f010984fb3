/**
 * `npm run bench fleet`: one control worker watching a fleet (default 200 nodes) at 5 s probes (issue #11 goal 3:
 * control worker + Temporal server under one core).
 *
 * This process runs the control worker (every watchNode workflow and its control activities) and the client; a
 * second process (bench/fleet-nodes.ts) serves all the nodes' queues with real node workers whose probes parse
 * tool output captured once from a sandbox node (no process spawned per probe), so node-side cost stays out of the
 * way and is reported on its own. Prints CPU per process group over a baseline window (every worker polling, no
 * watcher) and a watching window, the probe rounds done against the nominal count, history per round and the
 * server's database growth.
 *
 *   BENCH_FLEET_NODES=200 BENCH_FLEET_SECONDS=60 npx tsx bench/fleet.ts
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { stringify } from 'yaml';
import { parseConfig } from '../src/config/load';
import { nodeTaskQueue, workflowIds } from '../src/contracts';
import { tsxCommand } from '../src/cli/processes';
import { freePort } from '../src/temporal/dev-server';
import type { watchNode } from '../workflows/recovery';
import { createControlWorker } from '../workers/control';
import { workflowBundle } from '../test/helpers/env';
import { runIfMain, withBenchServer } from './harness';
import {
  firstHealthyProbes,
  measureCpu,
  pidsMatching,
  probeCount,
  roundCost,
  sleep,
  terminateQuietly,
  type CpuWindow,
} from './watch-cost';

function intEnv(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new Error(`${name}: must be an integer ${min}–${max} (got ${raw})`);
  return n;
}

const NODES = intEnv('BENCH_FLEET_NODES', 200, 1, 1000);
const WINDOW_S = intEnv('BENCH_FLEET_SECONDS', 60, 10, 600);
const PROBE_S = 5;

const GPU = { index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 };

/** Start the node host and wait for its `READY`; its stderr is kept for the error if it dies first. */
async function startNodeHost(
  configPath: string,
  address: string,
  template: string,
): Promise<{ child: ChildProcess; stderr: () => string }> {
  const cmd = tsxCommand('bench/fleet-nodes.ts', [configPath, address, template]);
  const child = spawn(cmd.command, cmd.args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-4000)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      if (/^READY \d+$/m.test(out)) resolve();
    });
    child.once('exit', (code) => reject(new Error(`fleet node host exited ${code}:\n${err}`)));
  });
  return { child, stderr: () => err };
}

/**
 * Wait until every node's queue has a poller (2 minutes at most). A queue left without one means its watcher would
 * see the node as gone: the error says how many, with the node host's last words.
 */
async function everyQueuePolled(client: Client, ids: readonly string[], hostStderr: () => string): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const missing: string[] = [];
    for (const id of ids) {
      const r = await client.workflowService.describeTaskQueue({
        namespace: 'default',
        taskQueue: { name: nodeTaskQueue(id) },
        taskQueueType: 2, // TASK_QUEUE_TYPE_ACTIVITY
      });
      if ((r.pollers ?? []).length === 0) missing.push(id);
    }
    if (missing.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `${missing.length} of ${ids.length} node queues have no poller after 2 min (${missing.slice(0, 5).join(', ')}…); ` +
          `the node host said:\n${hostStderr().slice(-2000)}`,
      );
    }
    await sleep(2000);
  }
}

export async function run(): Promise<void> {
  await withBenchServer('fleet', async ({ dir, server, dbFile, env }) => {
    const stateDir = path.join(dir, 'sandbox');
    const tag = Math.random().toString(36).slice(2, 8);
    const template = `fleet-tpl-${tag}`;
    const ids = Array.from({ length: NODES }, (_, i) => `f${i}-${tag}`);
    const engineUrl = `http://127.0.0.1:${await freePort()}`;
    const engine = { name: 'ollama', type: 'ollama', container: 'ollama', gpus: [0], probeModel: 'llama3.2:1b' };
    const raw = {
      temporal: { address: server.address },
      nodes: [
        {
          id: template,
          sandbox: true,
          gpus: [GPU],
          engines: [{ ...engine, url: engineUrl }],
          modelStores: [path.join(stateDir, template, 'models')],
        },
        ...ids.map((id) => {
          const store = path.join(dir, 'stores', id);
          mkdirSync(store, { recursive: true });
          return { id, gpus: [GPU], engines: [{ ...engine, url: engineUrl }], modelStores: [store] };
        }),
      ],
      sandbox: { stateDir, bootSeconds: 1 },
    };
    const configPath = path.join(dir, 'gpuops.yaml');
    // Written out in full: YAML anchors for the repeated parts would trip the loader's alias limit.
    const text = stringify(raw, { aliasDuplicateObjects: false });
    writeFileSync(configPath, text);
    const config = parseConfig(text, configPath);

    const serverPids = await pidsMatching(dbFile);
    const { child: host, stderr: hostStderr } = await startNodeHost(configPath, server.address, template);
    const watchers: WorkflowHandle[] = [];
    const queue = `${env.controlQueue}-fleet`;
    const control = await createControlWorker({
      connection: env.connection,
      namespace: 'default',
      loaded: { path: configPath, config },
      workflowBundle: await workflowBundle(),
      taskQueue: queue,
      client: env.client,
    });
    const controlRun = control.run();
    try {
      await everyQueuePolled(env.client, ids, hostStderr);
      const hostPids = host.pid ? [host.pid] : [];
      const base = await measureCpu(serverPids, WINDOW_S, hostPids);

      const started = performance.now();
      for (const id of ids) {
        watchers.push(
          await env.client.workflow.start<typeof watchNode>('watchNode', {
            taskQueue: queue,
            workflowId: workflowIds.watch(id),
            // One simulated engine answers every node's test generation here: a deadline that a busy box meets.
            args: [{ node: id, probeInterval: `${PROBE_S}s`, generateTimeout: '10s' }],
          }),
        );
      }
      const startS = (performance.now() - started) / 1000;
      await firstHealthyProbes(watchers, 120_000);
      // Counting queries every watcher, which takes a while at 200: the rate is over the counts' own midpoints.
      const counted = async (): Promise<[number, number]> => {
        const t0 = performance.now();
        const n = await probeCount(watchers);
        return [n, (t0 + performance.now()) / 2];
      };
      const [probesBefore, countedAt0] = await counted();
      const dbBefore = statSync(dbFile).size;
      const watched = await measureCpu(serverPids, WINDOW_S, hostPids);
      const dbAfter = statSync(dbFile).size;
      const [probesAfter, countedAt1] = await counted();
      const probes = Math.round(((probesAfter - probesBefore) * watched.wallS * 1000) / (countedAt1 - countedAt0));

      const pct = (s: number, w: CpuWindow): string => `${((100 * s) / w.wallS).toFixed(1)}%`;
      const line = (name: string, w: CpuWindow): string =>
        `  ${name.padEnd(9)} ${w.wallS.toFixed(1)} s: control worker ${pct(w.selfS, w)}, Temporal server ` +
        `${pct(w.serverS, w)}, control + server ${pct(w.selfS + w.serverS, w)} of a core; node host ${pct(w.otherS, w)}`;
      console.log(
        `fleet: ${NODES} nodes (${NODES} node workers in one host process), one control worker, watchNode every ` +
          `${PROBE_S} s, ${WINDOW_S} s windows, ${os.cpus().length} CPUs, load average ${os.loadavg()[0]?.toFixed(1)}; ` +
          `${NODES} watchers started in ${startS.toFixed(1)} s`,
      );
      console.log(line('baseline', base));
      console.log(line('watching', watched));
      const total = (watched.selfS + watched.serverS) / watched.wallS;
      console.log(
        `  control worker + server while watching: ${total.toFixed(2)} cores (goal < 1: ${total < 1 ? 'met' : 'not met'}); ` +
          `${(((watched.selfS + watched.serverS) / Math.max(probes, 1)) * 1000).toFixed(1)} ms of their CPU per round`,
      );
      const nominal = Math.floor((NODES * watched.wallS) / PROBE_S);
      console.log(
        `  probe rounds in the window: ${probes} of a nominal ${nominal} (${((100 * probes) / nominal).toFixed(0)}%: ` +
          `each round's own time adds to its ${PROBE_S} s interval)`,
      );
      const one = watchers[0];
      if (one) {
        const cost = roundCost((await one.fetchHistory()).events ?? []);
        const perDay = (cost.events * NODES * 86_400) / PROBE_S;
        console.log(
          `  history: ${cost.events.toFixed(1)} events and ${cost.bytes.toFixed(0)} bytes per round (${cost.rounds} ` +
            `rounds of one watcher); fleet ${((cost.events * probes) / watched.wallS).toFixed(0)} events/s, ` +
            `≤ ${(perDay / 1e6).toFixed(1)}M events a day; server database grew ` +
            `${((dbAfter - dbBefore) / 1e6).toFixed(1)} MB in the window`,
        );
      }
    } finally {
      for (const h of watchers) await terminateQuietly(h);
      control.shutdown();
      await controlRun.catch(() => undefined);
      host.kill('SIGTERM');
      await new Promise((r) => (host.exitCode !== null ? r(null) : host.once('exit', r)));
    }
  });
}

runIfMain(module, run);
