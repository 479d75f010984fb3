/**
 * The simulated engines speak the real formats: the same requests go to a real llama-server and a real Ollama (from
 * `npm run engines`, serving the tiny GGUF test model) and to the simulated engine of the same type, and the answers
 * must have the same shape — status code, content type, stream framing, and recursively the key sets and value types
 * of every JSON object (values differ by design: other model, other clock, a GPU instead of a CPU).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { SandboxNode } from '../../src/sandbox/node';
import { startLlamaServer, startOllama, stopEngines, type EngineProc } from '../helpers/engine-procs';
import { engineTools, realTest } from '../helpers/real-engines';
import { nodeConfig, tempDir } from './helpers';

jest.setTimeout(60_000);

const itReal = realTest(['llamaServer', 'ollama']);
const tools = engineTools();
const available = !!(tools.llamaServer && tools.ollama && tools.models.v1);

const REAL_OLLAMA_MODEL = 'gpuops-tiny:v1';
const SIM_OLLAMA_MODEL = 'qwen2.5:0.5b';

const API_KEY = 'sim-and-real-key';

let realLlama: EngineProc;
let realLlamaWithKey: EngineProc;
let realOllama: EngineProc;
let sn: SandboxNode;
let cleanup: () => void = () => undefined;

beforeAll(async () => {
  if (!available) return;
  const t = tempDir();
  cleanup = t.cleanup;
  // A node without GPUs, like the box the real engines run on.
  const node = await nodeConfig(
    'real-vs-sim',
    [
      { type: 'ollama', name: 'ollama', gpus: [] },
      { type: 'llamacpp', name: 'llama', gpus: [] },
      { type: 'llamacpp', name: 'llama-key', gpus: [] },
    ],
    0,
  );
  const keyFile = path.join(t.dir, 'llama.key');
  writeFileSync(keyFile, `${API_KEY}\n`);
  node.engines[2]!.apiKeyFile = keyFile;
  sn = new SandboxNode({ node, stateDir: t.dir, bootSeconds: 0.1, timeScale: 0.02, engineLoadSeconds: 0.1 });
  [realLlama, realLlamaWithKey, realOllama] = await Promise.all([
    startLlamaServer(tools.llamaServer!, tools.models.v1!, ['-c', '512', '-np', '2', '--metrics', '--slots']),
    startLlamaServer(tools.llamaServer!, tools.models.v1!, [
      '-c',
      '512',
      '-np',
      '1',
      '--metrics',
      '--api-key',
      API_KEY,
    ]),
    startOllama(tools.ollama!, [{ name: REAL_OLLAMA_MODEL, gguf: tools.models.v1! }]),
    sn.start(),
  ]);
  await sn.waitFor((s) => s.engines.every((e) => e.listening), 10_000, 'simulated engines to listen');
  for (const name of ['llama', 'llama-key']) {
    const llama = sn.engineUrl(name);
    for (const end = Date.now() + 10_000; (await fetch(`${llama}/health`)).status !== 200;) {
      if (Date.now() > end) throw new Error('simulated llama-server did not load its model');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}, 60_000);

afterAll(async () => {
  await sn?.stop();
  cleanup();
  await stopEngines();
});

// ---------------------------------------------------------------------------------------------------------------
// Shapes

/** What a JSON value looks like, values left out: its types, an object's keys, an array's (merged) element shape. */
interface Shape {
  types: Set<string>;
  keys?: Map<string, Shape>;
  items?: Shape;
}

function shapeOf(v: unknown): Shape {
  if (v === null) return { types: new Set(['null']) };
  if (Array.isArray(v)) {
    const s: Shape = { types: new Set(['array']) };
    for (const item of v) s.items = s.items ? merge(s.items, shapeOf(item)) : shapeOf(item);
    return s;
  }
  if (typeof v === 'object') {
    return {
      types: new Set(['object']),
      keys: new Map(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, shapeOf(x)])),
    };
  }
  return { types: new Set([typeof v]) };
}

function merge(a: Shape, b: Shape): Shape {
  const s: Shape = { types: new Set([...a.types, ...b.types]) };
  if (a.keys || b.keys) {
    s.keys = new Map(a.keys);
    for (const [k, v] of b.keys ?? []) s.keys.set(k, s.keys.has(k) ? merge(s.keys.get(k)!, v) : v);
  }
  if (a.items || b.items) s.items = a.items && b.items ? merge(a.items, b.items) : (a.items ?? b.items);
  return s;
}

/** Canonical text of a shape (sorted keys), to tell equal shapes apart in a stream. */
function canon(s: Shape): string {
  const keys = s.keys ? [...s.keys.entries()].sort(([a], [b]) => a.localeCompare(b)) : [];
  return `${[...s.types].sort().join('|')}${s.keys ? `{${keys.map(([k, v]) => `${k}:${canon(v)}`).join(',')}}` : ''}${
    s.items ? `[${canon(s.items)}]` : ''
  }`;
}

interface Allow {
  /** Objects whose keys are data (model_info's per-architecture keys): only their values' shapes are compared. */
  maps?: string[];
  /** Keys that one model has and another does not (a license): compared where both have them. */
  optional?: string[];
}

/** Differences of `sim` from `real`, one line each, with the JSON path. */
function shapeDiff(real: Shape, sim: Shape, allow: Allow = {}, at = '$', out: string[] = []): string[] {
  const types = (s: Shape): string => [...s.types].sort().join('|');
  if (types(real) !== types(sim)) {
    out.push(`${at}: real is ${types(real)}, simulated is ${types(sim)}`);
    return out;
  }
  if (real.keys && sim.keys) {
    if (allow.maps?.includes(at)) {
      const values = (m: Map<string, Shape>): Shape | undefined =>
        [...m.values()].reduce<Shape | undefined>((acc, v) => (acc ? merge(acc, v) : v), undefined);
      const [r, s] = [values(real.keys), values(sim.keys)];
      if (r && s) shapeDiff(r, s, allow, `${at}.*`, out);
      return out;
    }
    for (const k of real.keys.keys()) {
      if (!sim.keys.has(k) && !allow.optional?.includes(`${at}.${k}`)) out.push(`${at}.${k}: missing in simulated`);
    }
    for (const k of sim.keys.keys()) {
      if (!real.keys.has(k) && !allow.optional?.includes(`${at}.${k}`)) out.push(`${at}.${k}: only in simulated`);
    }
    for (const [k, r] of real.keys) {
      const s = sim.keys.get(k);
      if (s) shapeDiff(r, s, allow, `${at}.${k}`, out);
    }
  }
  // An empty array on either side says nothing about its elements.
  if (real.items && sim.items) shapeDiff(real.items, sim.items, allow, `${at}[]`, out);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Exchanges

type Kind = 'json' | 'sse' | 'ndjson' | 'prometheus' | 'text' | 'empty';

interface Answer {
  status: number;
  type: string | null;
  kind: Kind;
  text: string;
  /** JSON payloads: one for a JSON body, one per event or line for a stream. */
  objects: unknown[];
}

async function exchange(
  base: string,
  method: string,
  path: string,
  body?: string,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const res = await fetch(`${base}${path}`, {
    method,
    ...(body !== undefined ? { body } : {}),
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
  });
  const text = await res.text();
  const type = res.headers.get('content-type');
  let kind: Kind = 'text';
  let objects: unknown[] = [];
  if (text === '') kind = 'empty';
  else if (type?.startsWith('text/event-stream')) {
    kind = 'sse';
    objects = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice('data: '.length)) as unknown);
  } else if (type?.startsWith('application/x-ndjson')) {
    kind = 'ndjson';
    objects = text
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as unknown);
  } else if (type?.startsWith('application/json')) {
    kind = 'json';
    objects = [JSON.parse(text) as unknown];
  } else if (text.startsWith('# HELP')) kind = 'prometheus';
  return { status: res.status, type, kind, text, objects };
}

/** A stream's framing with every JSON payload written as J and runs of equal events collapsed. */
function framing(a: Answer): string {
  if (a.kind === 'sse')
    return a.text.replace(/^data: \{.*\}$/gm, 'data: J').replace(/(data: J\n\n)+/g, '(data: J\n\n)+');
  if (a.kind === 'ndjson') return a.text.replace(/^\{.*\}$/gm, 'J').replace(/(J\n)+/g, '(J\n)+');
  return a.kind;
}

/** Consecutive payloads of the same shape as one: streams differ in length, not in the order of their kinds. */
function collapsed(objects: unknown[]): Shape[] {
  const out: Shape[] = [];
  for (const o of objects) {
    const s = shapeOf(o);
    if (out.length === 0 || canon(out[out.length - 1]!) !== canon(s)) out.push(s);
  }
  return out;
}

/** Metric families (name and type), and the label names of each sample. */
function promFamilies(text: string): string[] {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) out.add(`${t[1]} ${t[2]}`);
    const s = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? \S+$/.exec(line);
    if (s) {
      const labels = (s[2] ?? '')
        .split(',')
        .filter(Boolean)
        .map((l) => l.split('=')[0])
        .sort();
      out.add(`${s[1]}{${labels.join(',')}}`);
    }
  }
  return [...out].sort();
}

function compare(real: Answer, sim: Answer, allow: Allow): string[] {
  const out: string[] = [];
  if (real.status !== sim.status) out.push(`status: real ${real.status}, simulated ${sim.status}`);
  if (real.type !== sim.type) out.push(`content-type: real ${real.type}, simulated ${sim.type}`);
  if (framing(real) !== framing(sim)) {
    out.push(`framing: real ${JSON.stringify(framing(real))}, simulated ${JSON.stringify(framing(sim))}`);
  }
  if (real.kind === 'prometheus' && sim.kind === 'prometheus') {
    const [r, s] = [promFamilies(real.text), promFamilies(sim.text)];
    for (const f of r) if (!s.includes(f)) out.push(`metric ${f}: missing in simulated`);
    for (const f of s) if (!r.includes(f)) out.push(`metric ${f}: only in simulated`);
  }
  if (real.kind === 'text' && sim.kind === 'text' && real.text !== sim.text) {
    out.push(`text: real ${JSON.stringify(real.text)}, simulated ${JSON.stringify(sim.text)}`);
  }
  const [r, s] = [collapsed(real.objects), collapsed(sim.objects)];
  if (r.length !== s.length) {
    out.push(
      `payload kinds: real ${r.length} (${r.map(canon).join(' / ')}), simulated ${s.length} (${s.map(canon).join(' / ')})`,
    );
  }
  for (let i = 0; i < Math.min(r.length, s.length); i++) {
    for (const d of shapeDiff(r[i]!, s[i]!, allow)) out.push(r.length > 1 ? `payload ${i}: ${d}` : d);
  }
  return out;
}

interface Probe {
  name: string;
  method?: 'GET' | 'POST';
  path: string;
  /** Request body for the model the engine has (a string is sent as is: a bad body). */
  body?: (model: string) => unknown;
  allow?: Allow;
  headers?: Record<string, string>;
}

async function probe(p: Probe, real: string, sim: string, realModel: string, simModel: string): Promise<string[]> {
  const bodyFor = (m: string): string | undefined => {
    const b = p.body?.(m);
    return b === undefined ? undefined : typeof b === 'string' ? b : JSON.stringify(b);
  };
  const method = p.method ?? (p.body ? 'POST' : 'GET');
  const [r, s] = await Promise.all([
    exchange(real, method, p.path, bodyFor(realModel), p.headers),
    exchange(sim, method, p.path, bodyFor(simModel), p.headers),
  ]);
  return compare(r, s, p.allow ?? {});
}

const PROMPT = 'Tell me about GPUs and how they run language models';
const chat =
  (extra: Record<string, unknown> = {}) =>
  (model: string) => ({
    model,
    messages: [{ role: 'user', content: PROMPT }],
    max_tokens: 6,
    temperature: 0,
    ...extra,
  });
const completion =
  (extra: Record<string, unknown> = {}) =>
  (model: string) => ({ model, prompt: PROMPT, max_tokens: 6, temperature: 0, ...extra });

/** The OpenAI-compatible generations, asked of both engines alike: plain, streaming, streaming with usage. */
const openaiProbes: { completions: Probe[]; chat: Probe[] } = {
  completions: [
    { name: 'POST /v1/completions', path: '/v1/completions', body: completion() },
    { name: 'POST /v1/completions streaming', path: '/v1/completions', body: completion({ stream: true }) },
  ],
  chat: [
    { name: 'POST /v1/chat/completions', path: '/v1/chat/completions', body: chat() },
    { name: 'POST /v1/chat/completions streaming', path: '/v1/chat/completions', body: chat({ stream: true }) },
    {
      name: 'POST /v1/chat/completions streaming with usage',
      path: '/v1/chat/completions',
      body: chat({ stream: true, stream_options: { include_usage: true } }),
    },
  ],
};

// ---------------------------------------------------------------------------------------------------------------
// llama.cpp

const llamaProbes: Probe[] = [
  { name: 'GET /health', path: '/health' },
  { name: 'GET /v1/models', path: '/v1/models' },
  { name: 'GET /models', path: '/models' },
  { name: 'GET /props', path: '/props' },
  { name: 'POST /completion', path: '/completion', body: () => ({ prompt: PROMPT, n_predict: 6, temperature: 0 }) },
  {
    name: 'POST /completion streaming',
    path: '/completion',
    body: () => ({ prompt: PROMPT, n_predict: 6, temperature: 0, stream: true }),
  },
  ...openaiProbes.completions,
  ...openaiProbes.chat,
  // llama-server serves the one model it loaded, whatever name the request gives.
  { name: 'POST /v1/chat/completions of an unknown model', path: '/v1/chat/completions', body: () => chat()('nosuch') },
  { name: 'POST /v1/chat/completions without messages', path: '/v1/chat/completions', body: (model) => ({ model }) },
  { name: 'POST /v1/completions without a prompt', path: '/v1/completions', body: (model) => ({ model }) },
  { name: 'POST /v1/chat/completions with a bad body', path: '/v1/chat/completions', body: () => '{not json' },
  { name: 'POST /completion with a bad body', path: '/completion', body: () => '{not json' },
  { name: 'GET of an unknown path', path: '/nope' },
  // After the generations above: the slots that ran a task say so.
  { name: 'GET /slots', path: '/slots' },
  { name: 'GET /metrics', path: '/metrics' },
];

const SIM_LLAMA_MODEL = 'qwen2.5-0.5b-instruct-q4_k_m.gguf';

describe('llama.cpp llama-server', () => {
  itReal.each(llamaProbes)('$name has the real shape', async (p) => {
    const diffs = await probe(p, realLlama.url, sn.engineUrl('llama'), tools.models.v1!, SIM_LLAMA_MODEL);
    expect(diffs).toEqual([]);
  });
});

describe('llama.cpp llama-server with --api-key', () => {
  const key = { authorization: `Bearer ${API_KEY}` };
  const wrong = { authorization: 'Bearer not-the-key' };
  const probes: Probe[] = [
    // Only the health check is public; the model list and the metrics need the key too.
    ...['/health', '/v1/models', '/models', '/metrics', '/props', '/slots'].map((path) => ({
      name: `GET ${path} without the key`,
      path,
    })),
    { name: 'POST /v1/chat/completions without the key', path: '/v1/chat/completions', body: chat() },
    { name: 'POST /v1/chat/completions with a wrong key', path: '/v1/chat/completions', body: chat(), headers: wrong },
    { name: 'POST /v1/chat/completions with the key', path: '/v1/chat/completions', body: chat(), headers: key },
    { name: 'GET /v1/models with the key', path: '/v1/models', headers: key },
    { name: 'GET /metrics with the key', path: '/metrics', headers: key },
  ];
  itReal.each(probes)('$name answers as the real one does', async (p) => {
    const diffs = await probe(p, realLlamaWithKey.url, sn.engineUrl('llama-key'), tools.models.v1!, SIM_LLAMA_MODEL);
    expect(diffs).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Ollama

const showAllow: Allow = {
  // Architecture-specific keys ("llama.block_count", "qwen2.context_length"): data, not format.
  maps: ['$.model_info'],
  // Only models that ship a license have one.
  optional: ['$.license'],
};

const generate =
  (extra: Record<string, unknown> = {}) =>
  (model: string) => ({
    model,
    prompt: PROMPT,
    options: { num_predict: 6, temperature: 0 },
    ...extra,
  });
const ollamaChat =
  (extra: Record<string, unknown> = {}) =>
  (model: string) => ({
    model,
    messages: [{ role: 'user', content: PROMPT }],
    options: { num_predict: 6, temperature: 0 },
    ...extra,
  });

const ollamaProbes: Probe[] = [
  { name: 'GET /', path: '/' },
  { name: 'GET /api/version', path: '/api/version' },
  { name: 'GET /api/tags', path: '/api/tags' },
  { name: 'POST /api/generate streaming', path: '/api/generate', body: generate() },
  { name: 'POST /api/generate', path: '/api/generate', body: generate({ stream: false }) },
  { name: 'POST /api/chat streaming', path: '/api/chat', body: ollamaChat() },
  { name: 'POST /api/chat', path: '/api/chat', body: ollamaChat({ stream: false }) },
  { name: 'POST /api/generate without a prompt (load)', path: '/api/generate', body: (model) => ({ model }) },
  { name: 'GET /api/ps', path: '/api/ps' },
  { name: 'POST /api/show', path: '/api/show', body: (model) => ({ model }), allow: showAllow },
  { name: 'POST /api/show of a missing model', path: '/api/show', body: () => ({ model: 'nosuch:1b' }) },
  { name: 'POST /api/generate of a missing model', path: '/api/generate', body: () => generate()('nosuch:1b') },
  { name: 'POST /api/chat of a missing model', path: '/api/chat', body: () => ollamaChat()('nosuch:1b') },
  { name: 'POST /api/generate without a model', path: '/api/generate', body: () => ({ prompt: 'hi' }) },
  { name: 'POST /api/generate with a bad body', path: '/api/generate', body: () => '{bad' },
  // Shapes only: the real engine has no registry to ask here, the simulated one answers from its library.
  { name: 'POST /api/pull of a missing model, streaming', path: '/api/pull', body: () => ({ model: 'nosuch:1b' }) },
  { name: 'POST /api/pull of a missing model', path: '/api/pull', body: () => ({ model: 'nosuch:1b', stream: false }) },
  { name: 'GET /v1/models', path: '/v1/models' },
  ...openaiProbes.chat,
  ...openaiProbes.completions,
  { name: 'POST /v1/chat/completions of a missing model', path: '/v1/chat/completions', body: () => chat()('nosuch') },
  { name: 'POST /v1/chat/completions with a bad body', path: '/v1/chat/completions', body: () => '{bad' },
  { name: 'GET of an unknown path', path: '/nope' },
  {
    name: 'POST /api/generate with keep_alive 0 (unload)',
    path: '/api/generate',
    body: (model) => ({ model, keep_alive: 0 }),
  },
];

describe('Ollama', () => {
  itReal.each(ollamaProbes)('$name has the real shape', async (p) => {
    const diffs = await probe(p, realOllama.url, sn.engineUrl('ollama'), REAL_OLLAMA_MODEL, SIM_OLLAMA_MODEL);
    expect(diffs).toEqual([]);
  });

  itReal('a model loaded on a box without GPUs has size_vram 0, as on the real CPU-only engine', async () => {
    const ps = async (base: string, model: string): Promise<{ size: number; size_vram: number }[]> => {
      await fetch(`${base}/api/generate`, {
        method: 'POST',
        body: JSON.stringify({ model, prompt: 'hi', stream: false }),
      });
      return ((await (await fetch(`${base}/api/ps`)).json()) as { models: { size: number; size_vram: number }[] })
        .models;
    };
    const [real, sim] = await Promise.all([
      ps(realOllama.url, REAL_OLLAMA_MODEL),
      ps(sn.engineUrl('ollama'), SIM_OLLAMA_MODEL),
    ]);
    expect(real[0]).toMatchObject({ size: expect.any(Number), size_vram: 0 });
    expect(sim[0]).toMatchObject({ size: expect.any(Number), size_vram: 0 });
  });
});
