/**
 * Shadow mirroring: a share of an alias's requests is copied to its shadow variant, whose answers are measured and
 * dropped. The client only ever sees stable's answer, a hanging shadow never slows it, the cap drops instead of
 * queuing, and the stats pair each copy with the client's own measurement of the same request.
 */
import { ServerResponse } from 'node:http';
import { Agent } from 'undici';
import { startRouter, type RouterHandle, type RouterOptions } from '../../src/router';
import { RouterMetrics } from '../../src/router/metrics';
import { RouteStore } from '../../src/router/routes';
import { ShadowMirror } from '../../src/router/shadow';
import { StatsStore, type Sample } from '../../src/router/stats';
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
afterEach(() => {
  jest.restoreAllMocks();
});

const streamOf = (model: string, n: number, gapMs: number) => (res: ServerResponse) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  return writeChunks(res, sseTokens(model, n), gapMs);
};

type ChatRoute = NonNullable<RouterOptions['initialRoutes']>['routes'][string];

/** A stable/canary route on two engines, mirroring to the canary. */
const shadowRoute = (
  stableUrl: string,
  canaryUrl: string,
  shadow: { percent: number; maxConcurrent: number },
): ChatRoute => ({
  variants: [
    { name: 'stable', engine: stableUrl, engineType: 'vllm', model: 'm-stable', weight: 100 },
    { name: 'canary', engine: canaryUrl, engineType: 'vllm', model: 'm-canary', weight: 0 },
  ],
  shadow: { variant: 'canary', ...shadow },
});

/** Stable and a hand-added `previous` at the weights given, mirroring to a canary at weight 0. */
const withPrevious = (
  [stableUrl, stableWeight]: [string, number],
  [previousUrl, previousWeight]: [string, number],
  canaryUrl: string,
): ChatRoute => ({
  variants: [
    { name: 'stable', engine: stableUrl, engineType: 'vllm', model: 'm-stable', weight: stableWeight },
    { name: 'previous', engine: previousUrl, engineType: 'vllm', model: 'm-previous', weight: previousWeight },
    { name: 'canary', engine: canaryUrl, engineType: 'vllm', model: 'm-canary', weight: 0 },
  ],
  shadow: { variant: 'canary', percent: 100, maxConcurrent: 4 },
});

async function withRouter(
  chat: ChatRoute,
  fn: (r: RouterHandle) => Promise<void>,
  opts: RouterOptions = {},
): Promise<void> {
  const router = await startRouter({ port: 0, ...opts, initialRoutes: { routes: { chat } } });
  try {
    await fn(router);
  } finally {
    await router.close();
  }
}

async function withShadowRouter(
  stableUrl: string,
  canaryUrl: string,
  shadow: { percent: number; maxConcurrent: number },
  fn: (r: RouterHandle) => Promise<void>,
  random: () => number = Math.random,
): Promise<void> {
  await withRouter(shadowRoute(stableUrl, canaryUrl, shadow), fn, { random });
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

/** A canary engine that takes each copy and never answers it (until the fixtures close). */
async function hangingEngine(): Promise<Fixture> {
  return upstream(() => new Promise<void>(() => undefined));
}

/** Start a streamed request and read its first chunk; aborting the controller makes the client go away. */
async function firstChunk(router: RouterHandle): Promise<AbortController> {
  const ac = new AbortController();
  const res = await fetch(`${router.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'chat', stream: true, messages: [{ role: 'user' }] }),
    signal: ac.signal,
  });
  await res.body!.getReader().read();
  return ac;
}

const shadowStats = (router: RouterHandle) => router.stats.query('chat', 60_000).shadow?.canary;

test("the copy is sent only once the client's answer has started, never before", async () => {
  let stableFirstByte = 0;
  const stable = await upstream(async (res) => {
    // The engine takes a while to its first token: a copy sent with the request would compete with it.
    await sleep(300);
    stableFirstByte = Date.now();
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    await writeChunks(res, sseTokens('m-stable', 3), 5);
  });
  let copyArrived = 0;
  const canary = await upstream((res) => {
    copyArrived = Date.now();
    return streamOf('m-canary', 3, 5)(res);
  });
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    expect((await ask(router)).status).toBe(200);
    await until(() => (shadowStats(router)?.pairs ?? 0) === 1);
    expect(stableFirstByte).toBeGreaterThan(0);
    expect(copyArrived).toBeGreaterThanOrEqual(stableFirstByte);
  });
});

test('a shadow variant on the engine that serves the client gets one copy at a time; the rest are skipped as shared_engine', async () => {
  // One engine, both models (an Ollama with stable and canary loaded): the canary's copies hang.
  const shared = await startFixture((req, res) => {
    if ((JSON.parse(req.body) as { model: string }).model === 'm-canary') return new Promise<void>(() => undefined);
    return streamOf('m-stable', 3, 1)(res);
  });
  fixtures.push(shared);
  await withShadowRouter(shared.url, shared.url, { percent: 100, maxConcurrent: 8 }, async (router) => {
    for (let i = 0; i < 4; i++) expect((await ask(router)).status).toBe(200);
    await until(() => shared.seen.length >= 5);
    await sleep(100);
    const copies = shared.seen.filter((s) => s.body.includes('m-canary'));
    expect(copies).toHaveLength(1);
    expect(shadowStats(router)).toMatchObject({ pairs: 0, dropped: 0, skipped: { shared_engine: 3 } });
    expect(await router.metrics.registry.metrics()).toContain(
      'gpuops_router_shadow_skipped_total{alias="chat",variant="canary",reason="shared_engine"} 3',
    );
  });
});

test('copies in flight are cut when the route stops mirroring, when their engine is drained and when the router closes', async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const canary = await hangingEngine();
  const route = shadowRoute(stable.url, canary.url, { percent: 100, maxConcurrent: 8 });
  let seen = 0;
  /** Send `n` client requests and wait until their copies reached the hanging canary. */
  const mirrorN = async (router: RouterHandle, n: number): Promise<void> => {
    for (let i = 0; i < n; i++) expect((await ask(router)).status).toBe(200);
    seen += n;
    await until(() => canary.seen.length === seen);
  };
  const cutBy = (router: RouterHandle) => shadowStats(router)?.aborted ?? {};
  await withRouter(route, async (router) => {
    await mirrorN(router, 2);
    const { shadow: _, ...withoutShadow } = route;
    router.table.replace({ routes: { chat: withoutShadow } });
    await until(() => canary.aborted === 2);
    expect(cutBy(router)).toEqual({ shadow_removed: 2 });

    router.table.replace({ routes: { chat: route } });
    await mirrorN(router, 1);
    router.table.setDrained({ engine: canary.url }, true);
    await until(() => canary.aborted === 3);
    expect(cutBy(router)).toEqual({ shadow_removed: 2, drained: 1 });
    // Drained: picked requests are skipped, and say so.
    expect((await ask(router)).status).toBe(200);
    expect(shadowStats(router)?.skipped).toEqual({ drained: 1 });
    router.table.setDrained({ engine: canary.url }, false);

    await mirrorN(router, 1);
    const metrics = await router.metrics.registry.metrics();
    expect(metrics).toContain('gpuops_router_shadow_aborted_total{alias="chat",variant="canary",reason="drained"} 1');
    expect(metrics).toContain('gpuops_router_shadow_skipped_total{alias="chat",variant="canary",reason="drained"} 1');
    // The last copy is still hanging: closing the router cuts it (the stats outlive close()).
    await router.close();
    await until(() => canary.aborted === 4);
    expect(cutBy(router)).toEqual({ shadow_removed: 2, drained: 1, closed: 1 });
    expect(shadowStats(router)?.pairs).toBe(0);
  });
});

test("a canary that never answers is judged: its copy cut at the deadline is the canary's timeout in the pair, not an abort", async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const canary = await hangingEngine();
  await withRouter(
    shadowRoute(stable.url, canary.url, { percent: 100, maxConcurrent: 8 }),
    async (router) => {
      for (let i = 0; i < 2; i++) expect((await ask(router)).status).toBe(200);
      await until(() => canary.aborted === 2);
      await until(() => (shadowStats(router)?.pairs ?? 0) === 2);
      const st = shadowStats(router);
      expect(st?.aborted).toEqual({});
      expect(st?.shadow).toMatchObject({ requests: 2, errors: 2, errorRate: 1, outcomes: { timeout: 2 } });
      expect(st?.primary).toMatchObject({ requests: 2, errors: 0, outcomes: { ok: 2 } });
      expect(await router.metrics.registry.metrics()).toContain(
        'gpuops_router_shadow_requests_total{alias="chat",variant="canary",outcome="timeout"} 2',
      );
    },
    { shadowDeadlineMs: 200 },
  );
});

test('a request whose client went away is never judged: its copy is cut and counted as aborted (client_abort), not paired', async () => {
  const stable = await upstream(streamOf('m-stable', 40, 50));
  const canary = await upstream(streamOf('m-canary', 40, 50));
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    const ac = await firstChunk(router);
    await until(() => canary.seen.length === 1);
    ac.abort();
    await until(() => canary.aborted === 1);
    expect(shadowStats(router)).toMatchObject({ pairs: 0, aborted: { client_abort: 1 } });
    expect(router.stats.query('chat', 60_000).variants.stable?.outcomes).toEqual({ client_abort: 1 });
  });
});

test("a request that failed over is not mirrored (its answer is another variant's): skipped as failover", async () => {
  const dead = await upstream(() => undefined);
  const deadUrl = dead.url;
  await dead.close();
  fixtures.splice(fixtures.indexOf(dead), 1);
  const previous = await upstream(streamOf('m-previous', 3, 1));
  const canary = await upstream(streamOf('m-canary', 3, 1));
  const chat = withPrevious([deadUrl, 99], [previous.url, 1], canary.url);
  await withRouter(
    chat,
    async (router) => {
      const r = await ask(router);
      expect(r.status).toBe(200);
      expect(r.headers.get('x-gpuops-failover')).toBe('stable');
      await sleep(100);
      expect(canary.seen).toHaveLength(0);
      expect(shadowStats(router)).toMatchObject({ pairs: 0, skipped: { failover: 1 } });
    },
    { random: () => 0.1 },
  );
});

test("the copy is forked only after the client's first byte was written", async () => {
  const stable = await upstream(async (res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    await writeChunks(res, sseTokens('m-stable', 3), 100);
  });
  const canary = await upstream(streamOf('m-canary', 3, 1));
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    const port = Number(new URL(router.url).port);
    const order: string[] = [];
    const write = ServerResponse.prototype.write;
    jest.spyOn(ServerResponse.prototype, 'write').mockImplementation(function (this: ServerResponse, ...args) {
      if (this.socket?.localPort === port) order.push('write');
      return (write as (...a: unknown[]) => boolean).apply(this, args);
    });
    const fork = ShadowMirror.prototype.fork;
    jest.spyOn(ShadowMirror.prototype, 'fork').mockImplementation(function (this: ShadowMirror, r) {
      order.push('fork');
      return fork.call(this, r);
    });
    expect((await ask(router)).status).toBe(200);
    await until(() => (shadowStats(router)?.pairs ?? 0) === 1);
    expect(order.slice(0, 2)).toEqual(['write', 'fork']);
  });
});

test('fork() counts the copy at once but serialises and sends it only from a later turn of the event loop', async () => {
  const canary = await upstream(streamOf('m-canary', 2, 1));
  const store = new RouteStore(undefined);
  store.replace({
    routes: { chat: shadowRoute('http://127.0.0.1:9', canary.url, { percent: 100, maxConcurrent: 4 }) },
  });
  const stats = new StatsStore();
  const dispatcher = new Agent();
  const deps = { store, stats, metrics: new RouterMetrics(), dispatcher, random: () => 0 };
  const mirror = new ShadowMirror({ ...deps, headersTimeoutMs: 5_000, bodyTimeoutMs: 5_000 }, { deadlineMs: 5_000 });
  try {
    let serialised = false;
    const body = {
      messages: [],
      toJSON: () => {
        serialised = true;
        return { model: 'm-canary', stream: true, messages: [] };
      },
    };
    const [stable, canaryVariant] = store.current.routes.chat!.variants;
    const r = {
      alias: 'chat',
      api: 'openai-chat',
      body,
      streaming: true,
      accept: '*/*',
      chosen: stable!,
      served: stable!,
    };
    const h = mirror.fork(r as Parameters<ShadowMirror['fork']>[0]);
    expect(h).toBeDefined();
    expect(mirror.inFlight('chat')).toBe(1);
    expect(serialised).toBe(false);
    await until(() => serialised);
    expect(canaryVariant?.name).toBe('canary');
    h?.primary({ at: Date.now(), outcome: 'ok', status: 200, durationMs: 1 } satisfies Sample);
    await until(() => (stats.query('chat', 60_000).shadow?.canary?.pairs ?? 0) === 1);
    expect(mirror.inFlight('chat')).toBe(0);
  } finally {
    mirror.close();
    await dispatcher.close();
  }
});

test('the shared-engine cap holds for a shadow engine that serves other clients, whichever engine served this one', async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  // The canary's engine also serves another alias: the copies hang there.
  const busy = await startFixture((req, res) => {
    if ((JSON.parse(req.body) as { model: string }).model === 'm-canary') return new Promise<void>(() => undefined);
    return streamOf('m-other', 3, 1)(res);
  });
  fixtures.push(busy);
  const chat = shadowRoute(stable.url, busy.url, { percent: 100, maxConcurrent: 8 });
  const other: ChatRoute = {
    variants: [{ name: 'stable', engine: busy.url, engineType: 'vllm', model: 'm-other', weight: 1 }],
  };
  const router = await startRouter({ port: 0, initialRoutes: { routes: { chat, other } } });
  try {
    for (let i = 0; i < 4; i++) expect((await ask(router)).status).toBe(200);
    await until(() => busy.seen.length >= 1);
    await sleep(100);
    expect(busy.seen.filter((s) => s.body.includes('m-canary'))).toHaveLength(1);
    expect(shadowStats(router)).toMatchObject({ pairs: 0, dropped: 0, skipped: { shared_engine: 3 } });
    // Once the other alias no longer sends it clients, the engine is the shadow's own: the route's cap applies.
    router.table.replace({ routes: { chat, other: { variants: [{ ...other.variants[0]!, engine: stable.url }] } } });
    for (let i = 0; i < 3; i++) expect((await ask(router)).status).toBe(200);
    await until(() => busy.seen.filter((s) => s.body.includes('m-canary')).length === 4);
  } finally {
    await router.close();
  }
});

test("a mirror that throws never breaks the client's stream; the error is logged", async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const canary = await upstream(streamOf('m-canary', 3, 1));
  const logs: string[] = [];
  jest.spyOn(ShadowMirror.prototype, 'fork').mockImplementation(() => {
    throw new Error('bookkeeping bug');
  });
  await withRouter(
    shadowRoute(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }),
    async (router) => {
      const r = await ask(router);
      expect(r.status).toBe(200);
      expect(r.text).toContain('data: [DONE]');
      expect(logs).toContainEqual(expect.stringContaining('bookkeeping bug'));
    },
    { log: (l) => logs.push(l) },
  );
});

test('a pairing that throws is logged; the request is still counted done (in-flight gauge back to 0)', async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const canary = await upstream(streamOf('m-canary', 3, 1));
  const logs: string[] = [];
  jest.spyOn(ShadowMirror.prototype, 'fork').mockImplementation(() => ({
    primary: () => {
      throw new Error('pairing bug');
    },
  }));
  await withRouter(
    shadowRoute(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }),
    async (router) => {
      expect((await ask(router)).status).toBe(200);
      await until(() => logs.some((l) => l.includes('pairing bug')));
      expect(await router.metrics.registry.metrics()).toContain('gpuops_router_inflight_requests{alias="chat"} 0');
    },
    { log: (l) => logs.push(l) },
  );
});

test('a stable that fails before its first byte is paired too: an empty 5xx, and an engine that refuses the connection', async () => {
  const stable = await upstream((res) => {
    res.writeHead(500);
    res.end();
  });
  const canary = await upstream(streamOf('m-canary', 3, 1));
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    expect((await ask(router)).status).toBe(500);
    await until(() => (shadowStats(router)?.pairs ?? 0) === 1);
    expect(shadowStats(router)?.primary.outcomes).toEqual({ upstream_5xx: 1 });
    expect(shadowStats(router)?.shadow.outcomes).toEqual({ ok: 1 });
  });
  const dead = await upstream(() => undefined);
  const deadUrl = dead.url;
  await dead.close();
  fixtures.splice(fixtures.indexOf(dead), 1);
  await withShadowRouter(deadUrl, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    expect((await ask(router)).status).toBe(502);
    await until(() => (shadowStats(router)?.pairs ?? 0) === 1);
    expect(shadowStats(router)?.primary.outcomes).toEqual({ connect: 1 });
    expect(shadowStats(router)?.shadow.outcomes).toEqual({ ok: 1 });
  });
});

test('a copy that finished before its client went away is counted once: aborted (client_abort), not also by outcome', async () => {
  const stable = await upstream(streamOf('m-stable', 40, 50));
  const canary = await upstream(streamOf('m-canary', 2, 1));
  await withShadowRouter(stable.url, canary.url, { percent: 100, maxConcurrent: 4 }, async (router) => {
    const ac = await firstChunk(router);
    await until(() => canary.seen.length === 1);
    await sleep(150); // the copy's short answer is read to its end
    ac.abort();
    await until(() => Object.keys(shadowStats(router)?.aborted ?? {}).length > 0);
    expect(shadowStats(router)).toMatchObject({ pairs: 0, aborted: { client_abort: 1 } });
    const metrics = await router.metrics.registry.metrics();
    expect(metrics).toContain(
      'gpuops_router_shadow_aborted_total{alias="chat",variant="canary",reason="client_abort"} 1',
    );
    expect(metrics).not.toMatch(/gpuops_router_shadow_requests_total\{alias="chat",variant="canary",outcome="ok"\}/);
  });
});

test("only requests the weighted choice gave to stable are mirrored: a hand-added variant's never enter the pairs", async () => {
  const stable = await upstream(streamOf('m-stable', 3, 1));
  const previous = await upstream(streamOf('m-previous', 3, 1));
  const canary = await upstream(streamOf('m-canary', 3, 1));
  const chat = withPrevious([stable.url, 50], [previous.url, 50], canary.url);
  // 0.7 picks previous (70 on the 50 + 50 weight line).
  await withRouter(
    chat,
    async (router) => {
      for (let i = 0; i < 3; i++) expect((await ask(router)).headers.get('x-gpuops-variant')).toBe('previous');
      await sleep(100);
      expect(canary.seen).toHaveLength(0);
      expect(shadowStats(router)).toBeUndefined();
    },
    { random: () => 0.7 },
  );
  // 0.3 picks stable: mirrored.
  await withRouter(
    chat,
    async (router) => {
      expect((await ask(router)).headers.get('x-gpuops-variant')).toBe('stable');
      await until(() => (shadowStats(router)?.pairs ?? 0) === 1);
    },
    { random: () => 0.3 },
  );
});
