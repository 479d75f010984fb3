/**
 * Recovery's first rung for engines that do not run in Docker: a systemd unit (Ollama's official install runs
 * `ollama.service`) is restarted through `systemctl` — here the sandbox's systemctl/journalctl shims, which print what
 * the real tools print, over the same simulated engine the docker shim serves.
 */
import { spawnSync } from 'node:child_process';
import { injectFault } from '../src/sandbox/faults';
import { workflowIds } from '../src/contracts';
import type { recoverNode } from '../workflows/recovery';
import { FAST_RECOVERY, controlWorker, useSandboxEnv } from './helpers/env';

const ctx = useSandboxEnv({
  sandbox: {
    hardware: {
      gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
      engines: [
        {
          name: 'ollama',
          type: 'ollama',
          runtime: 'systemd',
          container: 'ollama.service',
          gpus: [0],
          probeModel: 'llama3.2:1b',
        },
      ],
    },
  },
});

test('a hung engine under systemd is restarted with systemctl restart and verified healthy', async () => {
  const before = ctx.sbx.sim.store.read().containers['ollama.service'];
  injectFault(ctx.sbx.sim.store, 'engine-hang');
  const w = await controlWorker(ctx.env, ctx.sbx.loaded);
  const incident = await w.runUntil(async () => {
    const h = await ctx.env.client.workflow.start<typeof recoverNode>('recoverNode', {
      taskQueue: ctx.env.controlQueue,
      workflowId: workflowIds.recover(ctx.sbx.nodeId),
      args: [{ node: ctx.sbx.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...FAST_RECOVERY }],
    });
    return h.result();
  });
  expect(incident.outcome).toBe('recovered');
  expect(incident.initial?.problems.map((p) => [p.kind, p.subject])).toContainEqual(['engine-hung', 'ollama']);
  expect(incident.rungs.map((r) => [r.rung, r.outcome])).toEqual([['restart-container', 'healthy']]);
  expect(incident.rungs[0]?.actions).toContain('systemctl restart ollama.service');
  // The unit really went through a restart: a new main PID. (systemd's NRestarts counts only its own automatic
  // restarts, not `systemctl restart`, and the shim keeps that rule.)
  const after = ctx.sbx.sim.store.read().containers['ollama.service'];
  expect(after?.status).toBe('running');
  expect(after?.pid).not.toBe(before?.pid);
  expect(after?.restartCount).toBe(before?.restartCount);
  expect(incident.final?.healthy).toBe(true);
}, 90_000);

test('a systemd engine is a unit to systemctl and no container to docker', () => {
  const env = { ...process.env, ...ctx.sbx.sim.shimEnv() };
  const show = spawnSync('systemctl', ['show', '-p', 'LoadState,ActiveState', 'ollama.service'], {
    env,
    encoding: 'utf8',
  });
  expect(show.stdout).toBe('LoadState=loaded\nActiveState=active\n');
  const inspect = spawnSync('docker', ['inspect', 'ollama.service'], { env, encoding: 'utf8' });
  expect(inspect.status).toBe(1);
  expect(inspect.stderr).toMatch(/no such object: ollama\.service/i);
});
