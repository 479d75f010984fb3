/**
 * `gpuops up` against a server it did not start: the production server with mTLS, reached through TEMPORAL_TLS_*
 * as an operator sets them. In a namespace of its own, created bare here, gpuops registers its search attributes
 * over the same mTLS connection as everything else, starts its control worker there and stops cleanly on SIGTERM.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CONTROL_TASK_QUEUE, SEARCH_ATTRIBUTE_TYPES, workflowIds } from '../../src/contracts';
import { NAMESPACE_RETENTION } from '../../src/temporal/production-server';
import { msToTs } from '@temporalio/common/lib/time';
import { openTestEnv, testTarget, uniqueId, type TestEnv } from '../helpers/env';

let env: TestEnv;
beforeAll(async () => {
  env = await openTestEnv();
});
afterAll(async () => {
  await env?.close();
});

async function eventually<T>(what: string, fn: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

test('gpuops up on an mTLS server registers its search attributes in a bare namespace and runs its control worker there', async () => {
  const namespace = uniqueId('gpuops-up').toLowerCase();
  const svc = env.client.workflowService;
  await svc.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs(NAMESPACE_RETENTION) });
  // A new namespace reaches the frontend's cache within seconds; until then calls naming it fail.
  const bare = await eventually('the new namespace', () =>
    env.client.connection.operatorService.listSearchAttributes({ namespace }),
  );
  expect(Object.keys(bare.customAttributes ?? {}).filter((k) => k.startsWith('Gpuops'))).toEqual([]);

  const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-up-'));
  const cfg = path.join(dir, 'gpuops.yaml');
  writeFileSync(cfg, 'nodes:\n  - id: remote-1\n');
  const { address, tls } = testTarget();
  const child = spawn(path.resolve(__dirname, '..', '..', 'bin', 'gpuops'), ['-c', cfg, 'up', '--no-sandbox'], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: address,
      TEMPORAL_NAMESPACE: namespace,
      TEMPORAL_TLS_CERT: tls?.certFile ?? '',
      TEMPORAL_TLS_KEY: tls?.keyFile ?? '',
      TEMPORAL_TLS_CA: tls?.caFile ?? '',
      TEMPORAL_TLS_SERVER_NAME: tls?.serverName ?? '',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await eventually(
      'gpuops is up',
      async () => {
        if (child.exitCode !== null) throw new Error(`gpuops up exited ${child.exitCode}:\n${out}`);
        if (!out.includes('gpuops is up.')) throw new Error(`not yet:\n${out}`);
      },
      90_000,
    );
    expect(out).toContain(`using Temporal at ${address}, namespace ${namespace}`);
    expect(out).toMatch(/registered search attributes: Gpuops/);
    expect(out).not.toMatch(/warning: could not register search attributes/);
    const attrs =
      (await env.client.connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
    for (const key of Object.keys(SEARCH_ATTRIBUTE_TYPES)) expect(attrs).toHaveProperty(key);
    const pollers = await eventually('the control worker polling', async () => {
      const r = await svc.describeTaskQueue({ namespace, taskQueue: { name: CONTROL_TASK_QUEUE }, taskQueueType: 1 });
      if ((r.pollers ?? []).length === 0) throw new Error('no poller yet');
      return r.pollers ?? [];
    });
    expect(pollers.length).toBeGreaterThan(0);
  } finally {
    child.kill('SIGTERM');
    const code = await exited;
    // gpuops up started a watcher for remote-1 (it outlives gpuops by design); it has no node worker here.
    await svc
      .terminateWorkflowExecution({ namespace, workflowExecution: { workflowId: workflowIds.watch('remote-1') } })
      .catch(() => undefined);
    expect({ code, stopped: /stopped$/m.test(out) }).toEqual({ code: 0, stopped: true });
  }
}, 150_000);
