/**
 * restic over runTool: init, backup (--json progress), snapshots, forget --prune, check, restore, stats, unlock.
 * The repository password is never an argument or a value in the environment: restic reads it from the file named
 * by RESTIC_PASSWORD_FILE. Written against restic 0.14 (Debian bookworm) and newer.
 */
import { describeFailure, firstLines, runTool, ToolError, type ToolResult } from './exec';
import { LineSplitter } from './streams';

/** One snapshot as `restic snapshots --json` prints it. */
export interface ResticSnapshot {
  id: string;
  short_id: string;
  /** RFC 3339 with the offset the snapshot was taken in. */
  time: string;
  paths: string[];
  hostname: string;
  tags?: string[] | null;
  parent?: string;
}

/** The `summary` message of `restic backup --json`. */
export interface ResticBackupSummary {
  files_new: number;
  files_changed: number;
  files_unmodified: number;
  dirs_new: number;
  dirs_changed: number;
  dirs_unmodified: number;
  data_added: number;
  total_files_processed: number;
  total_bytes_processed: number;
  total_duration: number;
  snapshot_id: string;
}

/** A `status` message of `restic backup --json` (progress). */
export interface ResticBackupStatus {
  percent_done: number;
  total_files?: number;
  files_done?: number;
  total_bytes?: number;
  bytes_done?: number;
}

/** Outcome of a backup run. */
export interface ResticBackupResult {
  summary: ResticBackupSummary;
  /** Exit code 3: the snapshot was created but some source files could not be read. */
  incomplete: boolean;
  /** The unreadable-file errors restic reported (first few), for the record. */
  warnings: string[];
}

/** Options of one backup. */
export interface ResticBackupOptions {
  tags?: string[];
  excludes?: string[];
  /** Snapshot time, e.g. "2024-01-31 12:00:00" (restic --time); crafts history for retention tests. */
  time?: string;
  host?: string;
  /** Upload limit in KiB/s (restic --limit-upload). */
  limitUploadKiB?: number;
  onProgress?: (s: ResticBackupStatus) => void;
  signal?: AbortSignal;
}

/** Retention policy, restic's --keep-* flags. */
export interface ResticKeepPolicy {
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
}

/** One group of `restic forget --json`. */
export interface ResticForgetGroup {
  keep: ResticSnapshot[] | null;
  remove: ResticSnapshot[] | null;
}

/** `restic stats --json`. */
export interface ResticStats {
  total_size: number;
  total_file_count?: number;
  snapshots_count?: number;
}

/** Options of ResticCli. */
export interface ResticCliOptions {
  /** Repository: a path, sftp:, s3:, rest: URL. */
  repository: string;
  /** File holding the repository password (RESTIC_PASSWORD_FILE). */
  passwordFile: string;
  /** restic binary (default: restic on PATH). */
  bin?: string;
  /** restic's cache dir; default restic's own. */
  cacheDir?: string;
  /** Extra environment, e.g. backend credentials' file paths (AWS_SHARED_CREDENTIALS_FILE). */
  env?: Record<string, string>;
  timeoutMs?: number;
}

/** Thrown when the repository does not exist yet (restic exits 1 with "Is there a repository at …"). */
export class ResticNoRepositoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ResticNoRepositoryError';
  }
}

/** One line of `restic backup --json`, by message type; null for anything that is not a JSON message. */
export type ResticBackupMessage =
  | { type: 'status'; status: ResticBackupStatus }
  | { type: 'summary'; summary: ResticBackupSummary }
  | { type: 'error'; error: string }
  | { type: 'other'; messageType: string };

/**
 * Parse one line of `restic backup --json`. restic writes whole JSON objects, one per line, with `message_type`
 * "status" (progress), "verbose_status", "error" (an unreadable file; the backup goes on) and a final "summary"; the
 * summary gained `backup_start`/`backup_end` in 0.17 and keeps its older fields.
 */
export function parseResticBackupLine(line: string): ResticBackupMessage | null {
  const l = line.trim();
  if (!l.startsWith('{')) return null;
  let msg: unknown;
  try {
    msg = JSON.parse(l);
  } catch {
    return null; // a partial line; restic only writes whole JSON lines, so this is noise
  }
  if (typeof msg !== 'object' || msg === null) return null;
  const m = msg as { message_type?: unknown } & Record<string, unknown>;
  switch (m.message_type) {
    case 'status':
      return { type: 'status', status: m as unknown as ResticBackupStatus };
    case 'summary':
      return { type: 'summary', summary: m as unknown as ResticBackupSummary };
    case 'error':
      return { type: 'error', error: JSON.stringify(m) };
    default:
      return { type: 'other', messageType: typeof m.message_type === 'string' ? m.message_type : '' };
  }
}

/** The JSON document in restic's stdout (forget --prune prints prune's text report after it). */
function parseJson<T>(r: ToolResult): T {
  const text = r.stdout.trim();
  try {
    return JSON.parse(text) as T;
  } catch {
    for (const line of text.split('\n')) {
      const l = line.trim();
      if (!l.startsWith('[') && !l.startsWith('{')) continue;
      try {
        return JSON.parse(l) as T;
      } catch {
        // not this line
      }
    }
    throw new ToolError(`\`${r.command}\` printed no JSON: ${firstLines(text, 3)}`, r);
  }
}

function noRepo(r: ToolResult): boolean {
  return /Is there a repository at the following location|repository does not exist|unable to open config file/i.test(
    r.stderr,
  );
}

/** restic for one repository. */
export class ResticCli {
  constructor(private readonly opts: ResticCliOptions) {}

  private env(): Record<string, string | undefined> {
    return {
      ...this.opts.env,
      RESTIC_REPOSITORY: this.opts.repository,
      RESTIC_PASSWORD_FILE: this.opts.passwordFile,
      // Never fall back to a password the worker happens to have in its environment.
      RESTIC_PASSWORD: undefined,
      RESTIC_PASSWORD_COMMAND: undefined,
      ...(this.opts.cacheDir ? { RESTIC_CACHE_DIR: this.opts.cacheDir } : {}),
    };
  }

  /** Run restic with the repository in the environment; returns the raw result. */
  async run(args: readonly string[], opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<ToolResult> {
    const timeoutMs = opts.timeoutMs ?? this.opts.timeoutMs;
    return runTool(this.opts.bin ?? 'restic', args, {
      env: this.env(),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  private async ok(args: readonly string[], signal?: AbortSignal): Promise<ToolResult> {
    const r = await this.run(args, signal ? { signal } : {});
    if (r.exitCode !== 0) {
      if (noRepo(r)) throw new ResticNoRepositoryError(describeFailure(r));
      throw new ToolError(describeFailure(r), r);
    }
    return r;
  }

  /** Whether the repository exists and opens with the password (cheap: `cat config`). */
  async exists(): Promise<boolean> {
    const r = await this.run(['cat', 'config', '--no-lock']);
    if (r.exitCode === 0) return true;
    if (noRepo(r)) return false;
    throw new ToolError(describeFailure(r), r);
  }

  /** Create the repository. */
  async init(): Promise<void> {
    await this.ok(['init']);
  }

  /** Remove stale locks (left by a killed restic); locks of live processes stay. */
  async unlock(): Promise<void> {
    await this.ok(['unlock']);
  }

  /** Back up `paths`; progress lines go to onProgress. Exit 3 (incomplete snapshot) comes back as a warning. */
  async backup(paths: readonly string[], o: ResticBackupOptions = {}): Promise<ResticBackupResult> {
    const args = ['backup', '--json'];
    for (const t of o.tags ?? []) args.push('--tag', t);
    for (const e of o.excludes ?? []) args.push('--exclude', e);
    if (o.time) args.push('--time', o.time);
    if (o.host) args.push('--host', o.host);
    if (o.limitUploadKiB) args.push('--limit-upload', String(o.limitUploadKiB));
    args.push('--', ...paths);
    const { execa } = await import('execa');
    let summary: ResticBackupSummary | undefined;
    const warnings: string[] = [];
    const proc = execa(this.opts.bin ?? 'restic', args, {
      reject: false,
      env: this.env(),
      extendEnv: true,
      stdin: 'ignore',
      ...(o.signal ? { cancelSignal: o.signal } : {}),
      ...(this.opts.timeoutMs !== undefined ? { timeout: this.opts.timeoutMs } : {}),
    });
    const lines = new LineSplitter((line) => {
      const msg = parseResticBackupLine(line);
      if (msg?.type === 'status') o.onProgress?.(msg.status);
      else if (msg?.type === 'summary') summary = msg.summary;
      else if (msg?.type === 'error' && warnings.length < 20) warnings.push(msg.error);
    });
    proc.stdout?.on('data', (chunk: Buffer) => lines.push(chunk));
    const r = await proc;
    lines.end();
    const stderr = typeof r.stderr === 'string' ? r.stderr : '';
    const result: ToolResult = {
      command: ['restic', ...args].join(' '),
      exitCode: r.exitCode ?? null,
      stdout: '',
      stderr,
      all: stderr,
      timedOut: r.timedOut,
      spawnError: null,
    };
    if (r.exitCode === 3 && summary) {
      warnings.push(
        ...stderr
          .split('\n')
          .filter((l) => l.trim() !== '')
          .slice(0, 10),
      );
      return { summary, incomplete: true, warnings };
    }
    if (r.exitCode !== 0 || !summary) {
      if (noRepo(result)) throw new ResticNoRepositoryError(describeFailure(result));
      throw new ToolError(describeFailure(result), result);
    }
    return { summary, incomplete: false, warnings };
  }

  /** Snapshots, optionally only those carrying every tag in `tags`. Oldest first, as restic lists them. */
  async snapshots(o: { tags?: string[] } = {}): Promise<ResticSnapshot[]> {
    const args = ['snapshots', '--json', '--no-lock'];
    if (o.tags?.length) args.push('--tag', o.tags.join(','));
    return parseJson<ResticSnapshot[] | null>(await this.ok(args)) ?? [];
  }

  /**
   * Apply a retention policy to the snapshots carrying every tag in `tags` (as one group) and prune unreferenced
   * data. Returns restic's verdicts.
   */
  async forget(policy: ResticKeepPolicy, o: { tags?: string[]; prune?: boolean } = {}): Promise<ResticForgetGroup[]> {
    const args = ['forget', '--json', '--group-by', ''];
    if (o.tags?.length) args.push('--tag', o.tags.join(','));
    const flags: [keyof ResticKeepPolicy, string][] = [
      ['keepLast', '--keep-last'],
      ['keepHourly', '--keep-hourly'],
      ['keepDaily', '--keep-daily'],
      ['keepWeekly', '--keep-weekly'],
      ['keepMonthly', '--keep-monthly'],
      ['keepYearly', '--keep-yearly'],
    ];
    for (const [k, flag] of flags) {
      const v = policy[k];
      if (v !== undefined && v > 0) args.push(flag, String(v));
    }
    if (o.prune ?? true) args.push('--prune');
    return parseJson<ResticForgetGroup[] | null>(await this.ok(args)) ?? [];
  }

  /** `restic check`, reading `readDataSubset` of the packs ("5%", "1/10", "50M"). Never throws for a bad repo. */
  async check(readDataSubset?: string, signal?: AbortSignal): Promise<{ ok: boolean; output: string }> {
    const args = ['check'];
    if (readDataSubset) args.push('--read-data-subset', readDataSubset);
    const r = await this.run(args, signal ? { signal } : {});
    if (noRepo(r)) throw new ResticNoRepositoryError(describeFailure(r));
    // ok=false is for what the check found; a repository it could not open (the password) or lock is the command
    // failing, not damage.
    if (r.exitCode !== 0 && /wrong password|no key found|unable to create lock|already locked/i.test(r.stderr)) {
      throw new ToolError(describeFailure(r), r);
    }
    return { ok: r.exitCode === 0, output: firstLines(`${r.stderr}\n${r.stdout}`.replace(/\r/g, '\n'), 12) };
  }

  /** Restore `snapshot` ("latest" or an id) into `target`, verifying restored content against the repository. */
  async restore(
    snapshot: string,
    target: string,
    o: { tags?: string[]; includes?: string[]; verify?: boolean; signal?: AbortSignal } = {},
  ): Promise<void> {
    const args = ['restore', snapshot, '--target', target];
    if (o.tags?.length) args.push('--tag', o.tags.join(','));
    for (const i of o.includes ?? []) args.push('--include', i);
    if (o.verify ?? true) args.push('--verify');
    const r = await this.ok(args, o.signal);
    // restic 0.14 reports verification errors on stderr and may still exit 0 with "There were N errors".
    if (/There were \d+ errors|verify .* failed|error/i.test(r.stderr)) {
      throw new ToolError(`restore of ${snapshot} reported errors: ${firstLines(r.stderr, 5)}`, r);
    }
  }

  /** Repository size (`stats --mode raw-data`). */
  async stats(): Promise<ResticStats> {
    return parseJson<ResticStats>(await this.ok(['stats', '--json', '--no-lock', '--mode', 'raw-data']));
  }
}
