/** Shared helpers for the sandbox tests: temp state dirs, node configs on free ports, running shims. */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { NodeSchema, type NodeConfig } from '../../src/config/schema';
import { ensureShims, freePort } from '../../src/sandbox/node';
import { SandboxStore, seedState, type SeedOptions } from '../../src/sandbox/state';

export function tempDir(prefix = 'gpuops-sandbox-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface EngineSpec {
  name?: string;
  type?: 'ollama' | 'vllm' | 'llamacpp';
  port?: number;
  gpus?: number[];
}

/** A sandbox node config: one A4000 (plus more if asked) and the given engines on free ports. */
export async function nodeConfig(
  id = 'sbx-1',
  engines: EngineSpec[] = [{}],
  gpus = 1,
  vmid = 101,
): Promise<NodeConfig> {
  const list = [];
  for (const [i, e] of engines.entries()) {
    const type = e.type ?? 'ollama';
    const name = e.name ?? (i === 0 ? type : `${type}-${i}`);
    list.push({
      name,
      type,
      url: `http://127.0.0.1:${e.port ?? (await freePort())}`,
      container: name,
      gpus: e.gpus ?? [0],
    });
  }
  return NodeSchema.parse({
    id,
    sandbox: true,
    gpus: Array.from({ length: gpus }, (_, index) => ({ index, model: 'NVIDIA RTX A4000', memoryMiB: 16376 })),
    engines: list,
    vm: { hypervisor: 'pve-sandbox', vmid },
  });
}

/** Seed a node's state file directly (no supervisor), for shim and fault tests; the shims are built if stale. */
export function seedStore(stateDir: string, node: NodeConfig, opts: SeedOptions = { bootSeconds: 0.3 }): SandboxStore {
  ensureShims();
  const store = SandboxStore.forNode(stateDir, node.id);
  store.createIfAbsent(() => seedState(node, opts));
  return store;
}

export interface ShimResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run one of the shims the way the node worker does: by name, with the node's state in the environment. */
export function runShim(
  tool: 'docker' | 'nvidia-smi' | 'qm' | 'dmesg',
  args: string[],
  env: Record<string, string>,
): Promise<ShimResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(ensureShims(), tool), args, { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** POST JSON and return the response. */
export function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', ...headers },
  });
}

/** Parse an SSE body into its data payloads. */
export function sseData(text: string): string[] {
  return text
    .split('\n\n')
    .map((b) => b.trim())
    .filter((b) => b.startsWith('data: '))
    .map((b) => b.slice('data: '.length));
}
