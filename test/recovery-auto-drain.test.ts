/**
 * The router's auto-drain with a real watchNode on a sandbox node (real Temporal dev server, real node worker): the
 * node's engine exits, its port refuses, requests fail over and the router drains the node by itself; once the
 * engine is back the watcher sees the node healthy and the router routes to it again, with one activity for the
 * unhealthy → healthy change and none per healthy round.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import type { Worker } from '@temporalio/worker';
import { getWatchStatusQuery, workflowIds, type WatchStatus } from '../src/contracts';
import { freePort } from '../src/net';
import { startRouter, type RouterHandle } from '../src/router';
import { autoDrainFromConfig } from '../src/router/failover';
import { clearFaults, injectFault } from '../src/sandbox/faults';
import type { watchNode } from '../workflows/recovery';
import { FAST_RECOVERY, controlWorker, useSandboxEnv, type TestSandbox } from './helpers/env';

const closers: (() => Promise<void>)[] = [];
const ctx = useSandboxEnv({
  async beforeStop() {
    for (const c of closers.splice(0)) await c();
  },
});

/** An engine on another node: answers every OpenAI chat completion. */
async function otherEngine(): Promise<string> {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const body = JSON.stringify({ object: 'chat.completion', model: 'other', choices: [], usage: {} });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function chat(router: RouterHandle): Promise<Response> {
  return fetch(`${router.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
  });
}

/** How many times the watcher's history scheduled `activity` (all runs are one here: no continue-as-new). */
async function scheduled(s: TestSandbox, activity: string): Promise<number> {
  const h = ctx.env.client.workflow.getHandle(workflowIds.watch(s.nodeId));
  const history = await h.fetchHistory();
  return (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activity)
    .length;
}

test('a node whose engines all refuse is drained by the router, and put back when its watcher sees it healthy', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-autodrain-'));
  const adminTokenFile = path.join(dir, 'router-token');
  writeFileSync(adminTokenFile, 'router-admin-secret\n');
  const routerPort = await freePort();
  const s = await ctx.sandbox({ extra: { router: { listen: `127.0.0.1:${routerPort}`, adminTokenFile } } });
  const engine = s.loaded.config.nodes[0]!.engines[0]!;
  const elsewhere = await otherEngine();
  const { engineNodes } = autoDrainFromConfig(s.loaded.config);
  const router = await startRouter({
    port: routerPort,
    adminTokenFile,
    engineNodes,
    // recheck off: only the watcher may put the node back here.
    autoDrain: { refusals: 2, afterMs: 0, recheckMs: 0 },
    // The first eligible variant: the sandbox node's, while it is routed.
    random: () => 0,
    initialRoutes: {
      routes: {
        chat: {
          variants: [
            { name: 'local', engine: engine.url, engineType: 'ollama', model: 'llama3.2:1b', weight: 50 },
            { name: 'elsewhere', engine: elsewhere, engineType: 'vllm', model: 'other', weight: 50 },
          ],
        },
      },
    },
  });
  closers.unshift(() => router.close());

  const w: Worker = await controlWorker(ctx.env, s.loaded);
  await w.runUntil(async () => {
    const h = await ctx.env.client.workflow.start<typeof watchNode>('watchNode', {
      taskQueue: ctx.env.controlQueue,
      workflowId: workflowIds.watch(s.nodeId),
      args: [
        {
          node: s.nodeId,
          probeInterval: '300ms',
          // Never recover here: the engine comes back by the test's hand, the watcher only has to see it.
          failureThreshold: 10_000,
          pickupTimeout: '2s',
          // Round deadline probeTimeout − 2 s = 4 s for the loaded shims; a hang still costs a round its 1 s generation.
          probeTimeout: '6s',
          generateTimeout: '1s',
          recovery: FAST_RECOVERY,
        },
      ],
    });
    const status = (): Promise<WatchStatus> => h.query(getWatchStatusQuery);
    await until('a healthy probe', async () => ((await status()).lastReport?.healthy ? true : undefined));
    const first = await chat(router);
    expect([first.status, first.headers.get('x-gpuops-variant')]).toEqual([200, 'local']);

    injectFault(s.sim.store, 'container-exit');
    await until('the engine port to refuse', async () =>
      (await fetch(engine.url).then(
        () => false,
        () => true,
      ))
        ? true
        : undefined,
    );
    const during: string[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await chat(router);
      during.push(`${r.status} ${r.headers.get('x-gpuops-variant')} ${r.headers.get('x-gpuops-failover')}`);
    }
    // Two refusals failed over, then the node was drained and requests went elsewhere at once: no client error.
    expect(during).toEqual(['200 elsewhere local', '200 elsewhere local', '200 elsewhere null', '200 elsewhere null']);
    expect(router.autoDrain.list()).toEqual([expect.objectContaining({ engine: engine.url, node: s.nodeId })]);
    expect(router.table.current.drained).toEqual([]);
    expect(router.stats.query('chat', 60_000).variants.local?.outcomes).toEqual({ ok: 1, connect: 2 });

    await until('an unhealthy probe', async () => ((await status()).lastReport?.healthy === false ? true : undefined));
    expect(router.autoDrain.list()).toHaveLength(1); // an unhealthy node stays drained
    clearFaults(s.sim.store, ['container-exit']);
    await until('the watcher to release the drain', () => (router.autoDrain.list().length === 0 ? true : undefined));
    expect((await status()).routerRelease).toMatchObject({ released: [engine.url], note: null });
    const back = await chat(router);
    expect([back.status, back.headers.get('x-gpuops-variant'), back.headers.get('x-gpuops-failover')]).toEqual([
      200,
      'local',
      null,
    ]);

    // One release at the watcher's first probe (nothing to release then) and one for unhealthy → healthy; healthy
    // rounds after it schedule none.
    expect(await scheduled(s, 'releaseAutoDrain')).toBe(2);
    const probes = (await status()).probes;
    await until('three more probes', async () => ((await status()).probes >= probes + 3 ? true : undefined));
    expect((await status()).lastReport?.healthy).toBe(true);
    expect(await scheduled(s, 'releaseAutoDrain')).toBe(2);
    await h.terminate('test done');
  });
}, 120_000);
