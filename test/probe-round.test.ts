/**
 * probeRound's own behaviour, without Temporal: what a probe that fails or misses the round's deadline leaves in the
 * round (the watcher's workflow tests are in watch-probe-round.test.ts).
 */
import { createProbeRoundActivities, type ProbeRoundDeps } from '../activities/probe-round';
import { classifyNode } from '../src/domain/classify';
import { healthyProbes } from './helpers/hosts';

const round = (deps: ProbeRoundDeps, timeoutMs = 300) =>
  createProbeRoundActivities(deps).probeRound({
    generate: true,
    timeoutMs,
    generateTimeoutMs: 100,
    xidSince: new Date().toISOString(),
  });

test('a GPU query cut by the round deadline reads as nvidia-smi timing out: a lost GPU, restart-vm', async () => {
  // A wedged driver: nvidia-smi's own 20 s timeout is longer than the round's deadline.
  const r = await round({ ...healthyProbes(), queryGpus: () => new Promise(() => undefined) });
  expect(r.gpu.error).toBe(
    "nvidia-smi timed out (a hung driver often means a lost GPU): did not answer within the round's 300 ms",
  );
  expect(r.failures).toEqual([{ probe: 'queryGpus', error: "did not answer within the round's 300 ms" }]);
  const report = classifyNode(
    {
      node: 'n1',
      observedAt: '',
      reachable: true,
      ...r,
      gpus: r.gpu.gpus,
      gpuError: r.gpu.error,
      probeFailures: r.failures,
    },
    { expectedGpus: 1 },
  );
  expect(report).toMatchObject({ healthy: false, recommendedRung: 'restart-vm' });
  expect(report.problems.map((p) => p.kind)).toContain('gpu-lost');
});

test('a GPU query that throws reads as nvidia-smi timing out too', async () => {
  const r = await round({ ...healthyProbes(), queryGpus: () => Promise.reject(new Error('spawn EAGAIN')) });
  expect(r.gpu).toEqual({
    gpus: [],
    error: 'nvidia-smi timed out (a hung driver often means a lost GPU): spawn EAGAIN',
  });
});

test('a failed kernel-log read is a failure of its own; the GPU query is kept', async () => {
  const r = await round({
    ...healthyProbes(),
    readXidEvents: () => Promise.reject(new Error('dmesg: Operation not permitted')),
  });
  expect(r.gpu).toEqual({ gpus: [], error: null });
  expect(r.failures).toEqual([{ probe: 'readXidEvents', error: 'dmesg: Operation not permitted' }]);
});
