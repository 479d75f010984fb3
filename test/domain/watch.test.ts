import type { Problem } from '../../src/domain/classify';
import {
  actionableProblems,
  activeWindows,
  applyMaintenance,
  coveredByMaintenance,
  foldBlindStreak,
  NO_BLIND_STREAK,
  unknownEngine,
  watchGenerateTimeoutMs,
  halfIntervalGenerateTimeoutMs,
  roundVerdict,
  watcherStartRung,
  type Window,
} from '../../src/domain/watch';

const at = Date.parse('2026-01-01T12:00:00Z');
const win = (over: Partial<Window> = {}): Window => ({
  reason: 'driver upgrade',
  engine: null,
  by: null,
  since: '2026-01-01T11:00:00.000Z',
  until: '2026-01-01T13:00:00.000Z',
  ...over,
});
const problem = (over: Partial<Problem> = {}): Problem => ({
  kind: 'engine-hung',
  subject: 'ollama',
  detail: 'x',
  rung: 'restart-container',
  severity: 'critical',
  ...over,
});
const engines = [
  { name: 'ollama', container: 'ollama-ctr' },
  { name: 'vllm', container: 'vllm-ctr' },
];

test('expired windows drop out', () => {
  const old = win({ until: '2026-01-01T11:59:59.000Z' });
  expect(activeWindows([old, win()], at)).toEqual([win()]);
});

test('a request opens a window for a duration or until a time, noting who and since when', () => {
  expect(applyMaintenance([], { reason: 'r', duration: '30m', by: 'ci', clear: false }, at)).toEqual([
    { reason: 'r', engine: null, by: 'ci', since: '2026-01-01T12:00:00.000Z', until: '2026-01-01T12:30:00.000Z' },
  ]);
  const until = '2026-01-02T00:00:00.000Z';
  expect(applyMaintenance([win()], { reason: 'r', until, engine: 'vllm', clear: false }, at)).toEqual([
    win(),
    { reason: 'r', engine: 'vllm', by: null, since: '2026-01-01T12:00:00.000Z', until },
  ]);
});

test("clear ends the named engine's windows, or every window when it names none", () => {
  const windows = [win(), win({ engine: 'vllm' }), win({ engine: 'ollama' })];
  expect(applyMaintenance(windows, { reason: 'done', engine: 'vllm', clear: true }, at)).toEqual([
    win(),
    win({ engine: 'ollama' }),
  ]);
  expect(applyMaintenance(windows, { reason: 'done', clear: true }, at)).toEqual([]);
});

test('a request may only name one of the node’s engines', () => {
  expect(unknownEngine({ reason: 'r', clear: false }, ['ollama'])).toBeNull();
  expect(unknownEngine({ reason: 'r', engine: 'ollama', clear: false }, ['ollama'])).toBeNull();
  expect(unknownEngine({ reason: 'r', engine: 'nope', clear: false }, ['ollama', 'vllm'])).toBe(
    'invalid maintenance: engine: must be one of ollama, vllm (got "nope")',
  );
});

test('a node-wide window covers every problem; an engine window covers its engine and its container only', () => {
  expect(coveredByMaintenance(problem({ subject: 'gpu0' }), [win()], engines)).toBe(true);
  const vllm = [win({ engine: 'vllm' })];
  expect(coveredByMaintenance(problem({ subject: 'vllm' }), vllm, engines)).toBe(true);
  expect(coveredByMaintenance(problem({ subject: 'vllm-ctr' }), vllm, engines)).toBe(true);
  expect(coveredByMaintenance(problem({ subject: 'ollama-ctr' }), vllm, engines)).toBe(false);
  expect(coveredByMaintenance(problem({}), [], engines)).toBe(false);
});

test('only critical problems outside maintenance count towards a recovery', () => {
  const warn = problem({ kind: 'disk-low', subject: '/models', severity: 'warning' });
  const hung = problem({ subject: 'ollama' });
  const vllm = problem({ subject: 'vllm-ctr', kind: 'container-exited' });
  expect(actionableProblems([warn, hung, vllm], [win({ engine: 'vllm' })], engines)).toEqual([hung]);
});

describe('watchGenerateTimeoutMs', () => {
  test('is what single probes gave the generation (probeTimeout less 2 s, at least 1 s), unless configured', () => {
    // The watcher's default probeTimeout is 15 s: a loaded engine keeps the 13 s it had before one-activity rounds.
    expect(watchGenerateTimeoutMs('15s')).toBe(13_000);
    expect(watchGenerateTimeoutMs('6s')).toBe(4_000);
    expect(watchGenerateTimeoutMs('2s')).toBe(1_000);
    expect(watchGenerateTimeoutMs('15s', '500ms')).toBe(500);
  });

  test("the first rounds' default (half the interval, 1 – 5 s) is kept for their replay only", () => {
    expect(halfIntervalGenerateTimeoutMs('5s')).toBe(2500);
    expect(halfIntervalGenerateTimeoutMs('300ms')).toBe(1000);
    expect(halfIntervalGenerateTimeoutMs('1m')).toBe(5000);
  });
});

describe('roundVerdict', () => {
  const prev = { consecutiveFailures: 2, healthy: false };
  test('a round with a failed probe and nothing actionable keeps the count and the last health', () => {
    expect(roundVerdict(prev, { actionable: 0, unknown: true, healthy: false })).toEqual({ ...prev, blind: true });
    expect(
      roundVerdict({ consecutiveFailures: 0, healthy: true }, { actionable: 0, unknown: true, healthy: false }),
    ).toEqual({ consecutiveFailures: 0, healthy: true, blind: true });
  });
  test('what a blind round did see still counts; a healthy round resets', () => {
    expect(roundVerdict(prev, { actionable: 1, unknown: true, healthy: false })).toEqual({
      consecutiveFailures: 3,
      healthy: false,
      blind: false,
    });
    expect(roundVerdict(prev, { actionable: 0, unknown: false, healthy: true })).toEqual({
      consecutiveFailures: 0,
      healthy: true,
      blind: false,
    });
  });
});

describe('watcherStartRung', () => {
  const p = (kind: Problem['kind']): Problem => ({
    kind,
    subject: 'n1',
    detail: '',
    rung: 'escalate',
    severity: 'critical',
  });
  test('only failed probe rounds go straight to escalation; anything seen lets recoverNode choose', () => {
    expect(watcherStartRung([p('probe-failed'), p('probe-failed')])).toBe('escalate');
    expect(watcherStartRung([p('probe-failed'), p('engine-hung')])).toBeUndefined();
    expect(watcherStartRung([])).toBeUndefined();
  });
});

describe('foldBlindStreak', () => {
  const t = (i: number) => `2026-01-01T12:00:0${i}.000Z`;
  /** Fold a sequence of rounds (true: blind) and list what each one sends. */
  const run = (rounds: boolean[], alertAfter: number) => {
    let streak = NO_BLIND_STREAK;
    const sends = rounds.map((blind, i) => {
      const r = foldBlindStreak(streak, { blind, at: t(i) }, alertAfter);
      streak = r.streak;
      return r.send;
    });
    return { sends, streak };
  };

  test('warns once when the streak reaches alertAfter, however long it lasts, and clears at the first seeing round', () => {
    const { sends } = run([true, true, true, true, true, false, false], 3);
    expect(sends).toEqual([null, null, 'alert', null, null, 'answered', null]);
  });

  test('counts from the first blind round, kept for the whole streak; a seeing round starts the count over', () => {
    expect(run([true, true], 3).streak).toEqual({ rounds: 2, since: t(0), alerted: false });
    expect(run([true, true, false, true], 3)).toEqual({
      sends: [null, null, null, null],
      streak: { rounds: 1, since: t(3), alerted: false },
    });
  });

  test('a streak cut short of alertAfter sends no all-clear; alertAfter 0 never alerts', () => {
    expect(run([true, false], 2).sends).toEqual([null, null]);
    expect(run([true, true, true, false], 0).sends).toEqual([null, null, null, null]);
    expect(run([true, false, true, true], 2).sends).toEqual([null, null, null, 'alert']);
  });

  test('node-wide maintenance holds the warning; a streak that outlasts the window warns at its next round', () => {
    const quiet = (n: number) => ({ rounds: n, since: t(0), alerted: false });
    expect(foldBlindStreak(quiet(4), { blind: true, at: t(5), quiet: true }, 3)).toEqual({
      streak: { rounds: 5, since: t(0), alerted: false },
      send: null,
    });
    expect(foldBlindStreak(quiet(5), { blind: true, at: t(6), quiet: false }, 3).send).toBe('alert');
    expect(foldBlindStreak(quiet(5), { blind: false, at: t(6), quiet: true }, 3).send).toBeNull();
  });

  test('a round that cannot send (a run from before the alert, replaying) leaves the warning owed to the next', () => {
    const streak = { rounds: 3, since: t(0), alerted: false };
    const replaying = foldBlindStreak(streak, { blind: true, at: t(4) }, 3, () => false);
    expect(replaying).toEqual({ streak: { rounds: 4, since: t(0), alerted: false }, send: null });
    expect(foldBlindStreak(replaying.streak, { blind: true, at: t(5) }, 3, () => true).send).toBe('alert');
    // Nothing owed, nothing asked: a streak never alerted ends without an all-clear and without asking.
    const asked: string[] = [];
    const ask = () => (asked.push('asked'), true);
    expect(foldBlindStreak(streak, { blind: false, at: t(4) }, 3, ask).send).toBeNull();
    expect(foldBlindStreak({ ...streak, rounds: 1 }, { blind: true, at: t(4) }, 3, ask).send).toBeNull();
    expect(asked).toEqual([]);
  });

  test('a carried streak (continue-as-new) goes on where it was', () => {
    const carried = { rounds: 5, since: t(0), alerted: true };
    expect(foldBlindStreak(carried, { blind: true, at: t(6) }, 3)).toEqual({
      streak: { rounds: 6, since: t(0), alerted: true },
      send: null,
    });
    expect(foldBlindStreak(carried, { blind: false, at: t(6) }, 3).send).toBe('answered');
  });
});
