/**
 * Shadow mirroring: a share of an alias's requests is copied to its shadow variant, whose answers are measured and
 * dropped. The client only ever sees stable's answer, a hanging shadow never slows it, the cap drops instead of
 * queuing, and the stats pair each copy with the client's own measurement of the same request.
 */
import type { ServerResponse } from 'node:http';
import { startRouter, type RouterHandle } from '../../src/router';
import { postJson, sleep, sseTokens, startFixture, tempDir, tokenFile, writeChunks, type Fixture } from './helpers';

const fixtures: Fixture[] = [];
async function upstream(handler: (res: ServerResponse) => void | Promise<void>): Promise<Fixture> {
  const f = await startFixture((_req, res) => handler(res));
  fixtures.push(f);
  return f;
}
afterAll(async () => {
  await Promise.all(fixtures.map((f) => f.close()));
});

const streamOf = (model: string, n: number, gapMs: number) => (res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  return writeChunks(res, sseTokens(model, n), gapMs);
};

async function withShadowRouter(
  stableUrl: string,
  canaryUrl: string,
  shadow: { percent: number; maxConcurrent: number },
  fn: (r: RouterHandle) => Promise<void>,
  random: () => number = Math.random,
): Promise<void> {
  const router = await startRouter({
    port: 0,
    random,
    initialRoutes: {
      routes: {
        chat: {
          variants: [
            { name: 'stable', engine: stableUrl, engineType: 'vllm', model: 'm-stable', weight: 100 },
            { name: 'canary', engine: canaryUrl, engineType: 'vllm', model: 'm-canary', weight: 0 },
          ],
          shadow: { variant: 'canary', ...shadow },
        },
      },
    },
  });
  try {
    await fn(router);
  } finally {
    await router.close();
  }
}

const ask = (router: RouterHandle) =>
  postJson(`${router.url}/v1/chat/completions`, { model: 'chat', stream: true, messages: [{ role: 'user' }] });

/** Wait until `cond` holds (polling), or fail after `ms`. */
async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(20);
  }
}

test('mirrored requests: the client gets stable only, the canary gets a copy with its own model name, and the stats pair both sides of each request', async () => {
  const stable = await upstream(streamOf('m-stable', 6, 5));
  // Slower and longer: the pairs must show it on the canary side only.
  const canary = await upstream(streamOf('m-canary', 12, 15));
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 8 }, async (router) => {
    for (let i = 0; i < 8; i++) {
      const r = await ask(router);
      expect(r.status).toBe(200);
      expect(r.headers.get('x-gpuops-variant')).toBe('stable');
      expect(r.text).toContain('"model":"m-stable"');
      expect(r.text).not.toContain('m-canary');
    }
    await until(() => (router.stats.query('chat', 60_000).shadow?.canary?.pairs ?? 0) === 8);
    expect(canary.seen.map((s) => (JSON.parse(s.body) as { model: string }).model)).toEqual(Array(8).fill('m-canary'));
    const st = router.stats.query('chat', 60_000);
    // No client request was served by the canary: its copies are only in the shadow pairs.
    expect(Object.keys(st.variants)).toEqual(['stable']);
    const pairs = st.shadow?.canary;
    expect(pairs).toMatchObject({ pairs: 8, dropped: 0, answerTokens: { primary: 6, shadow: 12, ratio: 2 } });
    expect(pairs?.primary.requests).toBe(8);
    expect(pairs?.shadow.outcomes).toEqual({ ok: 8 });
    expect(pairs?.shadow.tokensPerSecond.mean ?? Infinity).toBeLessThan(pairs?.primary.tokensPerSecond.mean ?? 0);
    const metrics = await router.metrics.registry.metrics();
    expect(metrics).toContain('gpuops_router_shadow_requests_total{alias="chat",variant="canary",outcome="ok"} 8');
    expect(metrics).not.toMatch(/gpuops_router_requests_total\{[^}]*variant="canary"/);
  });
});

test('a shadow that hangs never delays the client, and the cap drops copies instead of queuing them', async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  let release: () => void = () => undefined;
  const hung = new Promise<void>((r) => (release = r));
  // Never answers until the test lets it go.
  const canary = await upstream(async (res) => {
    await hung;
    res.destroy();
  });
  try {
    await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 2 }, async (router) => {
      const times: number[] = [];
      for (let i = 0; i < 10; i++) {
        const t0 = performance.now();
        const r = await ask(router);
        times.push(performance.now() - t0);
        expect(r.status).toBe(200);
        expect(r.headers.get('x-gpuops-variant')).toBe('stable');
      }
      // Stable answers in a few ms; a client held by the hanging copy would wait for the headers timeout (300 s).
      expect(Math.max(...times)).toBeLessThan(1_000);
      await until(() => canary.seen.length === 2);
      await sleep(100);
      expect(canary.seen).toHaveLength(2);
      const st = router.stats.query('chat', 60_000);
      expect(st.shadow?.canary).toMatchObject({ pairs: 0, dropped: 8 });
      expect(await router.metrics.registry.metrics()).toContain(
        'gpuops_router_shadow_requests_total{alias="chat",variant="canary",outcome="dropped"} 8',
      );
    });
  } finally {
    release();
  }
});

test("a failing shadow's errors are recorded in its pairs; the client gets stable's answer every time", async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const canary = await upstream((res) => {
    res.writeHead(500, { 'content-type': 'application/json' });
    res.end('{"error":"boom"}');
  });
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    for (let i = 0; i < 5; i++) expect((await ask(router)).status).toBe(200);
    await until(() => (router.stats.query('chat', 60_000).shadow?.canary?.pairs ?? 0) === 5);
    const pairs = router.stats.query('chat', 60_000).shadow?.canary;
    expect(pairs?.shadow).toMatchObject({ requests: 5, errors: 5, errorRate: 1, outcomes: { upstream_5xx: 5 } });
    expect(pairs?.primary).toMatchObject({ requests: 5, errors: 0 });
  });
});

test('percent picks the mirrored share from the router random source', async () => {
  const stable = await upstream(streamOf('m-stable', 2, 1));
  const canary = await upstream(streamOf('m-canary', 2, 1));
  // 0.7 × 100 ≥ 50: never mirrored; 0.3 × 100 < 50: always.
  for (const [u, copies] of [
    [0.7, 0],
    [0.3, 4],
  ] as const) {
    const before = canary.seen.length;
    const random = () => u;
    await withShadowRouter(
      stable.url,
      canary.url,
      { percent: 50, maxConcurrent: 4 },
      async (router) => {
        for (let i = 0; i < 4; i++) await ask(router);
        await until(() => canary.seen.length - before === copies);
        await sleep(100);
        expect(canary.seen.length - before).toBe(copies);
        expect(router.stats.query('chat', 60_000).shadow?.canary?.pairs ?? 0).toBe(copies);
      },
      random,
    );
  }
});

test('the admin API refuses a shadow naming no variant of the alias, naming the field', async () => {
  const { dir, cleanup } = tempDir();
  const token = 's3cret-token';
  const router = await startRouter({ port: 0, adminTokenFile: tokenFile(dir, token) });
  try {
    const res = await fetch(`${router.adminUrl}/routes`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        routes: {
          chat: {
            variants: [{ name: 'stable', engine: 'http://127.0.0.1:9', engineType: 'vllm', model: 'm', weight: 100 }],
            shadow: { variant: 'canary', percent: 150, maxConcurrent: 4 },
          },
        },
      }),
    });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { problems: string[] };
    expect(body.problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^routes\.chat\.shadow\.percent: /),
        'routes.chat.shadow.variant: must name a variant of the alias',
      ]),
    );
  } finally {
    await router.close();
    cleanup();
  }
});
