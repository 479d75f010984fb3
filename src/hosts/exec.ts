/**
 * One way to run a host tool (docker, nvidia-smi, dmesg, qm): an argument array, never a shell string, and a result
 * that always comes back (exit codes are data, not exceptions) so each adapter decides what a failure means.
 */
import type * as Execa from 'execa' with { 'resolution-mode': 'import' };

/** What one tool run produced. */
export interface ToolResult {
  /** The command as a readable line, for error messages (arguments are never secrets in gpuops). */
  command: string;
  /** Exit status; null when the process could not be spawned or was killed. */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** stdout and stderr interleaved in arrival order, when `all` was requested; otherwise stdout + stderr. */
  all: string;
  timedOut: boolean;
  /** Set when the binary could not be started at all (e.g. "spawn nvidia-smi ENOENT"). */
  spawnError: string | null;
}

/** Options of runTool. */
export interface RunToolOptions {
  /** Extra environment; merged over the worker's own, so PATH still finds sandbox shims. */
  env?: Record<string, string | undefined>;
  timeoutMs?: number;
  /** Cancels the run (SIGTERM), e.g. when the Temporal activity is cancelled. */
  signal?: AbortSignal;
  /** Interleave stdout and stderr into `all` (docker logs writes the container's stderr to stderr). */
  all?: boolean;
}

/** Thrown by adapters when a tool run failed in a way the caller must handle; names the command and its stderr. */
export class ToolError extends Error {
  constructor(
    message: string,
    readonly result: ToolResult,
  ) {
    super(message);
    this.name = 'ToolError';
  }
}

/** "`docker restart -t 10 ollama` exited 1: Error response from daemon: ..." */
export function describeFailure(result: ToolResult): string {
  if (result.spawnError !== null) return `\`${result.command}\` could not start: ${result.spawnError}`;
  if (result.timedOut) return `\`${result.command}\` timed out`;
  const detail = firstLines(result.stderr.trim() || result.stdout.trim(), 5) || '(no output)';
  const how = result.exitCode === null ? 'was killed' : `exited ${result.exitCode}`;
  return `\`${result.command}\` ${how}: ${detail}`;
}

/** The first n non-empty lines, each trimmed: enough for an error message, never a whole log. */
export function firstLines(text: string, n: number): string {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .slice(0, n)
    .join(' | ');
}

// execa ships only ESM while this project compiles to CommonJS; a dynamic import keeps tsc, tsx and jest (which
// transforms execa to CommonJS) happy, and is loaded once per process.
let execaModule: Promise<typeof Execa> | undefined;

/** The execa module, imported once (shared by every caller that runs a subprocess). */
export function loadExeca(): Promise<typeof Execa> {
  execaModule ??= import('execa');
  return execaModule;
}

/**
 * Run `bin args...` without a shell. Never rejects for a non-zero exit, a timeout or a missing binary: those come
 * back in the result. The binary is looked up on PATH at call time, so a sandbox that prepends its shims works.
 */
export async function runTool(bin: string, args: readonly string[], opts: RunToolOptions = {}): Promise<ToolResult> {
  const { execa } = await loadExeca();
  const options: Execa.Options = {
    reject: false,
    shell: false,
    stdin: 'ignore',
    extendEnv: true,
    stripFinalNewline: true,
    all: opts.all ?? false,
    ...(opts.env ? { env: opts.env } : {}),
    ...(opts.timeoutMs !== undefined ? { timeout: opts.timeoutMs } : {}),
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
  };
  const r = await execa(bin, [...args], options);
  const stdout = typeof r.stdout === 'string' ? r.stdout : '';
  const stderr = typeof r.stderr === 'string' ? r.stderr : '';
  const all = typeof r.all === 'string' ? r.all : [stdout, stderr].filter((s) => s !== '').join('\n');
  // A spawn failure has no exit code and an errno-style code (ENOENT, EACCES) on the error object.
  const errno = 'code' in r && typeof r.code === 'string' ? r.code : undefined;
  const spawnError =
    r.exitCode === undefined && !r.timedOut && !r.isCanceled && errno !== undefined
      ? `${errno}${'originalMessage' in r && typeof r.originalMessage === 'string' ? ` (${r.originalMessage})` : ''}`
      : null;
  return {
    command: [bin, ...args].join(' '),
    exitCode: r.exitCode ?? null,
    stdout,
    stderr,
    all,
    timedOut: r.timedOut,
    spawnError,
  };
}
