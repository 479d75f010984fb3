/**
 * Failover on real engines: two real llama-servers (from `npm run engines`, serving the tiny GGUF test model) behind
 * one alias, each on a node of its own. One is killed; every request after that still succeeds (streamed and not),
 * the refused attempts fail over and are counted, and the router drains the dead engine's node by itself.
 */
import { startRouter, type RouterHandle } from '../../src/router';
import { startLlamaServer, stopEngines, type EngineProc } from '../helpers/engine-procs';
import { engineTools, realTest } from '../helpers/real-engines';

jest.setTimeout(90_000);

const itReal = realTest(['llamaServer']);
const tools = engineTools();
const MODEL = 'gpuops-tiny-v1.gguf';

let a: EngineProc;
let b: EngineProc;
let router: RouterHandle;

beforeAll(async () => {
  if (!tools.llamaServer || !tools.models.v1) return;
  [a, b] = await Promise.all([
    startLlamaServer(tools.llamaServer, tools.models.v1, ['-c', '256']),
    startLlamaServer(tools.llamaServer, tools.models.v1, ['-c', '256']),
  ]);
  router = await startRouter({
    port: 0,
    engineNodes: { [a.url]: 'node-a', [b.url]: 'node-b' },
    autoDrain: { refusals: 2, afterMs: 0, recheckMs: 0 },
    initialRoutes: {
      routes: {
        tiny: {
          variants: [
            { name: 'a', engine: a.url, engineType: 'llamacpp', model: MODEL, weight: 50 },
            { name: 'b', engine: b.url, engineType: 'llamacpp', model: MODEL, weight: 50 },
          ],
        },
      },
    },
  });
}, 60_000);

afterAll(async () => {
  await router?.close();
  await stopEngines();
});

interface Answer {
  status: number;
  variant: string | null;
  failover: string | null;
  text: string;
}

async function ask(stream: boolean): Promise<Answer> {
  const res = await fetch(`${router.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 8, stream }),
  });
  const text = await res.text();
  return {
    status: res.status,
    variant: res.headers.get('x-gpuops-variant'),
    failover: res.headers.get('x-gpuops-failover'),
    text,
  };
}

async function failovers(): Promise<number> {
  const text = await (await fetch(`${router.url}/metrics`)).text();
  const line = text
    .split('\n')
    .find((l) => l.startsWith('gpuops_router_failovers_total{alias="tiny",from="a",to="b"} '));
  return line ? Number(line.split(' ')[1]) : 0;
}

itReal(
  'one of two real llama-servers is killed: 0 client errors, the refusals fail over and drain its node',
  async () => {
    const before: Answer[] = [];
    for (let i = 0; i < 12; i++) before.push(await ask(i % 2 === 0));
    expect(before.every((r) => r.status === 200)).toBe(true);
    expect(new Set(before.map((r) => r.variant))).toEqual(new Set(['a', 'b']));

    // Killed between two requests: the next one finds the router's idle keep-alive connections to it closed by the
    // kernel, connects anew and is refused; no byte of it reached the engine.
    await a.stop();
    const after: Answer[] = [];
    for (let i = 0; i < 30; i++) after.push(await ask(i % 2 === 0));

    const errors = after.filter((r) => r.status !== 200);
    expect(errors).toEqual([]);
    expect(after.every((r) => r.variant === 'b')).toBe(true);
    // Streamed answers end like an OpenAI stream; plain ones are chat completions.
    for (const [i, r] of after.entries()) {
      if (i % 2 === 0) expect(r.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
      else expect(JSON.parse(r.text)).toMatchObject({ object: 'chat.completion' });
    }
    const failedOver = after.filter((r) => r.failover === 'a').length;
    // Each refusal failed over until the second one drained node-a; after that a got no traffic.
    expect(failedOver).toBeGreaterThanOrEqual(1);
    expect(failedOver).toBeLessThanOrEqual(2);
    expect(await failovers()).toBe(failedOver);
    expect(router.autoDrain.list()).toEqual([expect.objectContaining({ engine: a.url, node: 'node-a', by: 'router' })]);
    const stats = router.stats.query('tiny', 60_000).variants;
    expect(stats.a?.outcomes.connect).toBe(failedOver);
    expect(stats.b?.errors).toBe(0);
  },
);
