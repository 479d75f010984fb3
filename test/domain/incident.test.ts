import type { HealthReport, Problem } from '../../src/domain/classify';
import {
  budgetWindowStart,
  enginesOnGpu,
  escalationNotice,
  gpuResetOutcome,
  implicatedEngines,
  implicatedGpus,
  incidentEvidence,
  recoveryBudget,
  summarizeReport,
} from '../../src/domain/incident';

const problem = (over: Partial<Problem>): Problem => ({
  kind: 'engine-hung',
  subject: 'ollama',
  detail: 'generation timed out',
  rung: 'restart-container',
  severity: 'critical',
  ...over,
});

const report = (problems: Problem[], busIds: string[] = ['00000000:01:00.0', '00000000:41:00.0']): HealthReport => ({
  node: 'n1',
  observedAt: '2026-01-01T00:00:00.000Z',
  healthy: problems.length === 0,
  recommendedRung: problems[0]?.rung ?? 'none',
  problems,
  standby: [],
  observation: {
    node: 'n1',
    observedAt: '2026-01-01T00:00:00.000Z',
    reachable: true,
    containers: [],
    gpus: busIds.map((pciBusId, index) => ({ index, pciBusId }) as HealthReport['observation']['gpus'][number]),
    gpuError: null,
    xids: [{ xid: 48, pciBusId: '0000:01:00', time: '12.5', pid: null, processName: null, message: 'DBE' }],
    engines: [],
    disks: [],
  },
});

const engines = [
  { name: 'fast', container: 'vllm-fast', gpus: [0] },
  { name: 'deep', container: 'vllm-deep', gpus: [1] },
  { name: 'cpu', container: 'llama-cpu', gpus: [] },
];

test('the budget window ends now and reaches back its length; the budget is spent at its maximum', () => {
  expect(budgetWindowStart(Date.parse('2026-01-01T01:00:00Z'), '1h')).toBe('2026-01-01T00:00:00.000Z');
  expect(recoveryBudget(2, 3, '1h')).toEqual({ used: 2, max: 3, window: '1h', exceeded: false });
  expect(recoveryBudget(3, 3, '1h').exceeded).toBe(true);
  expect(recoveryBudget(0, 0, '1h').exceeded).toBe(true);
});

test('problems naming an engine or its container implicate it; none named implicates every engine', () => {
  expect(implicatedEngines(engines, [problem({ subject: 'deep' })]).map((e) => e.name)).toEqual(['deep']);
  expect(implicatedEngines(engines, [problem({ subject: 'vllm-fast' })]).map((e) => e.name)).toEqual(['fast']);
  expect(implicatedEngines(engines, [problem({ subject: 'n1', kind: 'disk-low' })])).toEqual(engines);
});

test('GPUs are implicated by gpuN subjects or PCI bus ids; none named implicates every configured GPU', () => {
  expect(implicatedGpus([0, 1], report([problem({ subject: 'gpu1', kind: 'gpu-ecc' })]))).toEqual([1]);
  expect(implicatedGpus([0, 1], report([problem({ subject: '41:00.0', kind: 'gpu-xid' })]))).toEqual([1]);
  expect(implicatedGpus([0, 1], report([problem({ subject: 'ollama' })]))).toEqual([0, 1]);
});

test('a GPU reset stops the engines on that GPU and those without a GPU list', () => {
  expect(enginesOnGpu(engines, 0).map((e) => e.name)).toEqual(['fast', 'cpu']);
  expect(enginesOnGpu(engines, 1).map((e) => e.name)).toEqual(['deep', 'cpu']);
});

test('a refused in-guest reset on a passthrough VM says so; a busy GPU is just a failed reset', () => {
  expect(gpuResetOutcome(0, { ok: true, reason: null, message: 'done' })).toEqual({
    line: 'nvidia-smi --gpu-reset -i 0: ok',
    impossible: null,
  });
  expect(gpuResetOutcome(1, { ok: false, reason: 'not-supported', message: 'Not Supported' })).toEqual({
    line: 'nvidia-smi --gpu-reset -i 1: not-supported: Not Supported',
    impossible: 'GPU 1 cannot be reset in the guest (not-supported)',
  });
  expect(gpuResetOutcome(0, { ok: false, reason: 'in-use', message: 'In use' }).impossible).toBeNull();
  expect(gpuResetOutcome(0, { ok: false, reason: null, message: 'x' }).line).toBe(
    'nvidia-smi --gpu-reset -i 0: failed: x',
  );
});

test('the record keeps a summary of each report and the first diagnosis as evidence', () => {
  const r = report([problem({})]);
  expect(summarizeReport(r)).toEqual({
    at: r.observedAt,
    healthy: false,
    reachable: true,
    recommendedRung: 'restart-container',
    problems: r.problems,
  });
  expect(incidentEvidence(r)).toEqual({
    xids: [{ xid: 48, message: 'DBE', time: '12.5' }],
    probes: ['engine-hung ollama: generation timed out'],
  });
});

test('an escalation says why, what is wrong now and what was tried, leaving the escalation itself out', () => {
  const n = escalationNotice({
    node: 'n1',
    trigger: { source: 'watcher', detail: '3 consecutive failed probes' },
    budget: recoveryBudget(1, 3, '1h'),
    rungs: [
      {
        rung: 'restart-container',
        outcome: 'still-faulty',
        detail: 'still faulty after restart-container: engine-hung',
      },
      { rung: 'restart-vm', outcome: 'skipped', detail: '' },
      { rung: 'escalate', outcome: 'failed', detail: '' },
    ],
    problems: [problem({})],
  });
  expect(n.why).toBe('no rung restored health');
  expect(n.title).toBe('gpuops: node n1 needs a human');
  expect(n.text).toBe(
    'no rung restored health.\nTrigger: watcher 3 consecutive failed probes\n' +
      'Problems now: engine-hung (ollama): generation timed out\n' +
      'Tried:\n- restart-container: still-faulty — still faulty after restart-container: engine-hung\n- restart-vm: skipped',
  );
  expect(n.fields).toEqual({ node: 'n1', outcome: 'escalated', rungsTried: 3, budgetUsed: 1 });
});

test('a spent budget is the reason when it is spent, and an escalation with nothing tried says so', () => {
  const n = escalationNotice({
    node: 'n1',
    trigger: { source: 'cli', detail: '' },
    budget: recoveryBudget(3, 3, '1h'),
    rungs: [{ rung: 'escalate', outcome: 'failed', detail: '' }],
    problems: [],
  });
  expect(n.why).toBe('recovery budget spent (3 recoveries in 1h, max 3)');
  expect(n.text).toContain('Problems now: none seen');
  expect(n.text).toContain('Tried:\n- nothing (escalate only)');
});
