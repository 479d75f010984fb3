/**
 * Replay committed histories (recorded from real runs with `temporal workflow show --output json`) against today's
 * workflow code: a change that would break a running workflow's determinism fails here, not in production.
 * Add a history for every workflow and branch that matters; regenerate none of them when code changes.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { randomBytes } from 'node:crypto';
import { workflowIds } from '../src/contracts';
import { EncryptionCodec, dataConverterWith } from '../src/temporal/codec';
import { workflowBundle } from './helpers/env';
import { ENCRYPTED, testCodec } from './fixtures/encrypted-history/encrypt-history';

const dir = path.join(__dirname, 'histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

test('there are committed histories to replay', () => {
  expect(files.length).toBeGreaterThanOrEqual(4);
});

/**
 * The workflow ID to replay under: deployModel insists on its own `deploy:<node>:<alias>` (the ID is its lock), so it
 * comes from the recorded input; other workflows take the file's name.
 */
function workflowIdFor(file: string, json: StartedHistoryJson): string {
  const started = json.events?.[0]?.workflowExecutionStartedEventAttributes;
  if (started?.workflowType?.name === 'deployModel') {
    const data = started.input?.payloads?.[0]?.data;
    const input = JSON.parse(Buffer.from(data ?? '', 'base64').toString('utf8')) as { node: string; alias: string };
    return workflowIds.deploy(input.node, input.alias);
  }
  return path.basename(file, '.json');
}

interface StartedHistoryJson {
  events?: {
    workflowExecutionStartedEventAttributes?: {
      workflowType?: { name?: string };
      input?: { payloads?: { data?: string }[] };
    };
  }[];
}

test.each(files)('replays %s without nondeterminism', async (file) => {
  const json = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as StartedHistoryJson;
  const history = historyFromJSON(json);
  const workflowId = workflowIdFor(file, json);
  await expect(
    Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, history, workflowId),
  ).resolves.toBeUndefined();
});

test.each(files.filter((f) => /^(deploy-model-promoted|run-backup-ok|recover-node-xid79-reboot)\.json$/.test(f)))(
  'replays %s through a worker with the payload codec (its plaintext payloads pass through)',
  async (file) => {
    const json = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as StartedHistoryJson;
    const codec = new EncryptionCodec(new Map([['k1', randomBytes(32)]]), 'k1');
    await expect(
      Worker.runReplayHistory(
        { workflowBundle: await workflowBundle(), dataConverter: dataConverterWith(codec) },
        historyFromJSON(json),
        workflowIdFor(file, json),
      ),
    ).resolves.toBeUndefined();
  },
);

describe('an encrypted history (test/fixtures/encrypted-history, a committed TEST-ONLY key)', () => {
  const json = JSON.parse(readFileSync(ENCRYPTED, 'utf8')) as StartedHistoryJson & {
    events: {
      workflowExecutionStartedEventAttributes?: { input?: { payloads?: { metadata?: { encoding?: string } }[] } };
    }[];
  };
  const encodingOf = (p: { metadata?: { encoding?: string } } | undefined): string =>
    Buffer.from(p?.metadata?.encoding ?? '', 'base64').toString();

  test('its payloads are ciphertext: the started input is binary/encrypted and holds no plan field in clear', () => {
    const input = json.events[0]?.workflowExecutionStartedEventAttributes?.input?.payloads ?? [];
    expect(input.map(encodingOf)).toEqual(['binary/encrypted']);
    expect(readFileSync(ENCRYPTED, 'utf8')).not.toContain('"repository"');
  });

  test('replays through a worker with the payload codec and the key', async () => {
    await expect(
      Worker.runReplayHistory(
        { workflowBundle: await workflowBundle(), dataConverter: dataConverterWith(testCodec()) },
        historyFromJSON(json),
        'run-backup-ok',
      ),
    ).resolves.toBeUndefined();
  });

  test('does not replay without the key: the worker cannot read its input', async () => {
    await expect(
      Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, historyFromJSON(json), 'run-backup-ok'),
    ).rejects.toThrow();
  });
});
