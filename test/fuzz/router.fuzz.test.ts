/**
 * The router under hostile requests, in-process against a loopback upstream: fuzzed generation bodies and admin API
 * calls never get a 5xx, never crash it, never leave an unhandled rejection, and every 4xx names what was wrong.
 * Its limits hold: a body just over the limit is 413, a slow-loris client and an unfinished body are cut off within
 * the configured timeouts, and a healthy stream longer than the request timeout is not.
 */
import fc from 'fast-check';
import { ROUTER_LIMITS, startRouter, type RouterHandle } from '../../src/router/server';
import { canaryRoute, sseTokens, startFixture, tempDir, tokenFile, writeChunks, type Fixture } from '../router/helpers';
import {
  DEEP_ARRAY,
  NAMED_ISSUE,
  deepText,
  fuzzParams,
  hostileString,
  hostileValue,
  mutated,
  noUnhandled,
  toText,
} from './arbitraries';
import { endlessHead, headWithBody, rawRequest } from './http';
import { runLog } from '../helpers/run-log';

const TOKEN = 's3cret-token';
let upstream: Fixture;
let dir: { dir: string; cleanup: () => void };

beforeAll(async () => {
  dir = tempDir();
  upstream = await startFixture(async (req, res) => {
    const body = JSON.parse(req.body) as { stream?: boolean; model?: string };
    if (body.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await writeChunks(res, sseTokens(body.model ?? 'm', 3), 1);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ choices: [{ message: { content: 'ok' } }], usage: { completion_tokens: 1 } }));
  });
});

afterAll(async () => {
  await upstream.close();
  dir.cleanup();
});

const table = (engine: string) => ({
  routes: {
    chat: canaryRoute({ engine, model: 'qwen2.5:7b', weight: 90 }, { engine, model: 'qwen2.5:7b-new', weight: 10 }),
    'llama3:8b': {
      variants: [{ name: 'stable', engine, engineType: 'ollama' as const, model: 'llama3:8b', weight: 100 }],
    },
  },
});

async function withRouter<T>(fn: (r: RouterHandle) => Promise<T>, limits = {}): Promise<T> {
  const r = await startRouter({
    port: 0,
    adminTokenFile: tokenFile(dir.dir, TOKEN),
    initialRoutes: table(upstream.url),
    limits,
    log: runLog('router-fuzz'),
  });
  try {
    return await fn(r);
  } finally {
    await r.close();
  }
}

/** The refusal text of a 4xx body, in whichever API shape it came. */
function refusal(json: unknown): string[] {
  const j = json as { error?: unknown; problems?: unknown };
  if (Array.isArray(j.problems)) return j.problems.map(String);
  if (typeof j.error === 'string') return [j.error];
  const e = j.error as { message?: unknown } | undefined;
  return [String(e?.message ?? JSON.stringify(json))];
}

function expectNamed(status: number, json: unknown): void {
  const lines = refusal(json);
  if (status === 400 || status === 413) {
    // The client APIs carry one message, the issues joined with "; "; the admin API a list.
    const issues = Array.isArray((json as { problems?: unknown }).problems)
      ? lines
      : lines.flatMap((x) => x.split(/; (?=\(root\)|[a-z]\w*[.[:])/));
    for (const l of issues) expect(l).toMatch(/^(?:request body|request): \S/.test(l) ? /./ : NAMED_ISSUE);
  } else if (status === 404) {
    expect(lines.join(' ')).toMatch(/model|alias|unknown|not found/i);
  } else if (status === 401) {
    expect(lines.join(' ')).toMatch(/unauthorized/);
  } else if (status === 409) {
    expect(lines.join(' ')).toMatch(/version/);
  }
}

/** Percent-encode every byte of the UTF-8 form (encodeURIComponent throws on lone surrogates). */
const pct = (s: string): string =>
  [...Buffer.from(s, 'utf8')].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');

const GENERATION = ['/v1/chat/completions', '/v1/completions', '/api/chat', '/api/generate'] as const;
const validGeneration = {
  model: 'chat',
  messages: [{ role: 'user', content: 'hi' }],
  prompt: 'hi',
  stream: false,
  options: { temperature: 0 },
};

/** A generation body: a mutated valid one, a hostile model name, raw text, deep JSON or nothing. */
const generationBody = fc.oneof(
  { weight: 5, arbitrary: mutated(validGeneration).map((d) => toText(d, 'json')) },
  { weight: 2, arbitrary: hostileString.map((m) => JSON.stringify({ model: m, prompt: 'x' })) },
  { weight: 2, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.constant(`{"model":"chat","x":${deepText(10_000)}}`) },
  { weight: 1, arbitrary: fc.constant(`{"model":"llama3:8b","x":${deepText(10_000, 'object')}}`) },
  { weight: 1, arbitrary: fc.constant(deepText(100_000)) },
);
const contentType = fc.constantFrom('application/json', 'text/plain', 'application/x-www-form-urlencoded', undefined);

describe('generation endpoints', () => {
  test('fuzzed bodies: no 5xx, no crash, no unhandled rejection, every 4xx names what was wrong', async () => {
    await noUnhandled(() =>
      withRouter(async (router) => {
        await fc.assert(
          fc.asyncProperty(fc.constantFrom(...GENERATION), generationBody, contentType, async (p, body, type) => {
            const res = await fetch(`${router.url}${p}`, {
              method: 'POST',
              headers: type ? { 'content-type': type } : {},
              body,
            });
            const text = await res.text();
            expect({ status: res.status, text: text.slice(0, 300) }).toEqual({
              status: expect.any(Number) as number,
              text: expect.any(String) as string,
            });
            expect(res.status).toBeLessThan(500);
            if (res.status >= 400) expectNamed(res.status, JSON.parse(text));
          }),
          fuzzParams(150),
        );
        // Still serving after it all.
        const ok = await fetch(`${router.url}/v1/chat/completions`, {
          method: 'POST',
          body: JSON.stringify(validGeneration),
        });
        expect(ok.status).toBe(200);
      }),
    );
  });

  test('a body nested 10 000 levels deep is a 400 naming the rule, not a stack overflow', async () => {
    await withRouter(async (router) => {
      const res = await fetch(`${router.url}/v1/chat/completions`, {
        method: 'POST',
        body: `{"model":"chat","messages":${deepText(10_000)}}`,
      });
      expect(res.status).toBe(400);
      expect(refusal(await res.json())).toEqual(['(root): must nest at most 128 levels']);
    });
  });
});

describe('admin API', () => {
  const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
  const call = fc.oneof(
    mutated(table('http://127.0.0.1:9')).map((d) => ({
      method: 'PUT',
      path: '/admin/routes',
      body: toText(d, 'json'),
    })),
    fc
      .tuple(fc.oneof(fc.constant('chat'), hostileString), mutated({ weights: { stable: 50, canary: 50 } }))
      .map(([alias, d]) => ({
        method: 'PATCH',
        path: `/admin/routes/${pct(alias)}/weights`,
        body: toText(d, 'json'),
      })),
    fc
      .tuple(fc.constantFrom('/admin/drain', '/admin/undrain'), mutated({ engine: 'http://127.0.0.1:9' }))
      .map(([path, d]) => ({ method: 'POST', path, body: toText(d, 'json') })),
    // What the watcher sends once a node is healthy again (activities/router.ts).
    mutated({ engines: ['http://127.0.0.1:9', 'http://127.0.0.1:10'], node: 'sandbox-1' }).map((d) => ({
      method: 'POST',
      path: '/admin/auto-drain/release',
      body: toText(d, 'json'),
    })),
    fc.tuple(hostileString, hostileString).map(([a, w]) => ({
      method: 'GET',
      path: `/admin/stats?alias=${pct(a)}&window=${pct(w)}`,
      body: undefined,
    })),
    hostileValue.map((v) => ({ method: 'PUT', path: '/admin/routes', body: toText(v ?? DEEP_ARRAY, 'json') })),
  );

  test('fuzzed calls: no 5xx, no crash, no unhandled rejection, every 4xx names the field', async () => {
    await noUnhandled(() =>
      withRouter(async (router) => {
        await fc.assert(
          fc.asyncProperty(call, fc.option(fc.constantFrom('"1"', '"999"', '*', 'garbage')), async (c, ifMatch) => {
            const res = await fetch(`${router.url}${c.path}`, {
              method: c.method,
              headers: { ...auth, ...(ifMatch ? { 'if-match': ifMatch } : {}) },
              ...(c.body !== undefined ? { body: c.body } : {}),
            });
            const json: unknown = await res.json();
            expect([c.method, c.path.slice(0, 80), res.status < 500]).toEqual([c.method, c.path.slice(0, 80), true]);
            if (res.status >= 400) expectNamed(res.status, json);
          }),
          fuzzParams(150),
        );
        const check = await fetch(`${router.adminUrl}/routes`, { headers: auth });
        expect(check.status).toBe(200);
      }),
    );
  });
});

describe('limits', () => {
  test('a body just over the default limit is 413 naming the limit; one at the limit is read', async () => {
    await withRouter(async (router) => {
      const limit = ROUTER_LIMITS.bodyLimitBytes;
      const atLimit = JSON.stringify({ model: 'nope', prompt: '' });
      const pad = (n: number): string => atLimit.replace('""', `"${'a'.repeat(n - atLimit.length)}"`);
      const over = await fetch(`${router.url}/v1/completions`, { method: 'POST', body: pad(limit + 1) });
      expect(over.status).toBe(413);
      expect(refusal(await over.json())).toEqual([`request body: must be at most ${limit} bytes`]);
      const at = await fetch(`${router.url}/v1/completions`, { method: 'POST', body: pad(limit) });
      expect(at.status).toBe(404); // read and parsed: the alias does not exist
      const ollama = await fetch(`${router.url}/api/generate`, { method: 'POST', body: pad(limit + 1) });
      expect(await ollama.json()).toEqual({ error: `request body: must be at most ${limit} bytes` });
    });
  });

  test('a slow-loris client (headers byte by byte) and an unfinished body are cut off within the timeouts', async () => {
    const limits = { headersTimeoutMs: 400, requestTimeoutMs: 800 };
    await withRouter(async (router) => {
      const loris = await rawRequest(router.url, {
        head: endlessHead('/v1/completions'),
        byteGapMs: 20,
        giveUpMs: 5000,
      });
      expect(loris.closedAfterMs).toBeLessThan(400 + 100 + 500);
      expect(loris.closedAfterMs).toBeGreaterThanOrEqual(400);
      const unfinished = await rawRequest(router.url, {
        head: headWithBody('/v1/completions', 1000),
        tail: '{"model":"chat"',
        giveUpMs: 5000,
      });
      expect(unfinished.status).toBe(408);
      expect(unfinished.closedAfterMs).toBeLessThan(800 + 200 + 500);
      expect(unfinished.closedAfterMs).toBeGreaterThanOrEqual(800);
    }, limits);
  });

  test('a healthy stream that lasts longer than the request timeout is not cut', async () => {
    const slow = await startFixture(async (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      await writeChunks(res, sseTokens('m', 12), 100); // ~1.2 s
    });
    try {
      await withRouter(
        async (router) => {
          router.table.replace({
            routes: {
              chat: { variants: [{ name: 'stable', engine: slow.url, engineType: 'vllm', model: 'm', weight: 100 }] },
            },
          });
          const started = Date.now();
          const res = await fetch(`${router.url}/v1/chat/completions`, {
            method: 'POST',
            body: JSON.stringify({ model: 'chat', stream: true, messages: [] }),
          });
          const text = await res.text();
          expect(Date.now() - started).toBeGreaterThan(1000);
          expect(res.status).toBe(200);
          expect(text.match(/^data: /gm)?.length).toBe(14);
          expect(text).toContain('data: [DONE]');
        },
        { headersTimeoutMs: 200, requestTimeoutMs: 300 },
      );
    } finally {
      await slow.close();
    }
  });
});
