/**
 * The Alertmanager receiver under hostile deliveries, in-process against the run-wide Temporal dev server: fuzzed
 * payloads (mutated real ones, raw text, deep JSON, huge values, hostile labels) never get a 5xx, never crash it,
 * never leave an unhandled rejection, and every 400 names the field. Its limits hold: a body just over the limit is
 * 413 (before authentication, so nothing is parsed), slow-loris clients and unfinished bodies are cut off in time.
 */
import fc from 'fast-check';
import { HOOKS_LIMITS, startHooksServer, type HooksServer } from '../../src/hooks/server';
import { ALERTMANAGER_PATH } from '../../src/hooks/server';
import { runLog } from '../helpers/run-log';
import { TOKEN, alert, fixture, openTemporal, payload, type Temporal } from '../hooks/harness';
import { deepText, fuzzParams, hostileString, mutated, noUnhandled, toText } from './arbitraries';
import { SLOW_CLIENT_LIMITS, expectNamedRefusalOrOk, expectSlowClientsCutOff } from './http';

let t: Temporal;
beforeAll(async () => {
  t = await openTemporal();
});
afterAll(async () => {
  await t.close();
});

async function withServer<T>(fn: (s: HooksServer, nodes: string[]) => Promise<T>, limits = {}): Promise<T> {
  const fx = fixture(2);
  const s = await startHooksServer({
    loaded: fx.loaded,
    client: t.client,
    listen: '127.0.0.1:0',
    stateFile: fx.stateFile,
    taskQueue: t.taskQueue,
    limits,
    log: runLog('hooks-fuzz'),
  });
  try {
    return await fn(s, fx.nodes);
  } finally {
    await s.close();
  }
}

async function post(url: string, body: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(`${url}${ALERTMANAGER_PATH}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` },
    body,
  });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

test('fuzzed deliveries: no 5xx, no crash, no unhandled rejection, every 400 names the field', async () => {
  await noUnhandled(() =>
    withServer(async (server, nodes) => {
      // Alerts about an unknown node are ignored; about a configured one they start a (never polled) recovery.
      const base = payload([
        alert({ labels: { gpuops_node: 'not-a-node', instance: 'gpu-x:9400' }, fingerprint: 'f00d' }),
        alert({ labels: { node: 'also-not', gpuops_fault: 'xid-79' }, status: 'resolved', fingerprint: 'beef' }),
      ]);
      const body = fc.oneof(
        { weight: 6, arbitrary: mutated(base).map((d) => toText(d, 'json')) },
        {
          weight: 2,
          arbitrary: fc
            .tuple(hostileString, hostileString, fc.boolean())
            .map(([label, value, known]) =>
              JSON.stringify(
                payload([alert({ labels: { [label]: value, ...(known ? { gpuops_node: nodes[0] ?? '' } : {}) } })]),
              ),
            ),
        },
        { weight: 1, arbitrary: hostileString },
        { weight: 1, arbitrary: fc.constant(deepText(100_000)) },
        { weight: 1, arbitrary: fc.constant(`{"version":"4","alerts":${deepText(10_000, 'object')}}`) },
      );
      await fc.assert(
        fc.asyncProperty(body, async (text) => {
          expectNamedRefusalOrOk(await post(server.url, text));
        }),
        fuzzParams(120),
      );
      const health = await fetch(`${server.url}/healthz`);
      expect(health.status).toBe(200);
    }),
  );
});

describe('limits', () => {
  test('a body just over the default limit is 413 naming the limit; one at the limit is read', async () => {
    await withServer(async (server) => {
      const limit = HOOKS_LIMITS.bodyLimitBytes;
      const base = JSON.stringify(payload([]));
      const pad = (n: number): string => `${base.slice(0, -1)},"pad":"${'a'.repeat(n - base.length - 9)}"}`;
      expect(pad(limit).length).toBe(limit);
      const over = await post(server.url, pad(limit + 1));
      expect(over).toEqual({
        status: 413,
        json: { error: 'invalid request', problems: [`(body): must be at most ${limit} bytes`] },
      });
      const at = await post(server.url, pad(limit));
      expect(at.status).toBe(200);
    });
  });

  test('a slow-loris client (headers byte by byte) and an unfinished body are cut off within the timeouts', async () => {
    await withServer(
      (server) =>
        expectSlowClientsCutOff(server.url, ALERTMANAGER_PATH, {
          headers: { authorization: `Bearer ${TOKEN}` },
          tail: '{"version":"4"',
        }),
      SLOW_CLIENT_LIMITS,
    );
  });
});
