/**
 * `gpuops up --real-engines`: the sandbox config plus a node whose engines are real — llama.cpp `llama-server` and
 * Ollama from `npm run engines`, serving the tiny test models — in real Docker containers where a Docker engine
 * answers and the images are built, else as keeper-run processes. Its GPU and VM stay simulated. The file is written
 * under .gpuops/ (the paths in it are absolute: they name this machine's tool cache).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { PROJECT_ROOT } from '../config/load';
import { findEngineTools, type EngineTools } from './engine-supply';
import { publishToRegistry, startRegistryAt, startRegistryFront, type RegistryHandle } from './registry';

/** The real node's id, its engines' ports and the models it starts with. */
export const REAL_NODE = {
  id: 'sandbox-3',
  vmid: 103,
  llamaPort: 18300,
  ollamaPort: 18301,
  llamaModel: 'gpuops-tiny-v1',
  ollamaModel: 'gpuops-tiny:v1',
  /** The real registry, and the front Ollama pulls through (see src/sandbox/registry.ts). */
  registryPort: 18310,
  registryFrontPort: 18311,
} as const;

/** The registry host Ollama pulls from. */
export const REAL_REGISTRY = `127.0.0.1:${REAL_NODE.registryFrontPort}`;

/**
 * The policy for the tiny models (`--policy tiny`): their answers are gibberish with a fixed shape, so the golden set
 * is structural; stable and canary share one CPU (their latency ratios swing several times over), so the canary is
 * judged on errors and only a gross latency difference is a breach; the sandbox's own
 * registry is an allowed source.
 */
export const TINY_POLICY = {
  golden: [
    { id: 'answers', prompt: 'Tell me about the weather.', check: { kind: 'regex', pattern: '\\S' } },
    { id: 'answers-again', prompt: 'Say hello.', check: { kind: 'regex', pattern: '\\S' } },
  ],
  canarySteps: [25, 50],
  stepDuration: '15s',
  analysisInterval: '2s',
  minSamples: 5,
  validationTtftP95Ms: 3000,
  validationMinTokensPerSecond: 1,
  maxTtftP95Ratio: 20,
  minTokensPerSecondRatio: 0.02,
  allowedSources: [`${REAL_REGISTRY}/library/`],
  rollbackWindow: '2m',
};

/** Thrown when the real engines are not there: the message says what to run. */
export class RealEnginesMissing extends Error {
  override readonly name = 'RealEnginesMissing';
}

function dockerUsable(tools: EngineTools): string | undefined {
  if (!tools.images.llamaServer || !tools.images.ollama) return undefined;
  const which = spawnSync('sh', ['-c', 'command -v docker'], { encoding: 'utf8' }).stdout.trim();
  if (!which) return undefined;
  return spawnSync(which, ['info', '--format', '{{.ServerVersion}}'], { timeout: 10_000 }).status === 0
    ? which
    : undefined;
}

/** The real node's config block (absolute paths). */
export function realNodeConfig(
  tools: EngineTools,
  stateDir: string,
  dockerBin: string | undefined,
): Record<string, unknown> {
  const { llamaServer, ollama } = tools;
  const v1 = tools.models.v1;
  if (!llamaServer || !ollama || !v1) {
    throw new RealEnginesMissing(
      `real engines are not built yet: run \`npm run engines\` first (about 25 min the first time). Missing: ${tools.missing.join('; ')}`,
    );
  }
  const nodeDir = path.join(stateDir, REAL_NODE.id);
  const docker = dockerBin !== undefined;
  const llamaArgs = (model: string): string[] => [
    '-m',
    model,
    '--alias',
    REAL_NODE.llamaModel,
    '--host',
    '127.0.0.1',
    '--port',
    String(REAL_NODE.llamaPort),
    '-c',
    '512',
    '-np',
    '1',
    '--metrics',
  ];
  const ollamaEnv = (models: string): Record<string, string> => ({
    OLLAMA_HOST: `127.0.0.1:${REAL_NODE.ollamaPort}`,
    OLLAMA_MODELS: models,
  });
  const seedModels = [{ name: REAL_NODE.ollamaModel, gguf: v1 }];
  const engines = docker
    ? [
        {
          name: 'llama',
          type: 'llamacpp',
          runtime: 'docker',
          container: `${REAL_NODE.id}-llama`,
          url: `http://127.0.0.1:${REAL_NODE.llamaPort}`,
          cpuOnly: true,
          real: { image: tools.images.llamaServer, args: llamaArgs(`/models/${path.basename(v1)}`) },
        },
        {
          name: 'ollama',
          type: 'ollama',
          runtime: 'docker',
          container: `${REAL_NODE.id}-ollama`,
          url: `http://127.0.0.1:${REAL_NODE.ollamaPort}`,
          cpuOnly: true,
          probeModel: REAL_NODE.ollamaModel,
          insecureRegistries: [REAL_REGISTRY],
          real: { image: tools.images.ollama, args: ['serve'], env: ollamaEnv('/root/.ollama/models'), seedModels },
        },
      ]
    : [
        {
          name: 'llama',
          type: 'llamacpp',
          runtime: 'process',
          container: 'llama',
          url: `http://127.0.0.1:${REAL_NODE.llamaPort}`,
          cpuOnly: true,
          process: { command: llamaServer, args: llamaArgs(v1) },
          real: {},
        },
        {
          name: 'ollama',
          type: 'ollama',
          runtime: 'process',
          container: 'ollama',
          url: `http://127.0.0.1:${REAL_NODE.ollamaPort}`,
          cpuOnly: true,
          probeModel: REAL_NODE.ollamaModel,
          insecureRegistries: [REAL_REGISTRY],
          process: { command: ollama, args: ['serve'], env: ollamaEnv(path.join(nodeDir, 'ollama-models')) },
          real: { seedModels },
        },
      ];
  return {
    id: REAL_NODE.id,
    description: `Real llama-server and Ollama (${docker ? 'Docker containers' : 'processes'}) on a simulated A4000 VM`,
    sandbox: true,
    gpus: [{ index: 0, model: 'NVIDIA RTX A4000', memoryMiB: 16376 }],
    engines,
    vm: { hypervisor: 'pve-sandbox', vmid: REAL_NODE.vmid },
    modelStores: [path.join(nodeDir, 'models')],
    tools: { ...(docker ? { docker: dockerBin } : {}), processDir: path.join(nodeDir, 'processes') },
  };
}

/**
 * Write `<root>/.gpuops/real-engines.yaml`: examples/sandbox.yaml with the real node added (relative paths in it
 * still resolve: .gpuops/ and examples/ are siblings). Returns its path.
 */
export function writeRealEnginesConfig(tools: EngineTools = findEngineTools()): string {
  const base = path.join(PROJECT_ROOT, 'examples', 'sandbox.yaml');
  const raw = parse(readFileSync(base, 'utf8')) as Record<string, unknown> & {
    nodes: Record<string, unknown>[];
    sandbox?: { stateDir?: string };
  };
  const out = path.join(PROJECT_ROOT, '.gpuops', 'real-engines.yaml');
  const stateDir = path.resolve(path.dirname(out), raw.sandbox?.stateDir ?? '../.gpuops/sandbox');
  raw.nodes = [...raw.nodes.filter((n) => n.id !== REAL_NODE.id), realNodeConfig(tools, stateDir, dockerUsable(tools))];
  raw.policies = { ...(raw.policies as Record<string, unknown> | undefined), tiny: TINY_POLICY };
  // Its own route table: the aliases of the real node are seeded on its first start.
  raw.router = { ...(raw.router as Record<string, unknown> | undefined), stateFile: '../.gpuops/routes-real.json' };
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(
    out,
    `# Written by \`gpuops up --real-engines\` from examples/sandbox.yaml: the sandbox plus ${REAL_NODE.id}, whose\n` +
      `# engines are real. Rewritten at every such start.\n${stringify(raw)}`,
  );
  return out;
}

/**
 * Run the sandbox's registry for the real node (data under `<stateDir>/registry`) and publish the models a
 * deployment can pull: gpuops-tiny:v2 and, when made, gpuops-tiny:large. Returns the handles and the digests.
 */
export async function startRealRegistry(
  stateDir: string,
  tools: EngineTools = findEngineTools({ images: false }),
): Promise<{ handles: RegistryHandle[]; digests: Record<string, string> }> {
  if (!tools.registry || !tools.ollama || !tools.models.v2) {
    throw new RealEnginesMissing('the registry, Ollama or the v2 test model is missing: run `npm run engines`');
  }
  const dir = path.join(stateDir, 'registry');
  const registry = await startRegistryAt(tools.registry, dir, REAL_NODE.registryPort);
  const handles: RegistryHandle[] = [registry];
  try {
    handles.push(await startRegistryFront(registry.host, { port: REAL_NODE.registryFrontPort }));
    const models = [{ name: 'gpuops-tiny:v2', gguf: tools.models.v2 }];
    if (tools.models.large) models.push({ name: 'gpuops-tiny:large', gguf: tools.models.large });
    return { handles, digests: await publishToRegistry(tools.ollama, registry.host, models, dir) };
  } catch (err) {
    for (const h of handles.reverse()) await h.close();
    throw err;
  }
}
