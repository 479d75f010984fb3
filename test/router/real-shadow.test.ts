/**
 * Shadow mirroring in front of two real llama-servers (from `npm run engines`, serving the tiny GGUF test models):
 * the client gets stable's stream only, the canary engine really generates every mirrored copy, and the router pairs
 * both sides' real measurements so a shadow analysis can judge them.
 */
import { analyseCanary } from '../../src/domain/canary';
import { startRouter, type RouterHandle } from '../../src/router';
import { startLlamaServer, stopEngines, type EngineProc } from '../helpers/engine-procs';
import { engineTools, realTest } from '../helpers/real-engines';

jest.setTimeout(90_000);

const itReal = realTest(['llamaServer']);
const tools = engineTools();
const available = !!(tools.llamaServer && tools.models.v1 && tools.models.v2);

let stable: EngineProc;
let canary: EngineProc;
let router: RouterHandle;

beforeAll(async () => {
  if (!available) return;
  [stable, canary] = await Promise.all([
    startLlamaServer(tools.llamaServer!, tools.models.v1!, ['-c', '512', '-np', '2', '--metrics']),
    startLlamaServer(tools.llamaServer!, tools.models.v2!, ['-c', '512', '-np', '2', '--metrics']),
  ]);
  router = await startRouter({
    port: 0,
    initialRoutes: {
      routes: {
        tiny: {
          variants: [
            { name: 'stable', engine: stable.url, engineType: 'llamacpp', model: 'v1', weight: 100 },
            { name: 'canary', engine: canary.url, engineType: 'llamacpp', model: 'v2', weight: 0 },
          ],
          shadow: { variant: 'canary', percent: 100, maxConcurrent: 2 },
        },
      },
    },
  });
}, 90_000);

afterAll(async () => {
  await router?.close();
  await stopEngines();
});

const request = { stream: true, max_tokens: 16, temperature: 0, messages: [{ role: 'user', content: 'hi' }] };

async function chat(base: string, model: string): Promise<{ variant: string | null; text: string }> {
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...request, model }),
  });
  return { variant: res.headers.get('x-gpuops-variant'), text: await res.text() };
}

/** The answer's text: the streamed deltas' content, joined. */
function content(sse: string): string {
  return sse
    .split('\n')
    .filter((l) => l.startsWith('data: {'))
    .map((l) => (JSON.parse(l.slice(6)) as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta)
    .map((d) => d?.content ?? '')
    .join('');
}

async function predicted(engine: EngineProc): Promise<number> {
  const text = await (await fetch(`${engine.url}/metrics`)).text();
  return Number(/^llamacpp:tokens_predicted_total (\S+)$/m.exec(text)?.[1] ?? 0);
}

itReal("the client gets stable's answer while the real canary engine generates every mirrored copy", async () => {
  const direct = content((await chat(stable.url, 'v1')).text);
  expect(direct.length).toBeGreaterThan(0);
  const before = await predicted(canary);
  for (let i = 0; i < 6; i++) {
    const r = await chat(router.url, 'tiny');
    expect(r.variant).toBe('stable');
    // Greedy decoding: the routed answer is stable's own.
    expect(content(r.text)).toBe(direct);
    // One copy at a time stays under the cap of 2, so none is dropped.
    const end = Date.now() + 20_000;
    while ((router.stats.query('tiny', 600_000).shadow?.canary?.pairs ?? 0) < i + 1 && Date.now() < end) {
      await new Promise((res) => setTimeout(res, 20));
    }
  }
  const st = router.stats.query('tiny', 600_000);
  const pairs = st.shadow?.canary;
  expect(pairs).toMatchObject({ pairs: 6, dropped: 0 });
  expect(pairs?.shadow.outcomes).toEqual({ ok: 6 });
  expect(pairs?.shadow.ttftMs.p95).toBeGreaterThan(0);
  expect(pairs?.answerTokens.shadow).toBeGreaterThan(0);
  expect(Object.keys(st.variants)).toEqual(['stable']);
  // The canary engine really generated the copies (its own counter), although no client saw a byte of them.
  expect((await predicted(canary)) - before).toBeGreaterThanOrEqual(6);
  const verdict = analyseCanary(pairs?.primary, pairs?.shadow, {
    minSamples: 5,
    maxErrorRateDelta: 0.02,
    maxTtftP95Ratio: 100,
    minTokensPerSecondRatio: 0.01,
  });
  expect(verdict.verdict).toBe('pass');
  console.log(
    `real shadow: stable TTFT p95 ${pairs?.primary.ttftMs.p95} ms, canary ${pairs?.shadow.ttftMs.p95} ms; ` +
      `tokens/s ${pairs?.primary.tokensPerSecond.mean} vs ${pairs?.shadow.tokensPerSecond.mean}; ` +
      `answer tokens ${pairs?.answerTokens.primary} vs ${pairs?.answerTokens.shadow}`,
  );
});
