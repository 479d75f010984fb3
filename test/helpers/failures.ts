/** Assertions about the failures activities throw. */
import { ApplicationFailure } from '@temporalio/common';

/** The failure a call threw, asserted to be a non-retryable ApplicationFailure. */
export async function nonRetryableOf(p: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApplicationFailure);
  expect((err as ApplicationFailure).nonRetryable).toBe(true);
  return err as ApplicationFailure;
}
