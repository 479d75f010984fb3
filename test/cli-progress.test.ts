/**
 * What `--follow` prints, as pure functions: the transfer bar and its plain line (bytes, rate, ETA, width), the rate
 * measured across heartbeats, the wait of a deployment with the commands that continue or stop it, an incident's
 * milestones, and the output stream (a bar only on a terminal; JSON Lines with --json).
 */
import { PassThrough } from 'node:stream';
import { waitingFor, renderWaiting } from '../src/cli/deploy';
import { gpuopsCommand, shellWord, TransferMeter } from '../src/cli/follow';
import { FollowOutput } from '../src/cli/output';
import { RateMeter, etaSeconds, formatBytes, formatDuration, renderProgress } from '../src/cli/progress-bar';
import { incidentMilestones } from '../src/cli/recovery';
import { DeployModelInput, type DeploymentStatus, type IncidentRecord } from '../src/contracts';
import { newRecord } from '../workflows/deploy/deployment';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe('renderProgress', () => {
  const view = { label: 'pull pulling 2bada8a74506', done: 512 * MiB, total: 2 * GiB, bytes: true, rate: 16 * MiB };

  test('a plain line (no width) has percent, both amounts, the rate and the ETA', () => {
    // (2048 - 512) MiB at 16 MiB/s = 96 s.
    expect(renderProgress(view)).toBe('pull pulling 2bada8a74506: 25.0%  512.0 MiB / 2.0 GiB  16.0 MiB/s  ETA 1m 36s');
  });

  test('with a width the bar fills what the figures leave, never wider than the line', () => {
    const line = renderProgress(view, 100);
    // 100 columns: 25 for the label, 50 for the figures, 4 around the bar: 21 cells, a quarter of them filled.
    expect(line).toBe(
      `pull pulling 2bada8a74506 [=====>${' '.repeat(15)}] 25.0%  512.0 MiB / 2.0 GiB  16.0 MiB/s  ETA 1m 36s`,
    );
    expect(line).toHaveLength(100);
    for (const width of [60, 70, 80, 120]) expect(renderProgress(view, width).length).toBeLessThanOrEqual(width);
    // The bar is at most 40 cells however wide the terminal is.
    expect(renderProgress(view, 200)).toContain(`[${'='.repeat(10)}>${' '.repeat(29)}]`);
  });

  test('a narrow terminal shortens the label first, then drops the bar', () => {
    const narrow = renderProgress(view, 75);
    expect(narrow).toBe(`pull pulli… [==>${' '.repeat(7)}] 25.0%  512.0 MiB / 2.0 GiB  16.0 MiB/s  ETA 1m 36s`);
    expect(narrow).toHaveLength(75);
    const tiny = renderProgress(view, 40);
    expect(tiny).not.toContain('[');
    expect(tiny).toHaveLength(40);
    expect(tiny.endsWith('…')).toBe(true);
  });

  test('a full transfer is a full bar and ETA 0s; an unknown size or rate says ETA --', () => {
    expect(renderProgress({ ...view, done: 2 * GiB }, 200)).toContain(`[${'='.repeat(40)}] 100.0%`);
    expect(renderProgress({ ...view, done: 2 * GiB })).toMatch(/ETA 0s$/);
    expect(renderProgress({ ...view, total: null })).toBe('pull pulling 2bada8a74506: 512.0 MiB  16.0 MiB/s  ETA --');
    expect(renderProgress({ ...view, rate: null })).toBe(
      'pull pulling 2bada8a74506: 25.0%  512.0 MiB / 2.0 GiB  ETA --',
    );
  });

  test('a fraction (restic percent) shows percent and ETA only', () => {
    expect(renderProgress({ label: 'restic backup', done: 0.42, total: 1, bytes: false, rate: 0.01 })).toBe(
      'restic backup: 42.0%  ETA 58s',
    );
  });

  test('formatBytes, formatDuration and etaSeconds', () => {
    expect([0, 1023, 1536, 5 * MiB, 1.25 * GiB].map(formatBytes)).toEqual([
      '0 B',
      '1023 B',
      '1.5 KiB',
      '5.0 MiB',
      '1.3 GiB',
    ]);
    expect([0, 0.2, 59, 60, 65, 3599, 3600, 7620, -5].map(formatDuration)).toEqual([
      '0s',
      '1s',
      '59s',
      '1m 00s',
      '1m 05s',
      '59m 59s',
      '1h 00m',
      '2h 07m',
      '0s',
    ]);
    expect(etaSeconds({ done: 10, total: 110, rate: 4 })).toBe(25);
    expect(etaSeconds({ done: 10, total: 110, rate: 0 })).toBeNull();
  });
});

describe('RateMeter', () => {
  test('measures across the samples where the amount moved, not the repeats between heartbeats', () => {
    const m = new RateMeter();
    expect(m.sample('a', 0, 0)).toBeNull();
    expect(m.sample('a', 0, 1000)).toBeNull(); // a repeat: no time to measure over yet
    expect(m.sample('a', 10 * MiB, 2000)).toBe(5 * MiB);
    expect(m.sample('a', 10 * MiB, 3000)).toBe(5 * MiB); // the same heartbeat read again
    expect(m.sample('a', 30 * MiB, 4000)).toBe(7.5 * MiB);
  });

  test('starts over for another transfer (a new key, or the amount going back) and forgets old samples', () => {
    const m = new RateMeter(10_000);
    m.sample('layer1', 0, 0);
    expect(m.sample('layer1', 100, 1000)).toBe(100);
    expect(m.sample('layer2', 5, 2000)).toBeNull();
    expect(m.sample('layer2', 25, 3000)).toBe(20);
    expect(m.sample('layer2', 1, 4000)).toBeNull();
    const w = new RateMeter(10_000);
    w.sample('x', 0, 0);
    w.sample('x', 1000, 1000);
    // 20 s later only samples within the 10 s window count: 1000 → 1100 over 10 s.
    w.sample('x', 1000 + 50, 12_000);
    expect(w.sample('x', 1100, 22_000)).toBe(5);
  });

  test('TransferMeter: one JSON event and its rendering per sample', () => {
    const t = new TransferMeter();
    t.line('pull', { label: 'pull', done: 0, total: 100 * MiB, bytes: true }, 0);
    const l = t.line('pull', { label: 'pull', done: 20 * MiB, total: 100 * MiB, bytes: true }, 2000);
    expect(l.event).toEqual({
      event: 'progress',
      label: 'pull',
      done: 20 * MiB,
      total: 100 * MiB,
      unit: 'bytes',
      ratePerSecond: 10 * MiB,
      etaSeconds: 8,
    });
    expect(l.render()).toBe('pull: 20.0%  20.0 MiB / 100.0 MiB  10.0 MiB/s  ETA 8s');
  });
});

/** A deployment's status as the workflow's record starts it, with `over` applied. */
function status(over: Partial<DeploymentStatus>): DeploymentStatus {
  const input = DeployModelInput.parse({ node: 'gpu-1', alias: 'chat', engine: 'ollama', model: 'qwen2.5:0.5b-lax' });
  const stable = { model: 'llama3.2:1b', engine: 'http://127.0.0.1:11434' };
  return { ...newRecord('deploy:gpu-1:chat', input), stable, ...over };
}

describe('waitingFor / renderWaiting', () => {
  const until = '2025-01-02T00:00:00.000Z';
  const now = Date.parse('2025-01-01T00:00:30.000Z');

  test('awaiting-approval: approve until the deadline, with the exact approve and rollback commands', () => {
    const s = status({
      stage: 'awaiting-approval',
      riskTier: 'medium',
      waitingUntil: until,
      risk: {
        tier: 'medium',
        decision: 'waits for approve',
        markdown: '',
        input: {} as never,
        findings: [
          { area: 'safety', tier: 'medium', detail: 'jailbreak probe jailbreak-dan failed' },
          { area: 'quality', tier: 'low', detail: 'all golden prompts passed' },
        ],
      },
    });
    const w = waitingFor(s, {});
    expect(w).toEqual({
      for: 'approve',
      why: 'risk medium (jailbreak probe jailbreak-dan failed)',
      until,
      then: 'it rolls back',
      commands: [
        { what: 'continue', command: 'gpuops approve chat --node gpu-1' },
        { what: 'stop', command: 'gpuops rollback chat --node gpu-1' },
      ],
    });
    expect(renderWaiting(w as NonNullable<typeof w>, now)).toEqual([
      '  waiting for approve: risk medium (jailbreak probe jailbreak-dan failed)',
      `  until ${until} (23h 59m from now); then it rolls back`,
      '  continue:  gpuops approve chat --node gpu-1',
      '  stop:      gpuops rollback chat --node gpu-1',
    ]);
  });

  test('the commands carry the -c this command was given, quoted for the shell', () => {
    const w = waitingFor(status({ stage: 'awaiting-promotion', waitingUntil: until }), {
      config: "/etc/my ops's.yaml",
    });
    expect(w?.commands.map((c) => c.command)).toEqual([
      `gpuops -c '/etc/my ops'\\''s.yaml' promote chat --node gpu-1`,
      `gpuops -c '/etc/my ops'\\''s.yaml' rollback chat --node gpu-1`,
    ]);
    expect(shellWord('deploy:gpu-1:chat')).toBe('deploy:gpu-1:chat');
    expect(gpuopsCommand({}, ['follow', 'a b', '--node', 'n1'])).toBe("gpuops follow 'a b' --node n1");
  });

  test('given the run it follows, every printed command expects that model and run, so it cannot steer another', () => {
    const w = waitingFor(status({ stage: 'awaiting-promotion', waitingUntil: until }), {}, '01a2-run');
    expect(w?.commands.map((c) => c.command)).toEqual([
      'gpuops promote chat --node gpu-1 --expect-model qwen2.5:0.5b-lax --expect-run-id 01a2-run',
      'gpuops rollback chat --node gpu-1 --expect-model qwen2.5:0.5b-lax --expect-run-id 01a2-run',
    ]);
  });

  test('the rollback window: go back with rollback until it closes; other stages wait for nobody', () => {
    const w = waitingFor(status({ stage: 'rollback-window', rollbackWindowEndsAt: until, waitingUntil: until }), {});
    expect(w).toMatchObject({
      for: 'the rollback window to close',
      why: 'qwen2.5:0.5b-lax serves 100%; llama3.2:1b stays loaded for a rollback',
      until,
      commands: [{ what: 'go back', command: 'gpuops rollback chat --node gpu-1' }],
    });
    for (const stage of ['pulling', 'canary', 'promoted', 'rolled-back'] as const) {
      expect(waitingFor(status({ stage }), {})).toBeNull();
    }
  });

  test('a status from an older gpuops (no waitingUntil) says the deadline is not known', () => {
    const old = status({ stage: 'awaiting-approval', riskTier: 'medium' }) as Partial<DeploymentStatus>;
    delete old.waitingUntil;
    const w = waitingFor(old as DeploymentStatus, {});
    expect(w?.until).toBeNull();
    expect(renderWaiting(w as NonNullable<typeof w>, now)[1]).toBe(
      '  until (not known: the deployment was started by an older gpuops); then it rolls back',
    );
  });
});

test('incidentMilestones: the diagnosis, each rung when it starts and once it is judged and done acting, in order', () => {
  const r: IncidentRecord = {
    node: 'gpu-1',
    reason: 'test',
    trigger: { source: 'cli', detail: '' },
    startedAt: '2025-01-01T00:00:00.000Z',
    endedAt: null,
    outcome: 'in-progress',
    budget: { used: 1, max: 3, window: '1h', exceeded: false },
    initial: {
      at: '2025-01-01T00:00:01.000Z',
      healthy: false,
      reachable: true,
      recommendedRung: 'restart-container',
      problems: [
        { kind: 'engine-hang', subject: 'ollama', detail: 'generation timed out', rung: 'restart-container' } as never,
      ],
    },
    evidence: { xids: [], probes: [] },
    rungs: [
      {
        rung: 'restart-container',
        startedAt: 'a',
        endedAt: 'b',
        actions: ['docker restart ollama'],
        outcome: 'still-faulty',
        detail: 'still faulty',
      },
      { rung: 'reset-gpu', startedAt: 'c', endedAt: '', actions: [], outcome: 'failed', detail: '' },
    ],
    final: null,
    escalation: null,
  };
  expect(incidentMilestones(r).map((m) => [m.key, m.text])).toEqual([
    ['diagnosis', 'diagnosis: engine-hang ollama: generation timed out → restart-container'],
    ['rung:0', 'rung 1: restart-container started'],
    ['rung:0:end', 'rung 1: restart-container still-faulty: still faulty (docker restart ollama)'],
    ['rung:1', 'rung 2: reset-gpu started'],
  ]);
  // The last rung judged is printed once the incident has ended: until then it may still act.
  const last = { ...r.rungs[1], endedAt: 'd', outcome: 'healthy', detail: 'verified healthy', actions: ['x'] } as const;
  const judged = { ...r, rungs: [r.rungs[0], last] } as IncidentRecord;
  expect(incidentMilestones(judged).map((m) => m.key)).toEqual(['diagnosis', 'rung:0', 'rung:0:end', 'rung:1']);
  expect(incidentMilestones({ ...judged, endedAt: 'e', outcome: 'recovered' }).at(-1)?.text).toBe(
    'rung 2: reset-gpu healthy: verified healthy (x)',
  );
});

describe('FollowOutput', () => {
  function capture(tty: boolean): { out: NodeJS.WriteStream; text: () => string } {
    const s = new PassThrough();
    let buf = '';
    s.on('data', (d: Buffer) => (buf += d.toString()));
    return { out: Object.assign(s, { isTTY: tty, columns: 80 }) as unknown as NodeJS.WriteStream, text: () => buf };
  }
  const transfer = (pct: number) => ({
    event: { event: 'progress', pct },
    render: (width?: number) => (width ? `bar ${pct}% (${width} wide)` : `pull ${pct}%`),
  });

  test('not a terminal: a plain line per change and per move of the transfer; repeats are not printed', () => {
    const c = capture(false);
    const o = new FollowOutput({}, c.out);
    o.change({ stage: 'pulling' }, ['stage pulling']);
    o.transfer(transfer(10));
    o.transfer(transfer(10));
    o.transfer(transfer(20));
    o.change({ stage: 'pulling' }, ['stage pulling']);
    o.once('k', { m: 1 }, ['milestone']);
    o.once('k', { m: 1 }, ['milestone']);
    o.close();
    expect(c.text()).toBe('stage pulling\npull 10%\npull 20%\nmilestone\n');
  });

  test('a terminal: the bar is redrawn in place and ends with a newline before the next line', () => {
    const c = capture(true);
    const o = new FollowOutput({}, c.out);
    o.transfer(transfer(10));
    o.transfer(transfer(20));
    o.change({ stage: 'validating' }, ['stage validating']);
    o.close();
    expect(c.text()).toBe('\r\x1b[2Kbar 10% (80 wide)\r\x1b[2Kbar 20% (80 wide)\nstage validating\n');
  });

  test('--json: one compact JSON object per line, on a terminal too (no bar)', () => {
    const c = capture(true);
    const o = new FollowOutput({ json: true }, c.out);
    o.change({ event: 'status', stage: 'pulling' }, ['ignored']);
    o.transfer(transfer(10));
    o.close();
    const lines = c.text().trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l) as unknown)).toEqual([
      { event: 'status', stage: 'pulling' },
      { event: 'progress', pct: 10 },
    ]);
  });
});
