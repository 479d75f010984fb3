/**
 * Test-only stand-in for the real `recoverNode` workflow: same type name and input, no ladder. It keeps its input
 * for a query and runs until the `finish` signal (or 30 s), so a test decides when "the recovery" is over.
 */
import { condition, defineQuery, defineSignal, setHandler } from '@temporalio/workflow';
import type { AlertRecoverInput as RecoverNodeInput } from '../../src/hooks/alertmanager';

export const recoverInputQuery = defineQuery<RecoverNodeInput>('recoverInput');
export const finishRecoverySignal = defineSignal('finishRecovery');

export async function recoverNode(input: RecoverNodeInput): Promise<RecoverNodeInput> {
  let finished = false;
  setHandler(recoverInputQuery, () => input);
  setHandler(finishRecoverySignal, () => {
    finished = true;
  });
  await condition(() => finished, '30s');
  return input;
}
