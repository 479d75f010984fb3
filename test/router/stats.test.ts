/**
 * What the router measures: errors of every kind, TTFT, duration and tokens/s on a controlled upstream, the
 * windowed stats a canary analysis reads, and the Prometheus exposition.
 */
import type { ServerResponse } from 'node:http';
import { SandboxNode } from '../../src/sandbox/node';
import { startRouter, StatsStore, type RouterHandle } from '../../src/router';
import { nodeConfig } from '../sandbox/helpers';
import { canaryRoute, postJson, sleep, sseTokens, startFixture, tempDir, tokenFile, writeChunks } from './helpers';

jest.setTimeout(30_000);

function route(engine: string, model = 'm', engineType: 'ollama' | 'vllm' = 'vllm') {
  return { variants: [{ name: 'stable', engine, engineType, model, weight: 100 }] };
}

describe('errors', () => {
  test('the sandbox "bad" canary’s 20% upstream 5xx are counted against the canary, not stable', async () => {
    const t = tempDir();
    const node = await nodeConfig('router-stats', [{ type: 'ollama', name: 'ollama' }]);
    const sn = new SandboxNode({ node, stateDir: t.dir, bootSeconds: 0.1, timeScale: 0.02 });
    await sn.start();
    await sn.waitFor((s) => s.engines.every((e) => e.listening), 10_000, 'engine to listen');
    sn.store.update((s) => {
      s.engines.ollama!.models.push('qwen2.5:0.5b-bad');
    });
    const engine = sn.engineUrl('ollama');
    const router = await startRouter({
      port: 0,
      initialRoutes: {
        routes: {
          chat: canaryRoute(
            { engine, model: 'qwen2.5:0.5b', weight: 50, engineType: 'ollama' },
            { engine: `${engine}/`, model: 'qwen2.5:0.5b-bad', weight: 50, engineType: 'ollama' },
          ),
        },
      },
    });
    try {
      const statuses: Record<string, number[]> = { stable: [], canary: [] };
      for (let i = 0; i < 60; i++) {
        const r = await postJson(`${router.url}/api/generate`, {
          model: 'chat',
          prompt: 'hello there',
          stream: i % 2 === 0,
        });
        statuses[r.headers.get('x-gpuops-variant')!]!.push(r.status);
      }
      const s = router.stats.query('chat', 60_000).variants;
      const canaryN = statuses.canary!.length;
      // The sandbox fails exactly every 5th generation of the bad model.
      expect(s.canary).toMatchObject({ requests: canaryN, errors: Math.floor(canaryN / 5) });
      expect(statuses.canary!.filter((x) => x === 500)).toHaveLength(Math.floor(canaryN / 5));
      expect(s.canary!.errorRate).toBeCloseTo(Math.floor(canaryN / 5) / canaryN, 5);
      expect(s.stable).toMatchObject({ requests: statuses.stable!.length, errors: 0, errorRate: 0 });
      expect(s.stable!.outputTokens).toBeGreaterThan(0);
      const metrics = await (await fetch(`${router.url}/metrics`)).text();
      expect(metrics).toContain(
        `gpuops_router_errors_total{alias="chat",variant="canary",kind="upstream_5xx"} ${Math.floor(canaryN / 5)}`,
      );
    } finally {
      await router.close();
      await sn.stop();
      t.cleanup();
    }
  });

  test('timeouts, refused connections and broken streams are errors; 4xx are not', async () => {
    const fx = await startFixture(async (req, res) => {
      const { model } = JSON.parse(req.body) as { model: string };
      if (model === 'hang') return; // never answers
      if (model === 'bad-request') {
        res.writeHead(400, { 'content-type': 'application/json' });
        return void res.end('{"error":{"message":"bad"}}');
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(sseTokens(model, 3)[0]!);
      await sleep(20);
      res.destroy(); // dies mid-stream
    });
    const router = await startRouter({
      port: 0,
      headersTimeoutMs: 300,
      initialRoutes: {
        routes: {
          hang: route(fx.url, 'hang'),
          bad: route(fx.url, 'bad-request'),
          broken: route(fx.url, 'broken'),
          refused: route('http://127.0.0.1:9', 'm'),
        },
      },
    });
    try {
      const call = (model: string) =>
        postJson(`${router.url}/v1/chat/completions`, { model, stream: true, messages: [] });
      expect((await call('hang')).status).toBe(504);
      expect((await call('bad')).status).toBe(400);
      expect((await call('refused')).status).toBe(502);
      await expect(call('broken')).rejects.toThrow(); // the client sees the break, not a clean end
      await sleep(50);
      const outcomes = (alias: string) => router.stats.query(alias, 60_000).variants.stable;
      expect(outcomes('hang')).toMatchObject({ errors: 1, outcomes: { timeout: 1 } });
      expect(outcomes('bad')).toMatchObject({ errors: 0, errorRate: 0, outcomes: { client_error: 1 } });
      expect(outcomes('refused')).toMatchObject({ errors: 1, outcomes: { connect: 1 } });
      expect(outcomes('broken')).toMatchObject({ errors: 1, outcomes: { broken_stream: 1 } });
    } finally {
      await router.close();
      await fx.close();
    }
  });
});

describe('measurements', () => {
  let router: RouterHandle;
  const TTFT = 150;
  const GAP = 20;
  const TOKENS = 11;
  const dir = tempDir();

  beforeAll(async () => {
    // Stable: first token after TTFT ms, then a token every GAP ms (50 tokens/s); canary twice as slow to start.
    const fx = await startFixture(async (req, res: ServerResponse) => {
      const { model } = JSON.parse(req.body) as { model: string };
      await sleep(model === 'slow' ? TTFT * 2 : TTFT);
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const chunks = sseTokens(model, TOKENS);
      // Tokens GAP apart; usage and [DONE] right after the last token.
      await writeChunks(res, [...chunks.slice(0, TOKENS - 1), chunks.slice(TOKENS - 1).join('')], GAP);
    });
    router = await startRouter({
      port: 0,
      adminTokenFile: tokenFile(dir.dir),
      random: (() => {
        let i = 0;
        return () => (i++ % 2 === 0 ? 0.25 : 0.75); // strictly alternate stable, canary
      })(),
      initialRoutes: {
        routes: {
          chat: canaryRoute(
            { engine: fx.url, model: 'fast', weight: 50 },
            { engine: fx.url, model: 'slow', weight: 50 },
          ),
        },
      },
    });
    await Promise.all(
      Array.from({ length: 10 }, () =>
        postJson(`${router.url}/v1/chat/completions`, { model: 'chat', stream: true, messages: [] }),
      ),
    );
    afterAllClose = async () => {
      await router.close();
      await fx.close();
      dir.cleanup();
    };
  });
  let afterAllClose: () => Promise<void>;
  afterAll(() => afterAllClose());

  test('windowed stats report TTFT, duration and tokens/s per variant on a controlled upstream', () => {
    const { variants } = router.stats.query('chat', 60_000);
    const stable = variants.stable!;
    const canary = variants.canary!;
    expect(stable.requests).toBe(5);
    expect(canary.requests).toBe(5);
    expect(stable.outputTokens).toBe(5 * TOKENS);
    // Loopback and a loaded CI box add a little; the engine's own delays set the floor.
    expect(stable.ttftMs.p50!).toBeGreaterThanOrEqual(TTFT - 2);
    // TTFT is the first byte, not the end: each answer streams (TOKENS - 1) gaps after it, and timers only run
    // late, so the medians differ by at least that however loaded the machine is (an absolute ceiling was not).
    expect(stable.durationMs.p50! - stable.ttftMs.p50!).toBeGreaterThanOrEqual((TOKENS - 1) * GAP - 5);
    expect(canary.ttftMs.p95!).toBeGreaterThanOrEqual(2 * TTFT - 2);
    expect(canary.ttftMs.p95! / stable.ttftMs.p95!).toBeGreaterThan(1.5);
    expect(stable.durationMs.p95!).toBeGreaterThanOrEqual(TTFT + (TOKENS - 1) * GAP - 5);
    // 10 tokens after the first, 20 ms apart: 50 tokens/s (timers only ever run late, so at most that).
    expect(stable.tokensPerSecond.mean!).toBeGreaterThan(30);
    expect(stable.tokensPerSecond.mean!).toBeLessThanOrEqual(53);
  });

  test('the stats endpoint serves the same numbers, and samples outside the window are left out', async () => {
    const auth = { authorization: 'Bearer s3cret-token' };
    const res = await fetch(`${router.adminUrl}/stats?alias=chat&window=5m`, { headers: auth });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { windowMs: number; variants: unknown };
    expect(body.windowMs).toBe(300_000);
    expect(body.variants).toEqual(router.stats.query('chat', 300_000).variants);
    const bad = await fetch(`${router.adminUrl}/stats?window=5 minutes`, { headers: auth });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { problems: string[] }).problems[0]).toMatch(/^window: /);
    let now = 1_000_000;
    const store = new StatsStore({ now: () => now });
    store.record('a', 'stable', { at: now - 90_000, outcome: 'upstream_5xx', status: 500, durationMs: 5 });
    for (const ms of [10, 20, 30, 40, 100])
      store.record('a', 'stable', { at: now - 1000, outcome: 'ok', status: 200, ttftMs: ms, durationMs: ms * 2 });
    now += 1;
    const s = store.query('a', 60_000).variants.stable!;
    expect(s).toMatchObject({ requests: 5, errors: 0, ttftMs: { p50: 30, p95: 100 }, durationMs: { p50: 60 } });
    expect(store.query('a', 120_000).variants.stable).toMatchObject({ requests: 6, errors: 1, errorRate: 1 / 6 });
  });

  test('memory is bounded: a full ring drops the oldest samples and says the window is truncated', () => {
    const store = new StatsStore({ capacity: 10 });
    for (let i = 0; i < 25; i++) store.record('a', 'v', { at: Date.now(), outcome: 'ok', status: 200, durationMs: i });
    expect(store.query('a', 60_000).variants.v).toMatchObject({
      requests: 10,
      truncated: true,
      durationMs: { p50: 19 },
    });
  });

  test('/metrics is valid Prometheus text exposition with per-variant series', async () => {
    const res = await fetch(`${router.url}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    const sample =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$/;
    const typed = new Set<string>();
    for (const line of text.trim().split('\n')) {
      if (line === '' || line.startsWith('# HELP ')) continue;
      const t = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (t) {
        typed.add(t[1]!);
        continue;
      }
      const m = sample.exec(line);
      expect([line, m !== null]).toEqual([line, true]);
      const family = m![1]!.replace(/_(bucket|sum|count)$/, '');
      expect([line, typed.has(family) || typed.has(m![1]!)]).toEqual([line, true]);
    }
    expect(text).toContain('gpuops_router_requests_total{alias="chat",variant="canary",outcome="ok"} 5');
    expect(text).toContain('gpuops_router_output_tokens_total{alias="chat",variant="stable"} 55');
    expect(text).toMatch(/gpuops_router_time_to_first_token_seconds_count\{alias="chat",variant="stable"\} 5/);
    expect(text).toContain('gpuops_router_route_weight{alias="chat",variant="canary"} 50');
  });
});
