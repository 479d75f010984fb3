/**
 * Real engines started by hand for tests that talk to them over HTTP only (no sandbox node, no keeper): a
 * llama-server or an Ollama from the tool cache on a loopback port it binds itself (port 0: the kernel picks one at
 * bind time, read back from the engine's "listening on" log line), each in its own process group so that stopping it
 * also ends the runners it spawned. Every engine started here is stopped by {@link stopEngines}.
 *
 * Not a port probed free beforehand: between the probe and the engine's bind, another test file's process (jest runs
 * two) could take the same port, and the engine that lost the race exits while the health check passes against the
 * winner, so the test then talks to someone else's engine.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
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

/** Why `child` can no longer become ready (it exited), with its log's tail; null while it runs. */
function exited(what: string, child: ChildProcess, log: () => string): Error | null {
  if (child.exitCode === null && child.signalCode === null) return null;
  const how = child.exitCode !== null ? `exit ${child.exitCode}` : child.signalCode;
  return new Error(`${what} exited (${how}) before it was ready; log:\n${log().slice(-2000)}`);
}

/** The port the engine says it bound, from its log. */
async function listeningPort(
  what: string,
  child: ChildProcess,
  log: () => string,
  line: RegExp,
  timeoutMs = 30_000,
): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const port = Number(line.exec(log())?.[1]);
    if (port > 0) return port;
    const gone = exited(what, child, log);
    if (gone) throw gone;
    if (Date.now() > end) throw new Error(`${what} bound no port in ${timeoutMs} ms; log:\n${log().slice(-2000)}`);
    await sleep(50);
  }
}

async function waitUntil(
  what: string,
  proc: EngineProc,
  child: ChildProcess,
  ok: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await ok().catch(() => false)) return;
    const gone = exited(what, child, proc.log);
    if (gone) throw gone;
    if (Date.now() > end) throw new Error(`${what} not ready in ${timeoutMs} ms; log:\n${proc.log().slice(-2000)}`);
    await sleep(100);
  }
}

/** A real llama-server serving `model` (`extra` args are appended: --metrics, --slots, …); resolves once healthy. */
export async function startLlamaServer(bin: string, model: string, extra: string[] = []): Promise<EngineProc> {
  const args = ['-m', model, '--host', '127.0.0.1', '--port', '0', '-t', '1', ...extra];
  const { child, dir, log } = launch(bin, args, {});
  const stop = stopper(child, dir);
  started.push({ url: '', log, stop });
  // llama-server: "srv  llama_server: listening on http://127.0.0.1:44123"
  const port = await listeningPort('llama-server', child, log, /listening on http:\/\/127\.0\.0\.1:(\d+)\s/);
  const proc: EngineProc = { url: `http://127.0.0.1:${port}`, log, stop };
  await waitUntil('llama-server', proc, child, async () => (await fetch(`${proc.url}/health`)).status === 200);
  return proc;
}

/** A real Ollama with each of `models` created from its GGUF (blob upload, then /api/create); resolves once listed. */
export async function startOllama(bin: string, models: { name: string; gguf: string }[]): Promise<EngineProc> {
  const store = mkdtempSync(path.join(tmpdir(), 'gpuops-ollama-models-'));
  const { child, dir, log } = launch(bin, ['serve'], {
    OLLAMA_HOST: '127.0.0.1:0',
    OLLAMA_MODELS: store,
    OLLAMA_NOPRUNE: '1',
  });
  const stopProcess = stopper(child, dir);
  const stop = async (): Promise<void> => {
    await stopProcess();
    rmSync(store, { recursive: true, force: true });
  };
  started.push({ url: '', log, stop });
  // Ollama: msg="Listening on 127.0.0.1:42059 (version 0.17.4)"
  const port = await listeningPort('ollama', child, log, /Listening on 127\.0\.0\.1:(\d+) \(/);
  const proc: EngineProc = { url: `http://127.0.0.1:${port}`, log, stop };
  await waitUntil('ollama', proc, child, async () => (await fetch(`${proc.url}/api/version`)).ok);
  for (const m of models) await createOllamaModel(proc.url, m.name, m.gguf);
  return proc;
}
