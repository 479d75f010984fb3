/**
 * A saga for workflows: after each step that changed the world, add its undo; on failure, compensate() runs the undos
 * in reverse, shielded from cancellation (a cancelled workflow still restores what it changed), records how each one
 * went — what could not be undone stays in the record, it is never hidden — and never throws. Workflow-safe: the
 * undos are the caller's activities; the saga itself only orders and records them.
 */
import { ActivityFailure, CancellationScope } from '@temporalio/workflow';

/** How one undo (or clean-up step) went, as an audit record keeps it. */
export interface SagaStepRecord {
  step: string;
  ok: boolean;
  /** What the step answered, or why it failed. */
  detail: string;
}

/** An undo: does its work and says what it did ("unloaded", "kept: a route still uses it"). */
export type SagaStep = () => Promise<string>;

/** The message of a failure: for an activity failure its cause (the activity's own error), not the wrapper. */
export function failureMessage(err: unknown): string {
  const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
  return cause instanceof Error ? cause.message : String(cause);
}

/** Run one step and append how it went to `log`; never throws. Answers the record. */
export async function recordStep(
  log: SagaStepRecord[],
  step: string,
  run: SagaStep,
  describe: (err: unknown) => string = failureMessage,
): Promise<SagaStepRecord> {
  let record: SagaStepRecord;
  try {
    record = { step, ok: true, detail: await run() };
  } catch (err) {
    record = { step, ok: false, detail: describe(err) };
  }
  log.push(record);
  return record;
}

export interface SagaOptions {
  /**
   * The scope compensation runs in: CancellationScope.nonCancellable (the default), so cancelling the workflow does
   * not stop its own clean-up. Code outside a workflow (unit tests) passes its own.
   */
  shield?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** How a failed undo is described in the record (default: failureMessage). */
  describe?: (err: unknown) => string;
}

/** `D`: what an undo may carry as data (e.g. to rebuild it in the run a workflow continues as new). */
export class Saga<D = never> {
  private undos: { step: string; run: SagaStep; data?: D }[] = [];
  private readonly shield: <T>(fn: () => Promise<T>) => Promise<T>;
  private readonly describe: (err: unknown) => string;

  /** `log` is where compensation records each undo, in the order they ran (e.g. the audit record's `undo`). */
  constructor(
    private readonly log: SagaStepRecord[],
    opts: SagaOptions = {},
  ) {
    this.shield = opts.shield ?? ((fn) => CancellationScope.nonCancellable(fn));
    this.describe = opts.describe ?? failureMessage;
  }

  /** Register the undo of a step that changed the world (add it before the step when a half-done step needs it too). */
  add(step: string, run: SagaStep, data?: D): void {
    this.undos.push(data === undefined ? { step, run } : { step, run, data });
  }

  /** Each undo's data, in the order they were added; null when an undo has none (it cannot be rebuilt elsewhere). */
  get data(): D[] | null {
    const data = this.undos.map((u) => u.data);
    return data.every((d) => d !== undefined) ? data : null;
  }

  /** Forget every undo: what was done is now meant to stay (e.g. after a promotion, a new set of undos begins). */
  reset(): void {
    this.undos = [];
  }

  /** The undos compensate() would run, in the order it would run them. */
  get pending(): string[] {
    return this.undos.map((u) => u.step).reverse();
  }

  /**
   * Run every undo, last added first, each once, even when one fails; record each; never throw. The saga is empty
   * afterwards. Answers the records of this compensation.
   */
  compensate(): Promise<SagaStepRecord[]> {
    const undos = this.undos.reverse();
    this.undos = [];
    return this.shield(async () => {
      const done: SagaStepRecord[] = [];
      for (const u of undos) done.push(await recordStep(this.log, u.step, u.run, this.describe));
      return done;
    });
  }
}
