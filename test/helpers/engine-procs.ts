/**
 * Real engines started by hand for tests that talk to them over HTTP only (no sandbox node, no keeper): a
 * llama-server or an Ollama from the tool cache on a free loopback port, each in its own process group so that
 * stopping it also ends the runners it spawned. Every engine started here is stopped by {@link stopEngines}.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../../src/net';
import { createOllamaModel } from '../../src/sandbox/registry';

/** One engine process started by a test. */
export interface EngineProc {
  /** Base URL, e.g. http://127.0.0.1:41234. */
  url: string;
  /** The engine's stdout and stderr so far (for failure messages). */
  log(): string;
  /** SIGTERM to the process group, SIGKILL after 5 s; resolves once the engine has exited. */
  stop(): Promise<void>;
}

const started: EngineProc[] = [];

/** Stop every engine this file started (call from afterAll). */
export async function stopEngines(): Promise<void> {
  await Promise.all(started.splice(0).map((e) => e.stop()));
}

function launch(
  command: string,
  args: string[],
  env: Record<string, string>,
): { child: ChildProcess; dir: string; log: () => string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpuops-engine-'));
  const logFile = path.join(dir, 'engine.log');
  const fd = openSync(logFile, 'a');
  // detached: a process group of its own, so a stop reaches Ollama's runner children too.
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  return { child, dir, log: () => readFileSync(logFile, 'utf8') };
}

function stopper(child: ChildProcess, dir: string): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => {
    done ??= (async () => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        const signal = (s: NodeJS.Signals): void => {
          try {
            process.kill(-child.pid!, s);
          } catch {
            // already gone
          }
        };
        signal('SIGTERM');
        const t = setTimeout(() => signal('SIGKILL'), 5_000);
        await exited;
        clearTimeout(t);
        signal('SIGKILL'); // runners that outlived their parent
      }
      rmSync(dir, { recursive: true, force: true });
    })();
    return done;
  };
}

async function waitUntil(
  what: string,
  proc: EngineProc,
  ok: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await ok().catch(() => false)) return;
    if (Date.now() > end) throw new Error(`${what} not ready in ${timeoutMs} ms; log:\n${proc.log().slice(-2000)}`);
    await sleep(100);
  }
}

/** A real llama-server serving `model` (`extra` args are appended: --metrics, --slots, …); resolves once healthy. */
export async function startLlamaServer(bin: string, model: string, extra: string[] = []): Promise<EngineProc> {
  const port = await freePort();
  const args = ['-m', model, '--host', '127.0.0.1', '--port', String(port), '-t', '1', ...extra];
  const { child, dir, log } = launch(bin, args, {});
  const proc: EngineProc = { url: `http://127.0.0.1:${port}`, log, stop: stopper(child, dir) };
  started.push(proc);
  await waitUntil('llama-server', proc, async () => (await fetch(`${proc.url}/health`)).status === 200);
  return proc;
}

/** A real Ollama with each of `models` created from its GGUF (blob upload, then /api/create); resolves once listed. */
export async function startOllama(bin: string, models: { name: string; gguf: string }[]): Promise<EngineProc> {
  const port = await freePort();
  const store = mkdtempSync(path.join(tmpdir(), 'gpuops-ollama-models-'));
  const { child, dir, log } = launch(bin, ['serve'], {
    OLLAMA_HOST: `127.0.0.1:${port}`,
    OLLAMA_MODELS: store,
    OLLAMA_NOPRUNE: '1',
  });
  const stop = stopper(child, dir);
  const proc: EngineProc = {
    url: `http://127.0.0.1:${port}`,
    log,
    stop: async () => {
      await stop();
      rmSync(store, { recursive: true, force: true });
    },
  };
  started.push(proc);
  await waitUntil('ollama', proc, async () => (await fetch(`${proc.url}/api/version`)).ok);
  for (const m of models) await createOllamaModel(proc.url, m.name, m.gguf);
  return proc;
}
