/**
 * Backup activities that run ON the node (queue gpuops-node-<id>): restic against the plan's repository, over the
 * node's own files (model store, gpuops config) or files staged on the node (GPU config from nvidia-smi, a VM config
 * fetched by the control worker). The repository password is read by restic from the plan's passwordFile on the
 * node: it never passes through a workflow input, history or log.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, statfs, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { asyncLocalStorage } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { NodeConfig } from '../src/config/schema';
import { isEmptyPolicy, type KeepPolicy } from '../src/domain/retention';
import { ToolError } from '../src/hosts/exec';
import type { NvidiaSmi } from '../src/hosts/nvidia-smi';
import {
  ResticCli,
  ResticNoRepositoryError,
  type ResticBackupStatus,
  type ResticSnapshot,
  type ResticStats,
} from '../src/hosts/restic';
import {
  activityMetrics,
  cancellationSignal,
  heartbeat,
  lastHeartbeatDetails,
  nonRetryable,
  warn,
  withHeartbeat,
} from './activity-context';

/** Partial downloads never make a useful backup: Ollama's `-partial` blobs, HF's `.incomplete`, curl/wget leftovers. */
export const PARTIAL_DOWNLOAD_EXCLUDES = ['*-partial', '*-partial-*', '*.partial', '*.incomplete', '*.part', '*.tmp'];

/** Names a plan's repository; the password stays in the file on the node. */
export interface RepoInput {
  plan: string;
  /** restic repository (path, sftp:, s3:, rest:). */
  repository: string;
  /** Path of the password file on the node (relative paths resolve from gpuops.yaml's directory). */
  passwordFile: string;
}

/** Input of resticPrecheck. */
export interface PrecheckInput extends RepoInput {
  /** Create the repository when it does not exist (first run of a plan). */
  initIfMissing?: boolean;
  /** Fail when a local repository's filesystem has less free space than this. */
  minFreeBytes?: number;
}

/** Result of resticPrecheck. */
export interface PrecheckResult {
  /** The repository was created by this check. */
  initialised: boolean;
  /** Free bytes where a local repository lives; null for remote repositories. */
  freeBytes: number | null;
}

/** What a plan backs up. */
export type BackupWhat = 'model-store' | 'vm-config' | 'gpu-config' | 'gpuops-config';

/** Input of resticBackup. */
export interface BackupInput extends RepoInput {
  what: BackupWhat;
  /** model-store paths on the node. */
  paths?: string[];
  /** Tag unique to this workflow run: a retry finds the snapshot an earlier attempt made and does not make another. */
  runTag: string;
  /** Extra tags (plan, node, what are added here). */
  tags?: string[];
  /** vm-config: the configuration the control worker fetched from the hypervisor, as text. */
  vmConfig?: { name: string; text: string };
  /** restic --limit-upload, KiB/s. */
  limitUploadKiB?: number;
  /** How many files to fingerprint (sha256) for the test restore (default 3; runBackup sends 0 when it will not test-restore). */
  samples?: number;
}

/** A file fingerprinted before the backup, compared after a test restore. */
export interface SampleFile {
  path: string;
  sha256: string;
  bytes: number;
}

/** Result of resticBackup. */
export interface BackupOutcome {
  snapshotId: string;
  filesNew: number;
  filesChanged: number;
  filesUnmodified: number;
  dataAdded: number;
  bytesProcessed: number;
  /** restic exit 3: snapshot made, some files unreadable. */
  incomplete: boolean;
  warnings: string[];
  /** An earlier attempt had already made this snapshot (the worker died after restic finished). */
  reused: boolean;
  /** Stale locks were removed before this attempt (a retry after a killed worker). */
  unlocked: boolean;
  samples: SampleFile[];
  /** Model digests found in Ollama manifests (name:tag@sha256 prefix), also set as snapshot tags. */
  modelDigests: string[];
  /** Absolute paths backed up. */
  paths: string[];
}

/** Input of resticPrecheckAndBackup: the pre-check's and the backup's in one node activity. */
export interface PrecheckAndBackupInput extends BackupInput {
  /** Create the repository when it does not exist (first run of a plan; default true). */
  initIfMissing?: boolean;
  /** Fail when a local repository's filesystem has less free space than this. */
  minFreeBytes?: number;
}

/** Result of resticPrecheckAndBackup. */
export interface PrecheckAndBackupResult {
  precheck: PrecheckResult;
  backup: BackupOutcome;
}

/** Input of resticForgetAndCheck. */
export interface ForgetAndCheckInput extends RepoInput {
  retention: KeepPolicy;
  /** restic check --read-data-subset. */
  readDataSubset?: string;
}

/** Result of resticForgetAndCheck. */
export interface ForgetAndCheckResult {
  retention: { kept: string[]; removed: string[] };
  check: { ok: boolean; output: string };
  /** An earlier attempt had already applied the retention (read back from its heartbeat). */
  retentionResumed: boolean;
}

/** Which step of a plan run a merged activity's failure belongs to, in the failure's details. */
export type BackupStepName = 'precheck' | 'backup' | 'forget' | 'check';

/**
 * The details a merged backup activity's failure carries: the step it failed at, and what the steps before it did
 * (whether the pre-check created the repository; the retention's result), for the run's record.
 */
export interface BackupStepFailureDetails {
  step: BackupStepName;
  initialised?: boolean;
  retention?: { kept: string[]; removed: string[] };
}

/**
 * `err` as an ApplicationFailure whose details are `details` (the step it failed at), keeping the type, message,
 * whether a retry may fix it (a ToolError stays retryable; a refused input or wrong password does not) and the
 * original error as its cause.
 */
export function stepFailure(details: BackupStepFailureDetails, err: unknown): ApplicationFailure {
  if (err instanceof ApplicationFailure) {
    return ApplicationFailure.create({
      type: err.type ?? 'Error',
      message: err.message,
      nonRetryable: err.nonRetryable === true,
      details: [details],
      cause: err,
    });
  }
  const e = err instanceof Error ? err : new Error(String(err));
  return ApplicationFailure.create({
    type: e.name,
    message: e.message,
    nonRetryable: false,
    details: [details],
    cause: e,
  });
}

/** What createBackupActivities needs. */
export interface BackupActivityDeps {
  node: NodeConfig;
  nvidiaSmi: NvidiaSmi;
  /** Resolves configured paths (relative to gpuops.yaml). */
  resolvePath?: (p: string) => string;
  /** gpuops.yaml on this node, for gpuops-config plans. */
  configPath?: string;
  /** Where gpu-config and vm-config files are staged before the backup (default: <tmpdir>/gpuops-staging). */
  stagingRoot?: string;
  /** restic binary. */
  resticBin?: string;
}

function attempt(): number {
  return asyncLocalStorage.getStore()?.info.attempt ?? 1;
}

async function sha256File(p: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(p)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Every regular file under `root` (or root itself), sorted, skipping partial downloads. */
async function listFiles(root: string, limit = 100_000): Promise<string[]> {
  const out: string[] = [];
  const partial = /(-partial(-\d+)?|\.partial|\.incomplete|\.part|\.tmp)$/;
  const walk = async (p: string): Promise<void> => {
    if (out.length >= limit) return;
    const s = await stat(p).catch(() => null);
    if (!s) return;
    if (s.isFile()) {
      if (!partial.test(p)) out.push(p);
      return;
    }
    if (!s.isDirectory()) return;
    for (const e of (await readdir(p)).sort()) await walk(path.join(p, e));
  };
  await walk(root);
  return out;
}

/** Ollama manifests under a models dir: `<models>/manifests/<registry>/<ns>/<name>/<tag>`; digest = sha256 of it. */
async function ollamaDigests(store: string): Promise<string[]> {
  const base = path.join(store, 'manifests');
  const files = await listFiles(base, 200);
  const out: string[] = [];
  for (const f of files) {
    const parts = path.relative(base, f).split(path.sep);
    const tag = parts.pop() ?? 'latest';
    const name = parts.pop() ?? '?';
    out.push(`${name}:${tag}@${(await sha256File(f)).slice(0, 12)}`);
  }
  return out;
}

/** Delete a directory's contents' parent-safe: used for staging dirs we own. */
async function resetDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
}

function localRepoPath(repository: string): string | null {
  if (repository.startsWith('local:')) return repository.slice('local:'.length);
  if (/^[a-z0-9]+:/i.test(repository)) return null;
  return repository;
}

/** Node-side backup activities. */
/** The restic operations timed into gpuops_restic_duration_seconds, by the `operation` label each records. */
const TIMED_OPERATIONS = {
  resticBackup: 'backup',
  resticForget: 'forget',
  resticCheck: 'check',
  resticTestRestore: 'test-restore',
  resticRestore: 'restore',
} as const;

/** `work`'s wall time into gpuops_restic_duration_seconds as `operation` of `plan`, ok or failed. */
async function timedRestic<T>(plan: string, operation: string, work: () => Promise<T>): Promise<T> {
  const started = performance.now();
  let outcome = 'failed';
  try {
    const r = await work();
    outcome = 'ok';
    return r;
  } finally {
    activityMetrics().observe('resticDuration', { plan, operation, outcome }, (performance.now() - started) / 1000);
  }
}

/** The same activities, each timed operation recording its wall time by plan and outcome (ok or failed). */
function timedOperations<A extends Record<keyof typeof TIMED_OPERATIONS, (input: never) => Promise<unknown>>>(
  acts: A,
): A {
  const timed = { ...acts };
  for (const [key, operation] of Object.entries(TIMED_OPERATIONS) as [keyof typeof TIMED_OPERATIONS, string][]) {
    // Every timed operation's input names its plan (RepoInput).
    const work = acts[key] as unknown as (input: { plan: string }) => Promise<unknown>;
    timed[key] = ((input: { plan: string }) => timedRestic(input.plan, operation, () => work(input))) as A[typeof key];
  }
  return timed;
}

export function createBackupActivities(deps: BackupActivityDeps) {
  const resolve = deps.resolvePath ?? ((p: string): string => p);
  const stagingRoot = deps.stagingRoot ?? path.join(os.tmpdir(), 'gpuops-staging');
  const restic = (r: RepoInput): ResticCli => {
    const local = localRepoPath(r.repository);
    return new ResticCli({
      repository: local !== null && !r.repository.startsWith('local:') ? resolve(local) : r.repository,
      passwordFile: resolve(r.passwordFile),
      ...(deps.resticBin ? { bin: deps.resticBin } : {}),
    });
  };
  const planTag = (plan: string): string => `plan:${plan}`;
  /** The failure to report for `err`: a missing repository or a wrong password no retry fixes; others as they are. */
  const toolFailure = (err: unknown): unknown => {
    if (err instanceof ResticNoRepositoryError) return nonRetryable('ResticNoRepository', err.message);
    if (err instanceof ToolError && /wrong password|no key found/i.test(err.result.stderr)) {
      return nonRetryable('ResticWrongPassword', err.message);
    }
    return err;
  };
  const failOnTool = (err: unknown): never => {
    throw toolFailure(err);
  };

  /** Stage gpu-config / vm-config files and return the paths to back up. */
  const stage = async (input: BackupInput): Promise<string[]> => {
    switch (input.what) {
      case 'model-store': {
        const paths = (input.paths ?? []).map(resolve);
        if (paths.length === 0) throw nonRetryable('InvalidInput', 'a model-store backup needs at least one path');
        for (const p of paths) {
          if (!(await stat(p).catch(() => null))) throw nonRetryable('MissingPath', `${p} does not exist on the node`);
        }
        return paths;
      }
      case 'gpuops-config': {
        if (!deps.configPath) throw nonRetryable('NoConfigPath', 'this node worker was started without a config file');
        return [path.resolve(deps.configPath)];
      }
      case 'gpu-config': {
        const dir = path.join(stagingRoot, input.plan, 'gpu-config');
        await resetDir(dir);
        const snap = await deps.nvidiaSmi.snapshotXml();
        await writeFile(path.join(dir, 'nvidia-smi-q.xml'), snap.xml);
        const { xml: _xml, ...facts } = snap;
        // The XML changes every second (clocks, temperatures); facts.json is what an operator diffs.
        await writeFile(path.join(dir, 'facts.json'), `${JSON.stringify({ node: deps.node.id, ...facts }, null, 2)}\n`);
        return [dir];
      }
      case 'vm-config': {
        if (!input.vmConfig) throw nonRetryable('InvalidInput', 'a vm-config backup needs the fetched vmConfig');
        const dir = path.join(stagingRoot, input.plan, 'vm-config');
        await resetDir(dir);
        await writeFile(path.join(dir, path.basename(input.vmConfig.name)), input.vmConfig.text);
        return [dir];
      }
    }
  };

  /** Where a local repository lives (resolved); null for a remote one. */
  const localPath = (repository: string): string | null => {
    const local = localRepoPath(repository);
    if (local === null) return null;
    return resolve(local);
  };

  /** A local repository's free bytes, refused below minFreeBytes; null for a remote one. */
  const freeSpace = async (input: PrecheckInput): Promise<number | null> => {
    const local = localPath(input.repository);
    if (local === null) return null;
    const s = await statfs(local);
    const freeBytes = s.bavail * s.bsize;
    if (input.minFreeBytes !== undefined && freeBytes < input.minFreeBytes) {
      throw nonRetryable(
        'RepositoryFull',
        `only ${freeBytes} bytes free at ${input.repository} (need ${input.minFreeBytes})`,
      );
    }
    return freeBytes;
  };

  /** Create a plan's repository on its first run (a local one's parent directory too), unless told not to. */
  const initRepository = async (cli: ResticCli, input: PrecheckInput): Promise<void> => {
    if (!(input.initIfMissing ?? true))
      throw nonRetryable('ResticNoRepository', `no repository at ${input.repository}`);
    const local = localPath(input.repository);
    if (local !== null) await mkdir(path.dirname(local), { recursive: true });
    await withHeartbeat({ stage: 'init' }, () => cli.init()).catch(failOnTool);
  };

  /** The repository exists and opens with the password (`cat config`), created when missing; free space checked. */
  const precheck = async (input: PrecheckInput): Promise<PrecheckResult> => {
    const cli = restic(input);
    let initialised = false;
    if (!(await cli.exists().catch(failOnTool))) {
      await initRepository(cli, input);
      initialised = true;
    }
    return { initialised, freeBytes: await freeSpace(input) };
  };

  /**
   * On a retry (the worker died mid-backup): remove stale locks, then find the snapshot an earlier attempt finished
   * (by the run tag). `missing`: there is no repository yet (the earlier attempt died before creating it).
   */
  const earlierAttempt = async (
    cli: ResticCli,
    input: BackupInput,
  ): Promise<{ unlocked: boolean; missing: boolean; reused: BackupOutcome | null }> => {
    if (attempt() <= 1) return { unlocked: false, missing: false, reused: null };
    try {
      await cli.unlock();
    } catch (err) {
      if (err instanceof ResticNoRepositoryError) return { unlocked: false, missing: true, reused: null };
      return failOnTool(err);
    }
    const done = (await cli.snapshots({ tags: [planTag(input.plan), `run:${input.runTag}`] }).catch(failOnTool)).at(-1);
    if (!done) return { unlocked: true, missing: false, reused: null };
    warn('backup: reusing the snapshot an earlier attempt made', { plan: input.plan, snapshot: done.short_id });
    return {
      unlocked: true,
      missing: false,
      reused: {
        snapshotId: done.short_id,
        filesNew: 0,
        filesChanged: 0,
        filesUnmodified: 0,
        dataAdded: 0,
        bytesProcessed: 0,
        incomplete: false,
        warnings: [],
        reused: true,
        unlocked: true,
        samples: [],
        modelDigests: (done.tags ?? []).filter((t) => t.startsWith('model:')).map((t) => t.slice(6)),
        paths: done.paths,
      },
    };
  };

  /** What a backup sends restic: the staged paths, model digests, sample fingerprints and tags. */
  const prepareBackup = async (
    input: BackupInput,
  ): Promise<{ paths: string[]; modelDigests: string[]; samples: SampleFile[]; tags: string[] }> => {
    const paths = await stage(input);
    const modelDigests: string[] = [];
    if (input.what === 'model-store') for (const p of paths) modelDigests.push(...(await ollamaDigests(p)));
    const samples: SampleFile[] = [];
    const wanted = input.samples ?? 3;
    for (const p of wanted > 0 ? paths : []) {
      for (const f of await listFiles(p)) {
        if (samples.length >= wanted) break;
        const s = await stat(f);
        samples.push({ path: f, sha256: await sha256File(f), bytes: s.size });
      }
    }
    const tags = [
      planTag(input.plan),
      `node:${deps.node.id}`,
      `what:${input.what}`,
      `run:${input.runTag}`,
      ...(input.tags ?? []),
      // Tags cannot hold commas; a model store with many models keeps the first 20 digests as tags.
      ...modelDigests.slice(0, 20).map((d) => `model:${d.replace(/,/g, '_')}`),
    ];
    return { paths, modelDigests, samples, tags };
  };

  /** One `restic backup --json` of what prepareBackup made, heartbeating restic's progress every second. */
  const backUp = async (
    cli: ResticCli,
    input: BackupInput,
    prepared: Awaited<ReturnType<typeof prepareBackup>>,
    unlocked: boolean,
  ): Promise<BackupOutcome> => {
    const { paths, modelDigests, samples, tags } = prepared;
    let last: ResticBackupStatus | null = null;
    heartbeat({ stage: 'backup', percent: 0 });
    const timer = setInterval(() => heartbeat({ stage: 'backup', percent: last?.percent_done ?? 0 }), 1000);
    try {
      const signal = cancellationSignal();
      const r = await cli.backup(paths, {
        tags,
        excludes: PARTIAL_DOWNLOAD_EXCLUDES,
        // Snapshots of one node share a host name so restic picks the right parent whichever machine runs it.
        host: deps.node.id,
        ...(input.limitUploadKiB ? { limitUploadKiB: input.limitUploadKiB } : {}),
        onProgress: (s) => {
          last = s;
        },
        ...(signal ? { signal } : {}),
      });
      const s = r.summary;
      const bytes = activityMetrics();
      bytes.add('resticBytes', { plan: input.plan, kind: 'processed' }, s.total_bytes_processed);
      bytes.add('resticBytes', { plan: input.plan, kind: 'added' }, s.data_added);
      return {
        snapshotId: s.snapshot_id,
        filesNew: s.files_new,
        filesChanged: s.files_changed,
        filesUnmodified: s.files_unmodified,
        dataAdded: s.data_added,
        bytesProcessed: s.total_bytes_processed,
        incomplete: r.incomplete,
        warnings: r.warnings,
        reused: false,
        unlocked,
        samples,
        modelDigests,
        paths,
      };
    } finally {
      clearInterval(timer);
    }
  };

  /** `restic forget --keep-* --prune` on the plan's snapshots (tag plan:<id>); an empty policy runs nothing. */
  const forget = async (
    input: RepoInput & { retention: KeepPolicy },
  ): Promise<{ kept: string[]; removed: string[] }> => {
    if (isEmptyPolicy(input.retention)) return { kept: [], removed: [] };
    const cli = restic(input);
    const groups = await withHeartbeat({ stage: 'forget' }, () =>
      cli.forget(input.retention, { tags: [planTag(input.plan)], prune: true }),
    ).catch(async (err: unknown) => {
      // A stale exclusive lock from a killed run blocks prune; remove it and let the retry go on.
      if (err instanceof ToolError && /locked|lock/i.test(err.result.stderr)) await cli.unlock().catch(() => undefined);
      return failOnTool(err);
    });
    return {
      kept: groups.flatMap((g) => (g.keep ?? []).map((s) => s.short_id)),
      removed: groups.flatMap((g) => (g.remove ?? []).map((s) => s.short_id)),
    };
  };

  /** `restic check --read-data-subset`: a damaged repository is ok=false with restic's words, not a throw. */
  const check = (input: RepoInput & { readDataSubset?: string }, details: unknown = { stage: 'check' }) => {
    const cli = restic(input);
    const signal = cancellationSignal();
    return withHeartbeat(details, () => cli.check(input.readDataSubset, signal)).catch(failOnTool);
  };

  /** The one-operation activities, each timed as a whole (resticSnapshots and resticStats are not). */
  const single = timedOperations({
    /**
     * Pre-check a plan's repository: reachable and opened with the password, created on first use, and (for a
     * local repository) enough free space. Idempotent: a second run finds the repository and creates nothing.
     * Plan runs since patch backup-two-node-activities do this inside resticPrecheckAndBackup.
     */
    resticPrecheck: precheck,

    /**
     * Back up one plan with `restic backup --json`, heartbeating restic's progress. Resumable: a retry (the worker
     * died mid-backup) first removes stale locks with `restic unlock`, then reuses the snapshot an earlier attempt
     * finished (found by the run tag) or backs up again; restic's deduplication makes the second pass cheap.
     */
    async resticBackup(input: BackupInput): Promise<BackupOutcome> {
      const cli = restic(input);
      const earlier = await earlierAttempt(cli, input);
      if (earlier.reused) return earlier.reused;
      return backUp(cli, input, await prepareBackup(input), earlier.unlocked).catch(failOnTool);
    },

    /**
     * Apply the plan's retention (`restic forget --keep-* --prune`) to its snapshots only (tag plan:<id>). An empty
     * policy keeps everything and runs nothing. Idempotent: a second run forgets nothing more.
     */
    resticForget: forget,

    /** `restic check --read-data-subset`: a damaged repository comes back as ok=false with restic's words. */
    resticCheck: (input: RepoInput & { readDataSubset?: string }) => check(input),

    /**
     * Test restore: restore the sample files of a snapshot into a temporary directory and compare their sha256
     * with the fingerprints taken at backup time.
     */
    async resticTestRestore(
      input: RepoInput & { snapshotId: string; samples: SampleFile[] },
    ): Promise<{ ok: boolean; compared: number; mismatches: string[] }> {
      const cli = restic(input);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'gpuops-testrestore-'));
      try {
        await withHeartbeat({ stage: 'test-restore' }, () =>
          cli.restore(input.snapshotId, dir, { includes: input.samples.map((s) => s.path), verify: true }),
        ).catch(failOnTool);
        const mismatches: string[] = [];
        for (const s of input.samples) {
          const restored = path.join(dir, s.path);
          const h = await sha256File(restored).catch(() => 'missing');
          if (h !== s.sha256) mismatches.push(`${s.path}: ${h === 'missing' ? 'not restored' : 'checksum differs'}`);
        }
        return { ok: mismatches.length === 0, compared: input.samples.length, mismatches };
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },

    /**
     * Restore a snapshot ("latest" of the plan, or an id) into `target`, with restic's content verification, and
     * fingerprint what was restored. Refuses a non-empty target unless `force`.
     */
    async resticRestore(
      input: RepoInput & { snapshot: string; target: string; force?: boolean },
    ): Promise<{ snapshotId: string; files: number; bytes: number; sha256: string }> {
      const cli = restic(input);
      const target = resolve(input.target);
      const existing = await readdir(target).catch(() => [] as string[]);
      if (existing.length > 0 && !input.force) {
        throw nonRetryable('TargetNotEmpty', `${target} is not empty; restore with force to overwrite`);
      }
      const snaps = await cli.snapshots({ tags: [planTag(input.plan)] }).catch(failOnTool);
      const snap =
        input.snapshot === 'latest'
          ? snaps.at(-1)
          : snaps.find((s) => s.id.startsWith(input.snapshot) || s.short_id === input.snapshot);
      if (!snap) throw nonRetryable('SnapshotNotFound', `no snapshot "${input.snapshot}" of plan ${input.plan}`);
      await mkdir(target, { recursive: true });
      const signal = cancellationSignal();
      await withHeartbeat({ stage: 'restore', snapshot: snap.short_id }, () =>
        cli.restore(snap.id, target, { verify: true, ...(signal ? { signal } : {}) }),
      ).catch(failOnTool);
      // One digest over every restored file (path + content) lets an operator compare two restores.
      const all = createHash('sha256');
      let bytes = 0;
      const files = await listFiles(target);
      for (const f of files) {
        all.update(`${path.relative(target, f)}\0${await sha256File(f)}\n`);
        bytes += (await stat(f)).size;
      }
      activityMetrics().add('resticBytes', { plan: input.plan, kind: 'restored' }, bytes);
      return { snapshotId: snap.short_id, files: files.length, bytes, sha256: all.digest('hex') };
    },

    /** The plan's snapshots, oldest first. */
    async resticSnapshots(input: RepoInput): Promise<ResticSnapshot[]> {
      return restic(input)
        .snapshots({ tags: [planTag(input.plan)] })
        .catch(failOnTool);
    },

    /** Repository size (raw data). */
    async resticStats(input: RepoInput): Promise<ResticStats> {
      return restic(input).stats().catch(failOnTool);
    },
  });

  /** In a plan's backup, a repository that is missing, refuses the password or has no room fails its pre-check. */
  const backupStepOf = (failure: unknown, step: BackupStepName): BackupStepName =>
    failure instanceof ApplicationFailure &&
    ['ResticNoRepository', 'ResticWrongPassword', 'RepositoryFull'].includes(failure.type ?? '')
      ? 'precheck'
      : step;

  return {
    ...single,
    /**
     * A plan run's pre-check and backup in one node activity (runs since patch backup-two-node-activities): every
     * restic invocation opens the repository (a key derivation, about half a second), and the pre-check's own
     * `cat config` was one open more than the backup needs. `restic backup` says itself whether the repository is
     * there and opens with the password; a local repository whose directory is missing is created first, a remote
     * one on restic's "no repository" answer, and the backup then runs. Free space is checked before the backup.
     * A retry unlocks stale locks and reuses the snapshot an earlier attempt finished, as resticBackup does. A
     * failure names its step (precheck or backup) in its details.
     */
    async resticPrecheckAndBackup(input: PrecheckAndBackupInput): Promise<PrecheckAndBackupResult> {
      const cli = restic(input);
      let step: BackupStepName = 'precheck';
      let initialised = false;
      // gpuops_restic_duration_seconds{operation="backup"} times the whole activity, as it timed resticBackup (a
      // first run's init included); a failure is counted there only when it is the backup's, not the pre-check's.
      const started = performance.now();
      const observe = (outcome: string): void =>
        activityMetrics().observe(
          'resticDuration',
          { plan: input.plan, operation: 'backup', outcome },
          (performance.now() - started) / 1000,
        );
      try {
        const earlier = await earlierAttempt(cli, input);
        if (earlier.reused) {
          observe('ok');
          // The snapshot is there: report the free space, refuse nothing.
          const reusedFree = await freeSpace({ ...input, minFreeBytes: undefined });
          return { precheck: { initialised: false, freeBytes: reusedFree }, backup: earlier.reused };
        }
        const local = localPath(input.repository);
        if (earlier.missing || (local !== null && !(await stat(local).catch(() => null)))) {
          await initRepository(cli, input);
          initialised = true;
        }
        let freeBytes = await freeSpace(input);
        step = 'backup';
        // Staging and fingerprinting sample files can take a while on big model stores: say which stage it is.
        heartbeat({ stage: 'backup', percent: 0 });
        const prepared = await prepareBackup(input);
        let backup: BackupOutcome;
        try {
          backup = await backUp(cli, input, prepared, earlier.unlocked);
        } catch (err) {
          if (!(err instanceof ResticNoRepositoryError) || initialised) throw err;
          step = 'precheck';
          await initRepository(cli, input);
          initialised = true;
          freeBytes = await freeSpace(input);
          step = 'backup';
          backup = await backUp(cli, input, prepared, earlier.unlocked);
        }
        observe('ok');
        return { precheck: { initialised, freeBytes }, backup };
      } catch (err) {
        const failure = toolFailure(err);
        const failedStep = backupStepOf(failure, step);
        if (failedStep === 'backup') observe('failed');
        throw stepFailure({ step: failedStep, initialised }, failure);
      }
    },

    /**
     * A plan run's retention and check in one node activity (runs since patch backup-two-node-activities):
     * `restic forget --prune` on the plan's snapshots (nothing for an empty policy), then `restic check
     * --read-data-subset`. The check heartbeats the retention's result, so a retry after a killed worker goes
     * straight to the check. A failure names its step (forget or check) in its details; a damaged repository is
     * check.ok = false, not a failure.
     */
    async resticForgetAndCheck(input: ForgetAndCheckInput): Promise<ForgetAndCheckResult> {
      const earlier = lastHeartbeatDetails<{ retention?: { kept: string[]; removed: string[] } }>();
      let retention: { kept: string[]; removed: string[] } | undefined;
      try {
        const retentionResumed = Array.isArray(earlier?.retention?.kept);
        retention =
          earlier?.retention && retentionResumed
            ? earlier.retention
            : await timedRestic(input.plan, 'forget', () => forget(input));
        const kept = retention;
        const result = await timedRestic(input.plan, 'check', () => check(input, { stage: 'check', retention: kept }));
        return { retention, check: result, retentionResumed };
      } catch (err) {
        const failure = toolFailure(err);
        throw stepFailure(retention ? { step: 'check', retention } : { step: 'forget' }, failure);
      }
    },
  };
}

/** The node-side backup activity object. */
export type BackupActivities = ReturnType<typeof createBackupActivities>;
