/**
 * The workflow Saga (workflows/saga.ts), outside a workflow: compensation order, its record, and that it never
 * throws. Its shield is injected here (in a workflow it is CancellationScope.nonCancellable, which the deployModel
 * cancellation test exercises on a real server).
 */
import { ActivityFailure, ApplicationFailure, RetryState } from '@temporalio/common';
import { Saga, failureMessage, recordStep, type SagaStepRecord } from '../workflows/saga';

/** A shield that records whether the undos ran inside it. */
function shieldSpy() {
  const spy = { inside: false, calls: 0, ranInside: [] as boolean[] };
  const shield = async <T>(fn: () => Promise<T>): Promise<T> => {
    spy.calls++;
    spy.inside = true;
    try {
      return await fn();
    } finally {
      spy.inside = false;
    }
  };
  return { spy, shield };
}

const activityFailed = (message: string): ActivityFailure =>
  new ActivityFailure(
    'Activity task failed',
    'unloadModel',
    '7',
    RetryState.MAXIMUM_ATTEMPTS_REACHED,
    'w',
    new Error(message),
  );

test('compensates in reverse order of add, each undo once, inside the shield, and records each in the log', async () => {
  const log: SagaStepRecord[] = [];
  const { spy, shield } = shieldSpy();
  const saga = new Saga(log, { shield });
  const ran: string[] = [];
  for (const step of ['unload model', 'remove canary', 'weight 0']) {
    saga.add(step, async () => {
      ran.push(step);
      spy.ranInside.push(spy.inside);
      return `${step}: done`;
    });
  }
  expect(saga.pending).toEqual(['weight 0', 'remove canary', 'unload model']);
  const done = await saga.compensate();
  expect(ran).toEqual(['weight 0', 'remove canary', 'unload model']);
  expect(spy.calls).toBe(1);
  expect(spy.ranInside).toEqual([true, true, true]);
  expect(log).toEqual([
    { step: 'weight 0', ok: true, detail: 'weight 0: done' },
    { step: 'remove canary', ok: true, detail: 'remove canary: done' },
    { step: 'unload model', ok: true, detail: 'unload model: done' },
  ]);
  expect(done).toEqual(log);
  // Compensated once: the saga is empty afterwards.
  expect(saga.pending).toEqual([]);
  expect(await saga.compensate()).toEqual([]);
  expect(log).toHaveLength(3);
});

test('a failing undo is recorded with the activity’s own message and the others still run; compensate never throws', async () => {
  const log: SagaStepRecord[] = [];
  const saga = new Saga(log, { shield: (fn) => fn() });
  const ran: string[] = [];
  saga.add('first', async () => {
    ran.push('first');
    return 'ok';
  });
  saga.add('fails (activity)', () => Promise.reject(activityFailed('engine unreachable')));
  saga.add('fails (plain)', () => Promise.reject(ApplicationFailure.nonRetryable('no such alias', 'UnknownAlias')));
  saga.add('throws synchronously', () => {
    throw new Error('bug');
  });
  await expect(saga.compensate()).resolves.toHaveLength(4);
  expect(ran).toEqual(['first']);
  expect(log).toEqual([
    { step: 'throws synchronously', ok: false, detail: 'bug' },
    { step: 'fails (plain)', ok: false, detail: 'no such alias' },
    { step: 'fails (activity)', ok: false, detail: 'engine unreachable' },
    { step: 'first', ok: true, detail: 'ok' },
  ]);
});

test('reset forgets the undos added so far: only those added after it run', async () => {
  const log: SagaStepRecord[] = [];
  const saga = new Saga(log, { shield: (fn) => fn() });
  saga.add('before promotion', async () => 'no');
  saga.reset();
  saga.add('switch back', async () => 'switched');
  await saga.compensate();
  expect(log).toEqual([{ step: 'switch back', ok: true, detail: 'switched' }]);
});

test('recordStep records success and failure alike and answers the record', async () => {
  const log: SagaStepRecord[] = [];
  expect(await recordStep(log, 'tidy', async () => 'removed')).toEqual({ step: 'tidy', ok: true, detail: 'removed' });
  expect(await recordStep(log, 'unload', () => Promise.reject(activityFailed('gone')))).toEqual({
    step: 'unload',
    ok: false,
    detail: 'gone',
  });
  expect(log.map((r) => r.ok)).toEqual([true, false]);
  expect(failureMessage('not an error')).toBe('not an error');
});
