import { classifyNode, restartLoopProblems, verifiesRecovery } from '../../src/domain/classify';
import { failedGpuQuery, type ContainerState, type EngineProbe, type NodeObservation } from '../../src/domain/health';
import { rungForXid } from '../../src/domain/xid';
import { maxRung } from '../../src/domain/rungs';
import { containerState, gpuStatus } from '../helpers/hosts';

const engine = (over: Partial<EngineProbe> = {}): EngineProbe => ({
  name: 'ollama',
  type: 'ollama',
  url: 'http://127.0.0.1:11434',
  reachable: true,
  healthy: true,
  loading: false,
  version: '0.5.7',
  models: ['llama3.2:1b'],
  loaded: ['llama3.2:1b'],
  latencyMs: 3,
  generation: { ok: true, ms: 80, error: null },
  error: null,
  ...over,
});
const gpu = gpuStatus;
/** The observation's GPU part after a queryGpus that failed with `error`. */
const failedGpuQueryObservation = (error: string): Pick<NodeObservation, 'gpus' | 'gpuError'> => {
  const q = failedGpuQuery(error);
  return { gpus: q.gpus, gpuError: q.error };
};
const obs = (over: Partial<NodeObservation> = {}): NodeObservation => ({
  node: 'n1',
  observedAt: '2026-11-22T00:00:00Z',
  reachable: true,
  containers: [containerState()],
  gpus: [gpu()],
  gpuError: null,
  xids: [],
  engines: [engine()],
  disks: [{ path: '/models', totalBytes: 500e9, freeBytes: 200e9 }],
  ...over,
});

describe('classifyNode', () => {
  test('a healthy node has no problems and needs no action', () => {
    const r = classifyNode(obs(), { expectedGpus: 1 });
    expect(r).toMatchObject({ healthy: true, recommendedRung: 'none', problems: [] });
  });

  test('an unreachable node calls for a VM restart', () => {
    const r = classifyNode(obs({ reachable: false, containers: [], engines: [], gpus: [] }));
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'node-unreachable', rung: 'restart-vm' })]);
  });

  test('an exited container and an unreachable engine call for a container restart', () => {
    const r = classifyNode(
      obs({
        containers: [containerState({ status: 'exited', running: false, exitCode: 2 })],
        engines: [engine({ reachable: false, healthy: false, error: 'ECONNREFUSED' })],
      }),
    );
    expect(r.recommendedRung).toBe('restart-container');
    expect(r.problems.map((p) => p.kind)).toEqual(['container-exited', 'engine-down']);
    expect(r.problems[0]?.detail).toMatch(/exit code 2/);
  });

  test('an engine that answers health but fails its test generation is "hung"', () => {
    const r = classifyNode(obs({ engines: [engine({ generation: { ok: false, ms: 5000, error: 'timeout' } })] }));
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'engine-hung', rung: 'restart-container' })]);
  });

  test('a loading engine (503 while loading) is not a fault', () => {
    const r = classifyNode(obs({ engines: [engine({ healthy: false, loading: true, generation: null })] }));
    expect(r.healthy).toBe(true);
  });

  test('CUDA out of memory in the container log calls for a container restart', () => {
    const r = classifyNode(
      obs({
        containers: [
          containerState({ logSignals: ['torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'] }),
        ],
      }),
    );
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'cuda-oom', rung: 'restart-container' })]);
  });

  test('OOM-killed container is reported as such, not as a plain exit', () => {
    const r = classifyNode(
      obs({ containers: [containerState({ status: 'exited', running: false, oomKilled: true, exitCode: 137 })] }),
    );
    expect(r.problems.map((p) => p.kind)).toEqual(['container-oom-killed']);
  });

  test('uncorrected ECC errors call for a GPU reset', () => {
    const r = classifyNode(obs({ gpus: [gpu({ eccUncorrectedVolatile: 2 })] }));
    expect(r.recommendedRung).toBe('reset-gpu');
  });

  test('ECC [N/A] (null) on consumer GPUs is not a fault', () => {
    expect(classifyNode(obs({ gpus: [gpu({ eccUncorrectedVolatile: null })] })).healthy).toBe(true);
  });

  test('nvidia-smi failing (GPU lost) calls for a VM restart', () => {
    const r = classifyNode(obs({ gpus: [], gpuError: 'GPU is lost' }));
    expect(r.recommendedRung).toBe('restart-vm');
  });

  test('fewer GPUs than configured means one fell off the bus', () => {
    const r = classifyNode(obs({ gpus: [gpu()] }), { expectedGpus: 2 });
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'gpu-missing', rung: 'restart-vm' })]);
  });

  test('the most disruptive rung wins: Xid 79 beside a hung engine means restart-vm', () => {
    const r = classifyNode(
      obs({
        engines: [engine({ generation: { ok: false, ms: 5000, error: 'timeout' } })],
        xids: [
          {
            xid: 79,
            pciBusId: '0000:01:00',
            time: '2026-11-22T00:00:00Z',
            pid: null,
            processName: null,
            message: 'GPU has fallen off the bus.',
          },
        ],
      }),
    );
    expect(r.recommendedRung).toBe('restart-vm');
  });

  test('informational Xids (63: page retirement recorded) are not problems', () => {
    const r = classifyNode(
      obs({
        xids: [
          { xid: 63, pciBusId: '0000:01:00', time: 't', pid: null, processName: null, message: 'row remapping event' },
        ],
      }),
    );
    expect(r.problems).toEqual([]);
  });

  test('a model store below the free-space floor is a warning that escalates', () => {
    const r = classifyNode(obs({ disks: [{ path: '/models', totalBytes: 500e9, freeBytes: 1e9 }] }), {
      minFreeDiskBytes: 10e9,
    });
    expect(r.healthy).toBe(true);
    expect(r.problems).toEqual([expect.objectContaining({ kind: 'disk-low', severity: 'warning', rung: 'escalate' })]);
  });
});

describe('Xid catalog', () => {
  test.each([
    [13, 'restart-container'],
    [31, 'restart-container'],
    [48, 'reset-gpu'],
    [62, 'reset-gpu'],
    [64, 'reset-gpu'],
    [95, 'reset-gpu'],
    [119, 'reset-gpu'],
    [120, 'reset-gpu'],
    [79, 'restart-vm'],
    [63, 'none'],
    [9999, 'reset-gpu'],
  ] as const)('Xid %i → %s', (xid, rung) => {
    expect(rungForXid(xid)).toBe(rung);
  });

  test('Xid 154 follows the recovery action the driver names', () => {
    expect(rungForXid(154, 'GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)')).toBe(
      'restart-vm',
    );
    expect(rungForXid(154, 'GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)')).toBe(
      'reset-gpu',
    );
    expect(rungForXid(154, 'GPU recovery action changed from 0x1 to 0x0 (None)')).toBe('none');
  });

  test('maxRung orders the ladder', () => {
    expect(maxRung('restart-container', 'reset-gpu')).toBe('reset-gpu');
    expect(maxRung('escalate', 'restart-vm')).toBe('escalate');
  });
});

describe('canary slot pairs: standby halves', () => {
  /** A vLLM blue/green pair: vllm-fast serving, vllm-deep its slot; `deep` overrides the slot's container. */
  const pair = (
    deep: Partial<ContainerState>,
    fast: Partial<ContainerState> = {},
    deepEngine: Partial<EngineProbe> = {},
  ) =>
    obs({
      containers: [
        containerState({ name: 'vllm-fast', engine: 'vllm-fast', slotPartner: 'vllm-deep', ...fast }),
        containerState({ name: 'vllm-deep', engine: 'vllm-deep', slotPartner: 'vllm-fast', ...deep }),
      ],
      engines: [
        engine({ name: 'vllm-fast', type: 'vllm', url: 'http://127.0.0.1:8000' }),
        engine({
          name: 'vllm-deep',
          type: 'vllm',
          url: 'http://127.0.0.1:8001',
          reachable: false,
          healthy: false,
          generation: null,
          error: 'connect ECONNREFUSED 127.0.0.1:8001',
          ...deepEngine,
        }),
      ],
    });
  const stopped = { status: 'exited' as const, running: false, exitCode: 0 };

  test('a cleanly stopped half whose partner runs is standby: no problem, no recovery', () => {
    const r = classifyNode(pair(stopped));
    expect(r).toMatchObject({ healthy: true, recommendedRung: 'none', problems: [] });
    expect(r.standby).toEqual([{ engine: 'vllm-deep', container: 'vllm-deep', partner: 'vllm-fast' }]);
    // Terminated by the SIGTERM of docker stop (143) is a clean stop too.
    expect(classifyNode(pair({ ...stopped, exitCode: 143 })).standby).toHaveLength(1);
    // Created and never started (standbyEngine's reset of a half that had crashed) is standby as well.
    expect(classifyNode(pair({ status: 'created', running: false, exitCode: 0 })).standby).toHaveLength(1);
  });

  test('both halves down is an outage: both are faults, neither is standby', () => {
    const r = classifyNode(pair(stopped, stopped));
    expect(r.standby).toEqual([]);
    expect(r.healthy).toBe(false);
    expect(r.problems.filter((p) => p.kind === 'container-exited').map((p) => p.subject)).toEqual([
      'vllm-fast',
      'vllm-deep',
    ]);
  });

  test('a half that crashed (exit 1, OOM kill, SIGKILL) is a fault even while its partner serves', () => {
    for (const crash of [
      { ...stopped, exitCode: 1 },
      { ...stopped, exitCode: 137, oomKilled: true },
      { ...stopped, exitCode: 137 },
    ]) {
      const r = classifyNode(pair(crash));
      expect(r.standby).toEqual([]);
      expect(r.recommendedRung).toBe('restart-container');
      expect(r.problems.map((p) => p.subject)).toEqual(expect.arrayContaining(['vllm-deep']));
    }
  });

  test('a stopped engine outside any pair is still a fault', () => {
    const r = classifyNode(pair(stopped));
    const unpaired = classifyNode({
      ...r.observation,
      containers: r.observation.containers.map(({ slotPartner: _drop, ...c }) => c),
    });
    expect(unpaired.standby).toEqual([]);
    expect(unpaired.problems.map((p) => p.kind)).toEqual(['container-exited', 'engine-down']);
  });
});

describe('restartLoopProblems', () => {
  test('flags a container whose restart count climbed since the last probe', () => {
    const p = restartLoopProblems({ ollama: 2 }, [containerState({ restartCount: 4 })]);
    expect(p).toEqual([
      expect.objectContaining({ kind: 'container-restarting', subject: 'ollama', rung: 'restart-container' }),
    ]);
    expect(p[0]?.detail).toBe('restart count climbed from 2 to 4 since the last probe');
  });

  test('is quiet on the first probe and when the count is steady', () => {
    expect(restartLoopProblems({}, [containerState({ restartCount: 9 })])).toEqual([]);
    expect(restartLoopProblems({ ollama: 9 }, [containerState({ restartCount: 9 })])).toEqual([]);
  });
});

describe('probe failures', () => {
  test('a failed probe is a probe-failed warning named by the probe, and the report is unknown, not healthy', () => {
    const failed = classifyNode(obs({ gpus: [], probeFailures: [{ probe: 'queryGpus', error: 'boom' }] }), {
      expectedGpus: 1,
    });
    // No GPU list is not a GPU off the bus: no gpu-missing (restart-vm) from a probe that failed. Nor is it healthy:
    // nobody looked.
    expect(failed).toMatchObject({ healthy: false, unknown: true, recommendedRung: 'none' });
    expect(failed.problems).toEqual([
      {
        kind: 'probe-failed',
        subject: 'queryGpus',
        detail: 'queryGpus failed: boom',
        rung: 'none',
        severity: 'warning',
      },
    ]);
    const sick = classifyNode(
      obs({ engines: [engine({ reachable: false })], probeFailures: [{ probe: 'checkDisks', error: 'x' }] }),
    );
    expect(sick.healthy).toBe(false);
    expect(sick.problems.map((p) => p.kind)).toEqual(['probe-failed', 'engine-down']);
    expect(classifyNode(obs())).not.toHaveProperty('unknown');
  });

  test('a failed engines probe leaves the round unknown: no engine problem is not a healthy engine', () => {
    const r = classifyNode(obs({ engines: [], probeFailures: [{ probe: 'probeEngines', error: 'late' }] }));
    expect(r).toMatchObject({ healthy: false, unknown: true, recommendedRung: 'none' });
    expect(r.problems.map((p) => `${p.kind} ${p.subject} ${p.severity}`)).toEqual([
      'probe-failed probeEngines warning',
    ]);
  });

  test('a GPU query that missed the deadline reads as nvidia-smi timing out: gpu-lost, restart-vm', () => {
    const r = classifyNode(
      obs({
        ...failedGpuQueryObservation("did not answer within the round's 13000 ms"),
        probeFailures: [{ probe: 'queryGpus', error: "did not answer within the round's 13000 ms" }],
      }),
      { expectedGpus: 1 },
    );
    expect(r).toMatchObject({ healthy: false, recommendedRung: 'restart-vm' });
    expect(r.problems).toContainEqual(
      expect.objectContaining({ kind: 'gpu-lost', subject: 'gpu', severity: 'critical', rung: 'restart-vm' }),
    );
    expect(r.problems.find((p) => p.kind === 'gpu-lost')?.detail).toMatch(/nvidia-smi timed out \(a hung driver/);
  });

  test("a failed kernel-log read stays a warning and keeps the GPUs' own verdicts", () => {
    const r = classifyNode(
      obs({
        gpus: [gpu({ lost: true })],
        xids: [],
        probeFailures: [{ probe: 'readXidEvents', error: 'dmesg: read kernel buffer failed' }],
      }),
      { expectedGpus: 2 },
    );
    expect(r.recommendedRung).toBe('restart-vm');
    expect(r.problems.map((p) => `${p.kind} ${p.severity}`)).toEqual([
      'probe-failed warning',
      'gpu-lost critical',
      'gpu-missing critical',
    ]);
  });

  test('a skipped test generation is a warning, not a hung engine, and leaves the round unknown (not healthy)', () => {
    const r = classifyNode(
      obs({ engines: [engine({ generation: { ok: false, ms: 0, error: 'only 3 ms left', skipped: true } })] }),
    );
    expect(r).toMatchObject({ healthy: false, unknown: true, recommendedRung: 'none' });
    expect(r.problems).toEqual([
      {
        kind: 'probe-failed',
        subject: 'ollama',
        detail: 'test generation skipped: only 3 ms left',
        rung: 'none',
        severity: 'warning',
      },
    ]);
  });

  test('a round that failed as a whole is critical and goes to a human, with no GPU guessed missing', () => {
    const r = classifyNode(
      obs({ containers: [], gpus: [], engines: [], disks: [], roundError: 'probeRound timed out (START_TO_CLOSE)' }),
      { expectedGpus: 1 },
    );
    expect(r).toMatchObject({ healthy: false, recommendedRung: 'escalate' });
    expect(r.problems).toEqual([
      expect.objectContaining({ kind: 'probe-failed', subject: 'n1', severity: 'critical', rung: 'escalate' }),
    ]);
  });
});

describe('verifiesRecovery', () => {
  const failed = (probe: 'readXidEvents' | 'checkDisks' | 'inspectContainers' | 'probeEngines' | 'queryGpus') =>
    classifyNode(obs({ probeFailures: [{ probe, error: 'timed out' }] }), { expectedGpus: 1 });

  test('a healthy report verifies; a blind kernel log, model store or docker alone does not undo a working rung', () => {
    expect(verifiesRecovery(classifyNode(obs(), { expectedGpus: 1 }))).toBe(true);
    for (const probe of ['readXidEvents', 'checkDisks', 'inspectContainers'] as const) {
      const r = failed(probe);
      expect({ probe, healthy: r.healthy, verifies: verifiesRecovery(r) }).toEqual({
        probe,
        healthy: false,
        verifies: true,
      });
    }
  });

  test('a blind engine or GPU probe, a failed round or anything critical does not verify', () => {
    expect(verifiesRecovery(failed('probeEngines'))).toBe(false);
    expect(verifiesRecovery(failed('queryGpus'))).toBe(false);
    const hung = classifyNode(
      obs({ engines: [engine({ reachable: false })], probeFailures: [{ probe: 'checkDisks', error: 'x' }] }),
      { expectedGpus: 1 },
    );
    expect(verifiesRecovery(hung)).toBe(false);
  });
});
