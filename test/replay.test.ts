/**
 * Replay committed histories (recorded from real runs with `temporal workflow show --output json`) against today's
 * workflow code: a change that would break a running workflow's determinism fails here, not in production.
 * Add a history for every workflow and branch that matters; regenerate none of them when code changes.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { workflowBundle } from './helpers/env';

const dir = path.join(__dirname, 'histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

test('there are committed histories to replay', () => {
  expect(files.length).toBeGreaterThanOrEqual(4);
});

test.each(files)('replays %s without nondeterminism', async (file) => {
  const history = historyFromJSON(JSON.parse(readFileSync(path.join(dir, file), 'utf8')));
  const workflowId = path.basename(file, '.json');
  await expect(
    Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, workflowId),
  ).resolves.toBeUndefined();
});
