/**
 * Child processes that `gpuops up` keeps running (node and hypervisor workers for non-simulated hosts), restarted
 * after a crash like systemd's Restart=always, stopped with SIGTERM (then SIGKILL) on shutdown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { PROJECT_ROOT } from '../config/load';
import { LineSplitter } from '../hosts/streams';

export interface ManagedProcessOptions {
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string>;
  log: (line: string) => void;
  restartDelayMs?: number;
}

export class ManagedProcess {
  private child: ChildProcess | undefined;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ManagedProcessOptions) {}

  start(): void {
    if (this.stopping) return;
    // Own process group: a terminal Ctrl-C reaches gpuops, which then stops children in order.
    const child = spawn(this.opts.command, this.opts.args, {
      env: { ...process.env, ...this.opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.child = child;
    // One splitter per stream: a line that arrives in two chunks is logged once, whole, and stdout and stderr lines
    // never interleave mid-line.
    for (const stream of [child.stdout, child.stderr]) {
      const lines = new LineSplitter((line) => {
        if (line.trim()) this.opts.log(`[${this.opts.name}] ${line}`);
      });
      stream?.on('data', (b: Buffer) => lines.push(b));
      stream?.on('end', () => lines.end());
    }
    child.once('exit', (code, signal) => {
      if (this.stopping) return;
      this.opts.log(
        `[${this.opts.name}] exited (${signal ?? code}); restarting in ${this.opts.restartDelayMs ?? 2000} ms`,
      );
      this.restartTimer = setTimeout(() => this.start(), this.opts.restartDelayMs ?? 2000);
    });
  }

  /** Kill at once with a signal (tests use SIGKILL to simulate a crashed host) and do not restart it. */
  async kill(signal: NodeJS.Signals): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
    });
  }

  async stop(graceMs = 15_000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill('SIGTERM');
    });
  }
}

/**
 * How to run a TypeScript entrypoint of this project as a child process: node with tsx's loader, one process (the
 * tsx CLI would add a parent process, and a SIGKILL to it would orphan the real worker).
 */
export function tsxCommand(entry: string, args: string[]): { command: string; args: string[] } {
  const loader = pathToFileURL(path.join(PROJECT_ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
  return { command: process.execPath, args: ['--import', loader, path.join(PROJECT_ROOT, entry), ...args] };
}
