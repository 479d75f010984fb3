/**
 * Failover: a request whose variant refuses the connection or answers 503 before any byte is retried once on another
 * eligible variant (real loopback upstreams and a real closed port); what may have reached the engine is never
 * retried. Auto-drain: the router drains a node whose routed engines all refuse, keeps it apart from operator drains,
 * and puts it back on a release, an operator undrain or its own recheck.
 */
import http from 'node:http';
import type { ServerResponse } from 'node:http';
import { freePort } from '../../src/net';
import { startRouter, type RouterHandle, type RouterOptions, type RouteTableInput } from '../../src/router';
import { AutoDrainer, connectFailure, type AutoDrainDeps } from '../../src/router/failover';
import { RouterMetrics } from '../../src/router/metrics';
import { RouteStore } from '../../src/router/routes';
import { postJson, sleep, sseTokens, startFixture, tempDir, tokenFile, writeChunks, type Fixture } from './helpers';

const fixtures: Fixture[] = [];
const routers: RouterHandle[] = [];
let token: string;
let cleanup: () => void;

beforeAll(() => {
  const t = tempDir();
  token = tokenFile(t.dir);
  cleanup = t.cleanup;
});

afterEach(async () => {
  await Promise.all(routers.splice(0).map((r) => r.close()));
  await Promise.all(fixtures.splice(0).map((f) => f.close()));
});

afterAll(() => cleanup());

/** An engine that answers every chat completion with `name` (JSON, or an SSE stream when asked). */
async function engine(name: string): Promise<Fixture> {
  const fx = await startFixture(async (req, res) => {
    const body = JSON.parse(req.body) as { stream?: boolean };
    if (body.stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      return writeChunks(res, sseTokens(name, 3), 1);
    }
    const text = JSON.stringify({ object: 'chat.completion', model: name, usage: { completion_tokens: 2 } });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
  fixtures.push(fx);
  return fx;
}

/** An engine whose every answer `handler` scripts. */
async function scripted(handler: (res: ServerResponse) => void | Promise<void>): Promise<Fixture> {
  const fx = await startFixture((_req, res) => handler(res));
  fixtures.push(fx);
  return fx;
}

/** A URL on which nothing listens: connections are refused. */
async function deadEngine(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`;
}

type V = { name: string; engine: string; weight: number };
const route = (vs: V[], stickyHeader?: string): RouteTableInput['routes'][string] => ({
  variants: vs.map((v) => ({ ...v, engineType: 'vllm' as const, model: `m-${v.name}` })),
  ...(stickyHeader ? { stickyHeader } : {}),
});

async function router(routes: RouteTableInput['routes'], opts: Partial<RouterOptions> = {}): Promise<RouterHandle> {
  // random 0 picks the first eligible variant: the tests put the failing one first.
  const r = await startRouter({ port: 0, random: () => 0, adminTokenFile: token, initialRoutes: { routes }, ...opts });
  routers.push(r);
  return r;
}

const chat = (r: RouterHandle, alias = 'chat', extra: Record<string, unknown> = {}, headers = {}) =>
  postJson(`${r.url}/v1/chat/completions`, { model: alias, messages: [], ...extra }, headers);

async function admin(r: RouterHandle, method: string, p: string, body?: unknown) {
  const res = await fetch(`${r.adminUrl}${p}`, {
    method,
    headers: { authorization: 'Bearer s3cret-token', ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** One metric sample's value from /metrics (0 when absent). */
async function metric(r: RouterHandle, series: string): Promise<number> {
  const text = await (await fetch(`${r.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

describe('failover', () => {
  test('a refused connection is retried on the other variant: 200 with x-gpuops-failover, one connect error for the refused variant', async () => {
    const live = await engine('canary');
    const r = await router({
      chat: route([
        { name: 'stable', engine: await deadEngine(), weight: 50 },
        { name: 'canary', engine: live.url, weight: 50 },
      ]),
    });
    const res = await chat(r);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-gpuops-failover')).toBe('stable');
    expect(res.headers.get('x-gpuops-variant')).toBe('canary');
    expect(JSON.parse(res.text)).toMatchObject({ model: 'canary' });
    expect(JSON.parse(live.seen[0]!.body)).toMatchObject({ model: 'm-canary' });
    const stats = r.stats.query('chat', 60_000).variants;
    expect(stats.stable).toMatchObject({ requests: 1, errors: 1, outcomes: { connect: 1 } });
    expect(stats.canary).toMatchObject({ requests: 1, errors: 0, outcomes: { ok: 1 } });
    expect(await metric(r, 'gpuops_router_failovers_total{alias="chat",from="stable",to="canary"}')).toBe(1);
    expect(await metric(r, 'gpuops_router_errors_total{alias="chat",variant="stable",kind="connect"}')).toBe(1);
  });

  test('a 503 before any byte is retried; its body is dropped, never forwarded; a streamed answer follows', async () => {
    const busy = await scripted((res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'Loading model', code: 503 } }));
    });
    const live = await engine('canary');
    const r = await router({
      chat: route([
        { name: 'stable', engine: busy.url, weight: 90 },
        { name: 'canary', engine: live.url, weight: 10 },
      ]),
    });
    const res = await chat(r, 'chat', { stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-gpuops-failover')).toBe('stable');
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    expect(res.text).toBe(sseTokens('canary', 3).join(''));
    expect(res.text).not.toContain('Loading model');
    expect(busy.seen).toHaveLength(1);
    const stats = r.stats.query('chat', 60_000).variants;
    expect(stats.stable).toMatchObject({ requests: 1, errors: 1, outcomes: { upstream_5xx: 1 } });
    expect(stats.canary).toMatchObject({ requests: 1, outcomes: { ok: 1 }, outputTokens: 3 });
  });

  test('a stream that breaks after bytes were sent is not retried', async () => {
    const breaking = await scripted((res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(sseTokens('stable', 2)[0]!);
      setTimeout(() => res.socket?.destroy(), 20);
    });
    const live = await engine('canary');
    const r = await router({
      chat: route([
        { name: 'stable', engine: breaking.url, weight: 50 },
        { name: 'canary', engine: live.url, weight: 50 },
      ]),
    });
    const res = await fetch(`${r.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'chat', messages: [], stream: true }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-gpuops-failover')).toBeNull();
    await expect(res.text()).rejects.toThrow();
    expect(live.seen).toHaveLength(0);
    expect(r.stats.query('chat', 60_000).variants.stable?.outcomes).toEqual({ broken_stream: 1 });
    expect(await metric(r, 'gpuops_router_failovers_total{alias="chat",from="stable",to="canary"}')).toBe(0);
  });

  test('a connection reset after the request was sent is not retried: the engine may have begun generating', async () => {
    const resetting = await scripted((res) => {
      res.socket?.destroy();
    });
    const live = await engine('canary');
    const r = await router({
      chat: route([
        { name: 'stable', engine: resetting.url, weight: 50 },
        { name: 'canary', engine: live.url, weight: 50 },
      ]),
    });
    const res = await chat(r);
    expect(res.status).toBe(502);
    expect(res.headers.get('x-gpuops-failover')).toBeNull();
    expect(resetting.seen).toHaveLength(1);
    expect(live.seen).toHaveLength(0);
  });

  test('an alias with no other eligible variant answers as before: 502 for a refusal, the engine 503 as it came', async () => {
    const busy = await scripted((res) => {
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"error":"busy"}');
    });
    const live = await engine('other');
    const r = await router({
      dead: route([{ name: 'stable', engine: await deadEngine(), weight: 100 }]),
      // The canary at weight 0 is no way out.
      busy: route([
        { name: 'stable', engine: busy.url, weight: 100 },
        { name: 'canary', engine: live.url, weight: 0 },
      ]),
    });
    const refused = await chat(r, 'dead');
    expect(refused.status).toBe(502);
    expect(refused.headers.get('x-gpuops-failover')).toBeNull();
    expect(refused.text).toMatch(/ECONNREFUSED/);
    const declined = await chat(r, 'busy');
    expect(declined.status).toBe(503);
    expect(declined.text).toBe('{"error":"busy"}');
    expect(live.seen).toHaveLength(0);
    expect(r.stats.query('dead', 60_000).variants.stable?.outcomes).toEqual({ connect: 1 });
  });

  test('retries once only: when the second variant refuses too, the client gets 502 naming the last one', async () => {
    const r = await router({
      chat: route([
        { name: 'stable', engine: await deadEngine(), weight: 50 },
        { name: 'canary', engine: await deadEngine(), weight: 50 },
      ]),
    });
    const res = await chat(r);
    expect(res.status).toBe(502);
    expect(res.headers.get('x-gpuops-failover')).toBe('stable');
    expect(res.headers.get('x-gpuops-variant')).toBe('canary');
    const stats = r.stats.query('chat', 60_000).variants;
    expect([stats.stable?.outcomes, stats.canary?.outcomes]).toEqual([{ connect: 1 }, { connect: 1 }]);
  });

  test('sticky sessions fall over too, each to a fixed variant; variants on the refusing engine are skipped', async () => {
    const dead = await deadEngine();
    const b = await engine('b');
    const c = await engine('c');
    const r = await router(
      {
        chat: route(
          [
            { name: 'a', engine: dead, weight: 50 },
            { name: 'a2', engine: dead, weight: 30 },
            { name: 'b', engine: b.url, weight: 10 },
            { name: 'c', engine: c.url, weight: 10 },
          ],
          'X-Session-Id',
        ),
      },
      { random: Math.random },
    );
    const first = new Map<string, string>();
    let failedOver = 0;
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 20; i++) {
        const res = await chat(r, 'chat', {}, { 'x-session-id': `s${i}` });
        expect(res.status).toBe(200);
        const got = `${res.headers.get('x-gpuops-variant')}/${res.headers.get('x-gpuops-failover')}`;
        if (round === 0) first.set(`s${i}`, got);
        else expect(got).toBe(first.get(`s${i}`));
        if (res.headers.get('x-gpuops-failover')) failedOver++;
      }
    }
    // 80% of the weight is on the dead engine; every session still got an answer from b or c.
    expect(failedOver).toBeGreaterThan(10);
    expect([...first.values()].every((v) => /^(b|c)\//.test(v))).toBe(true);
  });
});

describe('auto-drain', () => {
  const opts = { refusals: 2, afterMs: 0, recheckMs: 0 };

  test('drains a node only once every routed engine of it refuses; operator drains and undrains keep their meaning', async () => {
    const e1 = await deadEngine();
    const e2 = await engine('e2');
    const e3 = await engine('e3');
    const r = await router(
      {
        x: route([
          { name: 'a', engine: e1, weight: 50 },
          { name: 'b', engine: e3.url, weight: 50 },
        ]),
        y: route([{ name: 'a', engine: e2.url, weight: 100 }]),
      },
      { engineNodes: { [e1]: 'n1', [e2.url]: 'n1', [e3.url]: 'n2' }, autoDrain: opts },
    );
    // e1 refuses, but n1's other engine answers: the node is up, nothing is drained; clients never see the refusals.
    for (let i = 0; i < 4; i++) expect((await chat(r, 'x')).headers.get('x-gpuops-failover')).toBe('a');
    expect((await chat(r, 'y')).status).toBe(200);
    expect(r.autoDrain.list()).toEqual([]);

    await e2.close();
    await sleep(50); // the router's idle keep-alive connection to e2 sees the close
    expect((await chat(r, 'y')).status).toBe(502);
    expect(r.autoDrain.list()).toEqual([]); // e2 has one refusal, not two
    expect((await chat(r, 'y')).status).toBe(502);
    const doc = await admin(r, 'GET', '/routes');
    expect(doc.json.drained).toEqual([]);
    expect(doc.json.autoDrained).toEqual([
      expect.objectContaining({ engine: e1, node: 'n1', by: 'router', reason: expect.stringMatching(/refused/) }),
      expect.objectContaining({ engine: e2.url, node: 'n1', by: 'router' }),
    ]);
    // Drained engines get no traffic: x goes straight to b, y has nothing left.
    const x = await chat(r, 'x');
    expect([x.status, x.headers.get('x-gpuops-variant'), x.headers.get('x-gpuops-failover')]).toEqual([200, 'b', null]);
    expect((await chat(r, 'y')).status).toBe(503);
    expect(await metric(r, `gpuops_router_engine_auto_drained{node="n1",engine="${e1}"}`)).toBe(1);
    expect(await metric(r, 'gpuops_router_auto_drains_total{node="n1"}')).toBe(1);
    expect(await metric(r, 'gpuops_router_route_weight{alias="y",variant="a"}')).toBe(0);

    // An operator drain of e1 survives the release of the router's own drain.
    expect((await admin(r, 'POST', '/drain', { engine: e1 })).status).toBe(200);
    const rel = await admin(r, 'POST', '/auto-drain/release', { node: 'n1', engines: [e1, e2.url] });
    expect(rel.json).toEqual({ released: [e1, e2.url], autoDrained: [] });
    expect((await admin(r, 'GET', '/routes')).json.drained).toEqual([e1]);
    expect(await metric(r, `gpuops_router_engine_auto_drained{node="n1",engine="${e1}"}`)).toBe(0);
    expect(await metric(r, 'gpuops_router_route_weight{alias="y",variant="a"}')).toBe(100);

    // An operator undrain releases the router's drain too, and the refusal count starts over.
    expect((await chat(r, 'y')).status).toBe(502);
    expect((await chat(r, 'y')).status).toBe(502);
    expect(r.autoDrain.list().map((e) => e.engine)).toEqual([e2.url]);
    const undrain = await admin(r, 'POST', '/undrain', { engine: e2.url });
    expect(undrain.json.autoDrained).toEqual([]);
    expect((await chat(r, 'y')).status).toBe(502);
    expect(r.autoDrain.list()).toEqual([]);
  });

  test('the release call names the field it refuses', async () => {
    const r = await router({ chat: route([{ name: 'a', engine: await deadEngine(), weight: 100 }]) });
    const res = await admin(r, 'POST', '/auto-drain/release', { engines: [] });
    expect(res.status).toBe(400);
    expect(res.json.problems).toEqual([expect.stringMatching(/^engines: must list at least one engine URL/)]);
    const bad = await admin(r, 'POST', '/auto-drain/release', { engines: ['nope'], extra: 1 });
    expect(bad.json.problems).toEqual(['engines[0]: must be an http(s) URL', '(root): unknown field(s): extra']);
  });

  test("without a watcher the router's recheck releases an engine once it accepts connections again", async () => {
    const port = await freePort();
    const e1 = `http://127.0.0.1:${port}`;
    const r = await router(
      { y: route([{ name: 'a', engine: e1, weight: 100 }]) },
      { engineNodes: { [e1]: 'n1' }, autoDrain: { ...opts, recheckMs: 200 } },
    );
    await chat(r, 'y');
    await chat(r, 'y');
    expect(r.autoDrain.list()).toHaveLength(1);
    await sleep(600);
    expect(r.autoDrain.list()).toHaveLength(1); // still refusing: the recheck keeps it
    const server = http.createServer((_req, res) => res.end('{}'));
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    try {
      const deadline = Date.now() + 5_000;
      while (r.autoDrain.list().length > 0 && Date.now() < deadline) await sleep(50);
      expect(r.autoDrain.list()).toEqual([]);
      expect((await chat(r, 'y')).status).toBe(200);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('AutoDrainer', () => {
  function drainer(refusals: number, afterMs: number, more: Partial<AutoDrainDeps> = {}, recheckMs = 0) {
    let t = 1_000_000;
    const store = new RouteStore(undefined);
    store.replace({
      routes: {
        x: route([
          { name: 'a', engine: 'http://10.0.0.1:8000', weight: 50 },
          { name: 'b', engine: 'http://10.0.0.1:8001/', weight: 50 },
          { name: 'c', engine: 'http://10.0.0.2:8000', weight: 0 },
        ]),
      },
    });
    const d = new AutoDrainer({
      store,
      metrics: new RouterMetrics(),
      log: () => undefined,
      options: { refusals, afterMs, recheckMs },
      now: () => t,
      ...more,
    });
    return { d, advance: (ms: number) => (t += ms) };
  }

  test('refusals count only once they lasted `afterMs`; an answer in between starts the count over', () => {
    const { d, advance } = drainer(3, 5_000);
    for (let i = 0; i < 5; i++) d.refused('http://10.0.0.1:8000', 'ECONNREFUSED');
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    d.connected('http://10.0.0.1:8001');
    advance(6_000);
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    d.refused('http://10.0.0.1:8000', 'ECONNREFUSED');
    expect(d.list()).toEqual([]); // 8001's streak is 2 and 0 s old
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    advance(5_000);
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    // Engines no node lists are grouped by host; the weight-0 variant on another host takes no part.
    expect(d.list().map((e) => [e.engine, e.node])).toEqual([
      ['http://10.0.0.1:8000', 'host:10.0.0.1'],
      ['http://10.0.0.1:8001', 'host:10.0.0.1'],
    ]);
    expect([...d.drained].sort()).toEqual(['http://10.0.0.1:8000', 'http://10.0.0.1:8001']);
  });

  test("the router's own resolver failing (ENOTFOUND, EAI_AGAIN) never drains a node", () => {
    const { d, advance } = drainer(1, 0);
    for (const code of ['ENOTFOUND', 'EAI_AGAIN']) {
      d.refused('http://10.0.0.1:8000', code);
      d.refused('http://10.0.0.1:8001', code);
      advance(1_000);
    }
    expect(d.list()).toEqual([]);
    d.refused('http://10.0.0.1:8000', 'ECONNREFUSED');
    d.refused('http://10.0.0.1:8001', 'ECONNREFUSED');
    expect(d.list()).toHaveLength(2);
  });

  test('classifies only failures that never reached the engine as retryable', () => {
    const e = (code: string): Error => Object.assign(new Error(code), { code });
    expect(connectFailure(e('ECONNREFUSED'))).toBe('ECONNREFUSED');
    expect(connectFailure(e('UND_ERR_CONNECT_TIMEOUT'))).toBe('UND_ERR_CONNECT_TIMEOUT');
    expect(connectFailure(new AggregateError([e('ECONNREFUSED'), e('ENETUNREACH')]))).toBe('ECONNREFUSED');
    expect(connectFailure(new AggregateError([e('ECONNREFUSED'), e('ECONNRESET')]))).toBeNull();
    expect(connectFailure(Object.assign(new Error('x'), { cause: e('EHOSTUNREACH') }))).toBe('EHOSTUNREACH');
    for (const code of ['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_HEADERS_TIMEOUT'])
      expect(connectFailure(e(code))).toBeNull();
    expect(connectFailure(null)).toBeNull();
  });

  test('a change listener that throws is logged: the drain stands, the refusing request goes on and the recheck is armed', async () => {
    const logs: string[] = [];
    const accepts = jest.fn(() => Promise.resolve(false));
    const onChange = (): void => {
      throw new Error('listener bug');
    };
    const { d, advance } = drainer(1, 0, { log: (l) => logs.push(l), accepts, onChange }, 50);
    try {
      d.refused('http://10.0.0.1:8000', 'ECONNREFUSED');
      expect(() => d.refused('http://10.0.0.1:8001', 'ECONNREFUSED')).not.toThrow();
      expect(d.list()).toHaveLength(2);
      expect(logs).toContainEqual(expect.stringContaining('listener bug'));
      advance(1_000); // the drains are due for their recheck
      const end = Date.now() + 2_000;
      while (accepts.mock.calls.length === 0 && Date.now() < end) await sleep(20);
      expect(accepts).toHaveBeenCalled();
    } finally {
      d.close();
    }
  });
});

test('a route change listener that throws is logged; the change stands and the other listeners still hear of it', () => {
  const logs: string[] = [];
  const store = new RouteStore(undefined, (l) => logs.push(l));
  const heard: number[] = [];
  store.onChange(() => {
    throw new Error('listener bug');
  });
  store.onChange((snap) => heard.push(snap.version));
  const snap = store.replace({ routes: { x: route([{ name: 'a', engine: 'http://10.0.0.1:8000', weight: 1 }]) } });
  expect(snap.version).toBe(1);
  expect(store.current).toBe(snap);
  expect(heard).toEqual([1]);
  expect(logs).toEqual([expect.stringContaining('listener bug')]);
});
