/**
 * The one place that knows `--json`: a command hands its result to `emit` with a text rendering, a `--follow`
 * streams what changes through `FollowOutput`, and `main` hands any error to `reportError`. With `--json` a
 * command's result is one JSON document on stdout (a `--follow`: JSON Lines) and a failure one JSON object on stderr;
 * without it, the text an operator reads.
 */
import { CommanderError } from '@commander-js/extra-typings';
import { ValidationError } from '../domain/validation';
import type { GlobalOptions } from './context';

/** Plain-text tables for the terminal; `--json` output bypasses these. */
export function table(headers: string[], rows: (string | number | boolean | null | undefined)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c))))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

function writeJson(stream: NodeJS.WritableStream, value: unknown): void {
  stream.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Print a command's result: the value as JSON with `--json`, else `renderText(value)` and a newline. The rendering
 * runs only for text, so it may fetch what only the text shows (`status` lists the deployments in progress).
 * `line`: the JSON on one line (the last line of a `--follow` stream, whose every line is one JSON object).
 */
export async function emit<T>(
  globals: GlobalOptions,
  value: T,
  renderText: (value: T) => string | Promise<string>,
  opts: { line?: boolean } = {},
): Promise<void> {
  if (globals.json && opts.line) process.stdout.write(`${JSON.stringify(value)}\n`);
  else if (globals.json) writeJson(process.stdout, value);
  else process.stdout.write(`${await renderText(value)}\n`);
}

/** A transfer for {@link FollowOutput.transfer}: the view and its rendering with and without a terminal width. */
export interface TransferLine {
  event: Record<string, unknown>;
  render: (width?: number) => string;
}

const CLEAR_LINE = '\r\x1b[2K';

/**
 * What `--follow` prints while a workflow runs. Text: the lines of each change, and a transfer as a bar redrawn in
 * place when stdout is a terminal, else one plain line whenever it moves. `--json`: one JSON object per line for
 * each change and each move of a transfer (JSON Lines); the final record follows as the last line (`emit` with
 * `line`).
 */
export class FollowOutput {
  private last: string | null = null;
  private readonly seen = new Set<string>();
  private lastTransfer: string | null = null;
  private barShown = false;

  constructor(
    private readonly globals: GlobalOptions,
    private readonly out: NodeJS.WriteStream = process.stdout,
  ) {}

  /** A bar only on a terminal, never with --json. */
  private get tty(): boolean {
    return !this.globals.json && this.out.isTTY;
  }

  private write(event: Record<string, unknown>, lines: string[]): void {
    if (this.globals.json) {
      this.out.write(`${JSON.stringify(event)}\n`);
      return;
    }
    if (this.barShown) this.out.write('\n'); // the bar's last state stays above what follows
    this.barShown = false;
    for (const l of lines) this.out.write(`${l}\n`);
  }

  /** The state now: printed when it differs (by `key`, default the event) from the last state printed. */
  change(event: Record<string, unknown>, lines: string[], key = JSON.stringify(event)): void {
    if (key === this.last) return;
    this.last = key;
    this.write(event, lines);
  }

  /** A milestone (a rung reached, a step done): printed once per key. */
  once(key: string, event: Record<string, unknown>, lines: string[]): void {
    if (this.seen.has(key)) return;
    this.seen.add(key);
    this.write(event, lines);
  }

  /** The running transfer (null: none runs now). */
  transfer(t: TransferLine | null): void {
    if (t === null) {
      if (this.barShown) this.out.write('\n');
      this.barShown = false;
      this.lastTransfer = null;
      return;
    }
    const plain = t.render();
    if (plain === this.lastTransfer) return;
    this.lastTransfer = plain;
    if (this.tty) {
      this.out.write(`${CLEAR_LINE}${t.render(this.out.columns || 80)}`);
      this.barShown = true;
    } else this.write(t.event, [plain]);
  }

  /** End the stream: a bar still shown gets its newline. */
  close(): void {
    this.transfer(null);
  }
}

/** What a failed command reports: its exit code, a one-line summary and, for invalid input, one line per problem. */
interface CliError {
  error: string;
  problems?: string[];
  exitCode: number;
}

/** Exit codes (README): 0 success, 1 runtime failure, 2 invalid input (config, arguments). */
function describe(err: unknown): CliError {
  if (err instanceof ValidationError) return { error: `invalid ${err.what}`, problems: err.problems, exitCode: 2 };
  if (err instanceof CommanderError) {
    // Help asked for (0) or shown because no command was given (1) keeps commander's code; every other commander
    // error is a usage error (unknown option, missing argument or required option): invalid input.
    if (err.code === 'commander.help' || err.code === 'commander.helpDisplayed' || err.code === 'commander.version') {
      return { error: err.exitCode === 0 ? '' : 'a command is required (see gpuops --help)', exitCode: err.exitCode };
    }
    return { error: 'invalid arguments', problems: [err.message.replace(/^error: /, '')], exitCode: 2 };
  }
  return { error: (err as Error | undefined)?.message ?? String(err), exitCode: 1 };
}

/**
 * Report a failed command on stderr and return its exit code. With `--json`: `{ error, problems?, exitCode }`.
 * Without: `gpuops: <message>` (commander has printed its own usage errors already), the stack with GPUOPS_DEBUG.
 */
export function reportError(globals: GlobalOptions, err: unknown): number {
  const e = describe(err);
  if (e.exitCode === 0) return 0;
  if (globals.json) writeJson(process.stderr, e);
  else if (!(err instanceof CommanderError)) {
    console.error(`gpuops: ${(err as Error | undefined)?.message ?? String(err)}`);
    if (process.env.GPUOPS_DEBUG && !(err instanceof ValidationError)) console.error(err);
  }
  return e.exitCode;
}

/**
 * Commander's stderr: with `--json` its usage error (and the help after it) would be a second, non-JSON document
 * there, so it is dropped and `reportError` reports the error as JSON instead.
 */
export function commanderErrorStream(globals: () => GlobalOptions): { writeErr: (s: string) => void } {
  return {
    writeErr: (s) => {
      if (!globals().json) process.stderr.write(s);
    },
  };
}
