/**
 * The codec server (`gpuops codec-server`) under hostile requests, in process: fuzzed bodies for an authorised caller
 * (mutated real ones, raw text, deep JSON, huge values) never get a 5xx, never crash it, never leave an unhandled
 * rejection, and every 400 names the field; an unauthorised caller gets 401 whatever it sends, its body never read.
 * Its limits hold: a body just over the limit is 413 naming the limit, one at the limit is read; slow-loris clients
 * and unfinished bodies are cut off in time (408).
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { EncryptionCodec } from '../../src/temporal/codec';
import { CODEC_LIMITS, startCodecServer, type CodecServer } from '../../src/temporal/codec-server';
import type { HttpLimits } from '../../src/http-limits';
import { runLog } from '../helpers/run-log';
import { testSecret } from '../helpers/secrets';
import { deepText, fuzzParams, hostileString, mutated, noUnhandled, toText } from './arbitraries';
import { SLOW_CLIENT_LIMITS, expectNamedRefusalOrOk, expectSlowClientsCutOff } from './http';

const TOKEN = testSecret('codec-server-token');
const codec = new EncryptionCodec(new Map([['key-a', randomBytes(32)]]), 'key-a');

async function withServer<T>(fn: (s: CodecServer) => Promise<T>, limits: Partial<HttpLimits> = {}): Promise<T> {
  const s = await startCodecServer({
    codec,
    token: Buffer.from(TOKEN),
    listen: '127.0.0.1:0',
    corsOrigins: ['http://localhost:8233'],
    limits,
    log: runLog('codec-server'),
  });
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

const AUTH = { authorization: `Bearer ${TOKEN}` };

async function post(
  url: string,
  path: string,
  body: string,
  headers: Record<string, string> = AUTH,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
  });
  return { status: r.status, json: (await r.json()) as Record<string, unknown> };
}

const toJson = (p: Payload) => ({
  metadata: Object.fromEntries(
    Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')]),
  ),
  data: Buffer.from(p.data ?? []).toString('base64'),
});

/** A real /decode body: one payload encrypted with the server's key, one plain (passed through). */
async function realBody(): Promise<{ payloads: ReturnType<typeof toJson>[] }> {
  const plain = defaultPayloadConverter.toPayload({ plan: { id: 'p', repository: '/srv/restic' } });
  const [encrypted] = await codec.encode([plain]);
  if (!encrypted) throw new Error('no payload');
  return { payloads: [toJson(encrypted), toJson(plain)] };
}

test('fuzzed bodies from the token holder: no 5xx, no crash, no unhandled rejection, every 400 names the field', async () => {
  const base = await realBody();
  await noUnhandled(() =>
    withServer(async (server) => {
      const body = fc.oneof(
        { weight: 6, arbitrary: mutated(base).map((d) => toText(d, 'json')) },
        { weight: 1, arbitrary: hostileString },
        { weight: 1, arbitrary: fc.constant(deepText(100_000)) },
        { weight: 1, arbitrary: fc.constant(`{"payloads":${deepText(10_000, 'object')}}`) },
      );
      await fc.assert(
        fc.asyncProperty(body, fc.constantFrom('/decode', '/encode', '/default/decode'), async (text, path) => {
          expectNamedRefusalOrOk(await post(server.url, path, text));
        }),
        fuzzParams(120),
      );
      // A real body still decodes after all that.
      const ok = await post(server.url, '/decode', JSON.stringify(base));
      expect(ok.status).toBe(200);
    }),
  );
});

test('whatever an unauthorised caller sends is 401, its body never read', async () => {
  await withServer(async (server) => {
    await fc.assert(
      fc.asyncProperty(
        hostileString,
        fc.constantFrom<Record<string, string>>({}, { authorization: 'Bearer nope' }),
        async (text, headers) => {
          const r = await post(server.url, '/decode', text, headers);
          expect(r.status).toBe(401);
        },
      ),
      fuzzParams(40),
    );
    // Over the body limit too: refused as unauthorised, not as too large (the body is never read).
    const over = await post(server.url, '/decode', 'a'.repeat(CODEC_LIMITS.bodyLimitBytes + 1), {});
    expect(over.status).toBe(401);
  });
});

describe('limits', () => {
  test('a body just over the default limit is 413 naming the limit; one at the limit is read', async () => {
    await withServer(async (server) => {
      const limit = CODEC_LIMITS.bodyLimitBytes;
      const base = JSON.stringify({ payloads: [] });
      const pad = (n: number): string => `${base.slice(0, -1)},"pad":"${'a'.repeat(n - base.length - 9)}"}`;
      expect(pad(limit).length).toBe(limit);
      const over = await post(server.url, '/decode', pad(limit + 1));
      expect(over).toEqual({
        status: 413,
        json: { error: 'invalid request', problems: [`(body): must be at most ${limit} bytes`] },
      });
      const at = await post(server.url, '/decode', pad(limit));
      expect(at).toEqual({ status: 200, json: { payloads: [] } });
    });
  });

  test('JSON that does not parse, and a payload the codec cannot take, are 400 naming what was wrong', async () => {
    await withServer(async (server) => {
      const bad = await post(server.url, '/decode', '{"payloads":[');
      expect(bad.status).toBe(400);
      expect(bad.json.problems).toEqual([expect.stringMatching(/^\(request\): /)]);
      const { payloads } = await realBody();
      const [encrypted] = payloads;
      if (!encrypted) throw new Error('no payload');
      const tampered = { ...encrypted, data: Buffer.from('x'.repeat(40)).toString('base64') };
      const r = await post(server.url, '/decode', JSON.stringify({ payloads: [tampered] }));
      expect(r).toEqual({
        status: 400,
        json: {
          error: 'cannot decode',
          problems: ['payloads: encrypted payload (key "key-a") failed authentication: altered, or a different key'],
        },
      });
    });
  });

  test('a slow-loris client (headers byte by byte) and an unfinished body are cut off within the timeouts', async () => {
    await withServer(
      (server) => expectSlowClientsCutOff(server.url, '/decode', { headers: AUTH, tail: '{"payloads":' }),
      SLOW_CLIENT_LIMITS,
    );
  });
});
