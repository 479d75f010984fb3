/**
 * Which variant a request goes to: the weighted split, sticky sessions, drained engines, aliases in model listings.
 */
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { startRouter, type RouterHandle } from '../../src/router';
import { writeTestSecret } from '../helpers/secrets';
import { canaryRoute, postJson, seeded, startFixture, tempDir, type Fixture } from './helpers';

let stable: Fixture;
let canary: Fixture;

const answer = (name: string) => (_req: unknown, res: ServerResponse) => {
  const body = JSON.stringify({ object: 'chat.completion', model: name, usage: { completion_tokens: 1 } });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
};

beforeAll(async () => {
  stable = await startFixture(answer('stable'));
  canary = await startFixture(answer('canary'));
});

afterAll(async () => {
  await stable.close();
  await canary.close();
});

async function withRouter(
  weights: [number, number],
  fn: (r: RouterHandle) => Promise<void>,
  opts: { sticky?: string; seed?: number } = {},
): Promise<void> {
  const router = await startRouter({
    port: 0,
    random: seeded(opts.seed ?? 42),
    initialRoutes: {
      routes: {
        chat: canaryRoute(
          { engine: stable.url, model: 'm-stable', weight: weights[0], engineType: 'ollama' },
          { engine: canary.url, model: 'm-canary', weight: weights[1] },
          opts.sticky,
        ),
      },
    },
  });
  try {
    await fn(router);
  } finally {
    await router.close();
  }
}

async function variantsOf(router: RouterHandle, n: number, headers: Record<string, string> = {}): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await postJson(`${router.url}/v1/chat/completions`, { model: 'chat', messages: [] }, headers);
    expect(r.status).toBe(200);
    out.push(r.headers.get('x-gpuops-variant') ?? '?');
  }
  return out;
}

const count = (xs: string[], x: string): number => xs.filter((v) => v === x).length;

test('splits traffic by weight: 90/10 over 400 requests is within 3 standard deviations', async () => {
  await withRouter([90, 10], async (router) => {
    const before = canary.seen.length;
    const got = await variantsOf(router, 400);
    // Binomial(400, 0.1): mean 40, sd = 6.
    expect(Math.abs(count(got, 'canary') - 40)).toBeLessThanOrEqual(18);
    expect(count(got, 'canary') + count(got, 'stable')).toBe(400);
    // The canary engine saw exactly the requests the router said it sent there, with its model name.
    expect(canary.seen.length - before).toBe(count(got, 'canary'));
    expect(JSON.parse(canary.seen[canary.seen.length - 1]!.body)).toMatchObject({ model: 'm-canary' });
  });
});

test('a weight of 0 gets no traffic', async () => {
  await withRouter([100, 0], async (router) => {
    expect(count(await variantsOf(router, 100), 'canary')).toBe(0);
  });
});

test('a sticky session header pins a session to one variant; different sessions still split', async () => {
  await withRouter(
    [50, 50],
    async (router) => {
      for (const session of ['alice', 'bob', 'carol', 'dave']) {
        const got = await variantsOf(router, 20, { 'x-session-id': session });
        expect(new Set(got).size).toBe(1);
      }
      const spread = new Set<string>();
      for (let i = 0; i < 40; i++) spread.add((await variantsOf(router, 1, { 'x-session-id': `s${i}` }))[0]!);
      expect(spread).toEqual(new Set(['stable', 'canary']));
    },
    { sticky: 'X-Session-Id' },
  );
});

test('a drained engine gets no traffic until undrained; all drained answers 503', async () => {
  await withRouter([50, 50], async (router) => {
    router.table.setDrained({ engine: canary.url }, true);
    expect(count(await variantsOf(router, 60), 'canary')).toBe(0);
    router.table.setDrained({ engine: canary.url }, false);
    expect(count(await variantsOf(router, 60), 'canary')).toBeGreaterThan(10);
    router.table.setDrained({ engine: stable.url }, true);
    router.table.setDrained({ engine: canary.url }, true);
    const r = await postJson(`${router.url}/v1/chat/completions`, { model: 'chat', messages: [] });
    expect(r.status).toBe(503);
    expect(JSON.parse(r.text).error.message).toMatch(/no available variant/);
  });
});

test('Ollama-native requests go only to Ollama variants', async () => {
  await withRouter([10, 90], async (router) => {
    for (let i = 0; i < 20; i++) {
      const r = await postJson(`${router.url}/api/generate`, { model: 'chat', prompt: 'hi', stream: false });
      expect(r.headers.get('x-gpuops-variant')).toBe('stable');
    }
  });
});

test('unknown aliases and bad bodies get errors in the client API’s own shape', async () => {
  await withRouter([50, 50], async (router) => {
    const oa = await postJson(`${router.url}/v1/chat/completions`, { model: 'nope', messages: [] });
    expect(oa.status).toBe(404);
    expect(JSON.parse(oa.text)).toMatchObject({ error: { message: 'The model `nope` does not exist.' } });
    const ol = await postJson(`${router.url}/api/chat`, { model: 'nope', messages: [] });
    expect(ol.status).toBe(404);
    expect(JSON.parse(ol.text)).toEqual({ error: 'model "nope" not found' });
    const bad = await postJson(`${router.url}/api/chat`, { messages: [] });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.text).error).toMatch(/^model: /);
  });
});

test('model listings show aliases, not engine model names', async () => {
  await withRouter([50, 50], async (router) => {
    const v1 = (await (await fetch(`${router.url}/v1/models`)).json()) as { data: { id: string }[] };
    expect(v1.data.map((m) => m.id)).toEqual(['chat']);
    const tags = (await (await fetch(`${router.url}/api/tags`)).json()) as { models: { name: string }[] };
    expect(tags.models.map((m) => m.name)).toEqual(['chat']);
  });
});

test('a variant with an apiKeyFile sends the engine its key as a bearer token; clients’ headers are not forwarded', async () => {
  const t = tempDir();
  const keyFile = path.join(t.dir, 'engine.key');
  const key = writeTestSecret(keyFile, 'engine-api-key');
  const router = await startRouter({
    port: 0,
    initialRoutes: {
      routes: {
        chat: {
          variants: [
            { name: 'stable', engine: stable.url, engineType: 'vllm', model: 'm', weight: 1, apiKeyFile: keyFile },
          ],
        },
      },
    },
  });
  try {
    const r = await postJson(
      `${router.url}/v1/chat/completions`,
      { model: 'chat' },
      { authorization: 'Bearer client-token' },
    );
    expect(r.status).toBe(200);
    expect(stable.seen[stable.seen.length - 1]!.headers.authorization).toBe(`Bearer ${key}`);
  } finally {
    await router.close();
    t.cleanup();
  }
});

test('a streamed request to a llama.cpp engine goes on a connection of its own (connection: close); others are pooled', async () => {
  // llama-server closes its connection after each streamed answer without a `connection: close` of its own, so the
  // router must not put that socket back in its pool. Ollama and vLLM keep theirs open.
  const router = await startRouter({
    port: 0,
    initialRoutes: {
      routes: {
        llama: { variants: [{ name: 'stable', engine: stable.url, engineType: 'llamacpp', model: 'm', weight: 1 }] },
        vllm: { variants: [{ name: 'stable', engine: stable.url, engineType: 'vllm', model: 'm', weight: 1 }] },
      },
    },
  });
  try {
    const connectionOf = async (model: string, stream: boolean): Promise<string | undefined> => {
      const r = await postJson(`${router.url}/v1/chat/completions`, { model, stream });
      expect(r.status).toBe(200);
      return stable.seen[stable.seen.length - 1]!.headers.connection;
    };
    expect(await connectionOf('llama', true)).toBe('close');
    expect(await connectionOf('llama', false)).not.toBe('close');
    expect(await connectionOf('vllm', true)).not.toBe('close');
    expect(await connectionOf('vllm', false)).not.toBe('close');
  } finally {
    await router.close();
  }
});
