/**
 * Following running workflows with the gpuops command, a real process as an operator runs it, against the run-wide
 * dev server, a control worker of this file's own queue, a real router and a sandbox node with its node worker:
 * `gpuops follow` attached to a deployment that waits for approval, the approve command it prints, the pull's
 * progress lines, `gpuops recover --follow` joining a running recovery, and the errors for following nothing.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { parseConfig } from '../src/config/load';
import { backupInputFor } from '../src/temporal/schedules';
import { getDeploymentStatusQuery, nodeTaskQueue, workflowIds, type DeploymentStatus } from '../src/contracts';
import type { RouterHandle } from '../src/router';
import { injectFault } from '../src/sandbox/faults';
import { SandboxStore, defaultLibrary } from '../src/sandbox/state';
import type { deployModel } from '../workflows/deploy';
import type { runBackup } from '../workflows/backup';
import { routedAlias } from './production/fixtures/deployments';
import type { recoverNode } from '../workflows/recovery';
import {
  FAST_RECOVERY,
  controlWorker,
  openTestEnv,
  startTestRouter,
  startTestSandbox,
  uniqueId,
  waitForPoller,
  type TestEnv,
  type TestSandbox,
} from './helpers/env';
import { writeTestSecret } from './helpers/secrets';

const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');
const PLAN = 'follow-models';

let env: TestEnv;
let sbx: TestSandbox;
let router: RouterHandle;

beforeAll(async () => {
  env = await openTestEnv();
  const r = await startTestRouter();
  router = r.router;
  sbx = await startTestSandbox({ extra: r.config });
  // One backup plan: a small model store in a restic repository of the sandbox's temp dir.
  const store = path.join(sbx.dir, 'store');
  mkdirSync(store);
  writeFileSync(path.join(store, 'weights.bin'), randomBytes(256 * 1024));
  writeTestSecret(path.join(sbx.dir, 'pw'), 'restic-password');
  const raw = parse(readFileSync(sbx.loaded.path, 'utf8')) as Record<string, unknown>;
  raw.backups = [
    {
      id: PLAN,
      node: sbx.nodeId,
      what: 'model-store',
      paths: [store],
      repository: path.join(sbx.dir, 'repo'),
      passwordFile: path.join(sbx.dir, 'pw'),
      schedule: { cron: '0 3 1 1 *' },
      rpo: '1h',
    },
  ];
  writeFileSync(sbx.loaded.path, stringify(raw));
  sbx.loaded = { path: sbx.loaded.path, config: parseConfig(stringify(raw), sbx.loaded.path) };
  await waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
}, 60_000);

afterAll(async () => {
  await router?.close();
  await sbx?.stop();
  await env?.close();
});

/** deployModel of `alias` on the sandbox's Ollama, on this file's control queue (no worker runs it until a test says). */
function startDeployment(alias: string, input: Omit<Parameters<typeof deployModel>[0], 'node' | 'alias' | 'engine'>) {
  return env.client.workflow.start<typeof deployModel>('deployModel', {
    taskQueue: env.controlQueue,
    workflowId: workflowIds.deploy(sbx.nodeId, alias),
    workflowIdConflictPolicy: 'FAIL',
    args: [{ node: sbx.nodeId, alias, engine: 'ollama', ...input }],
  });
}

interface Cli {
  /** What it printed on stdout so far. */
  out(): string;
  /** Resolves when stdout matches `re` (with the match); rejects when the process ends first or after `ms`. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  exited: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/** The gpuops command as a child process with piped (non-TTY) stdout, as CI runs it. */
function gpuops(args: string[]): Cli {
  const p = spawn(GPUOPS, args, { env: { ...process.env, GPUOPS_CONFIG: sbx.loaded.path } });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    p.on('close', (code) => resolve({ code, stdout, stderr })),
  );
  let ended = false;
  void exited.then(() => (ended = true));
  return {
    out: () => stdout,
    exited,
    async waitFor(re, ms = 60_000) {
      const until = Date.now() + ms;
      for (;;) {
        const m = stdout.match(re);
        if (m) return m;
        if (ended || Date.now() > until) {
          throw new Error(`gpuops ${args.join(' ')}: no ${String(re)} in stdout:\n${stdout}\nstderr:\n${stderr}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    },
  };
}

test('`gpuops follow` attached to a medium-risk deployment prints the pull progress, what it waits for until when and the exact approve command; approving with it ends the follow promoted', async () => {
  const alias = routedAlias(router, sbx);
  // About 5 s for the 380 MiB model, heartbeated every 1.6 s (0.8 × the 2 s heartbeat timeout): several progress lines.
  SandboxStore.forNode(sbx.loaded.config.sandbox.stateDir, sbx.nodeId).update((st) => {
    st.sim.bytesPerSec = 80 * 1024 ** 2;
  });
  const h = await startDeployment(alias, {
    model: 'qwen2.5:0.5b-lax',
    expectedDigest: defaultLibrary()['qwen2.5:0.5b-lax']?.digest ?? '',
    requestedBy: 'jest',
    pullHeartbeatTimeout: '2s',
    policy: {
      canarySteps: [50],
      stepDuration: '2s',
      analysisInterval: '1s',
      minSamples: 10,
      rollbackWindow: '1s',
      approvalTimeout: '10m',
    },
  });
  // The printed commands steer this run only: pasted after another deployment of the alias began, they are refused.
  const guard = `--expect-model qwen2.5:0.5b-lax --expect-run-id ${h.firstExecutionRunId}`;
  // Attached before any worker runs it, so nothing is missed; a second follower streams JSON Lines.
  const text = gpuops(['follow', alias, '--node', sbx.nodeId]);
  const json = gpuops(['--json', 'follow', alias, '--node', sbx.nodeId]);
  await text.waitFor(
    new RegExp(
      `^following deploy:\\S+ run ${h.firstExecutionRunId} \\(Ctrl-C stops following; the deployment goes on\\)$`,
      'm',
    ),
  );
  await json.waitFor(/^\{"event":"following"/m);

  const control = await controlWorker(env, sbx.loaded);
  const { approve, status } = await control.runUntil(async () => {
    const [, until] = await text.waitFor(/^ {2}until (\S+) \(\S+ \S+ from now\); then it rolls back$/m);
    const st = await h.query(getDeploymentStatusQuery);
    expect(st.stage).toBe('awaiting-approval');
    // The deadline printed is the approval timeout from the moment the deployment began to wait.
    const waitedFrom = st.timings.stages.find((x) => x.stage === 'awaiting-approval')?.at ?? '';
    expect(until).toBe(new Date(Date.parse(waitedFrom) + 10 * 60_000).toISOString());
    expect(st.waitingUntil).toBe(until);
    expect(text.out()).toMatch(/^ {2}waiting for approve: risk medium \(.*jailbreak probe jailbreak-\S+ failed/m);
    expect(text.out()).toContain(`  stop:      gpuops rollback ${alias} --node ${sbx.nodeId} ${guard}\n`);
    const [, command] = await text.waitFor(/^ {2}continue: {2}(gpuops approve .*)$/m);
    expect(command).toBe(`gpuops approve ${alias} --node ${sbx.nodeId} ${guard}`);
    // A second deploy of the alias is refused, and says how to attach instead.
    const second = await gpuops(['deploy', alias, 'qwen2.5:0.5b-good', '--node', sbx.nodeId]).exited;
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`(follow it with gpuops follow ${alias} --node ${sbx.nodeId}, end it with`);
    // Run what it printed (the words need no quoting here).
    const approved = await gpuops([...(command ?? '').split(' ').slice(1), '--by', 'alice']).exited;
    const ended = await text.exited;
    return { approve: approved, status: ended };
  });

  expect(approve.code).toBe(0);
  expect(approve.stdout).toMatch(/^approve accepted: deploy:\S+ stage=awaiting-approval risk=medium/);
  // The follow ended with the outcome, exit 0 for promoted, and said so last, with the deployment page's path.
  expect(status.code).toBe(0);
  const [finished, report] = status.stdout.trimEnd().split('\n').slice(-2);
  expect(finished).toBe('finished: promoted');
  expect(report).toMatch(/^report: \/.*\/deployment\.html$/);
  expect(existsSync(report?.slice('report: '.length) ?? '')).toBe(true);
  // One plain line per move of the pull (stdout is a pipe, not a terminal): bytes, then rate and ETA.
  const pulls = status.stdout.split('\n').filter((l) => l.startsWith('pull '));
  expect(pulls.length).toBeGreaterThanOrEqual(2);
  expect(pulls).toContainEqual(
    expect.stringMatching(
      /^pull pulling [0-9a-f]{12}: \d+\.\d% {2}\d+\.\d MiB \/ 379\.4 MiB {2}\d+\.\d MiB\/s {2}ETA \d+s$/,
    ),
  );
  expect(status.stdout).not.toContain('\r'); // no bar redrawn in place off a terminal
  // The stages in order, each once.
  const stages = [...status.stdout.matchAll(/^deploy:\S+ stage=(\S+)/gm)].map((m) => m[1]);
  expect(stages).toEqual(expect.arrayContaining(['pulling', 'awaiting-approval', 'promoted']));
  expect(stages.indexOf('awaiting-approval')).toBeLessThan(stages.indexOf('promoted'));

  // --json: every line one JSON object; the waiting status carries the commands, the last line is the record.
  const j = await json.exited;
  expect(j.code).toBe(0);
  const events = j.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const waiting = events.find((e) => e.event === 'status' && e.stage === 'awaiting-approval');
  expect(waiting?.waiting).toMatchObject({
    for: 'approve',
    until: status.stdout.match(/^ {2}until (\S+)/m)?.[1],
    commands: [
      { what: 'continue', command: `gpuops approve ${alias} --node ${sbx.nodeId} ${guard}` },
      { what: 'stop', command: `gpuops rollback ${alias} --node ${sbx.nodeId} ${guard}` },
    ],
  });
  expect(events.some((e) => e.event === 'progress' && e.unit === 'bytes')).toBe(true);
  const record = events.at(-1) as unknown as DeploymentStatus;
  expect(record).toMatchObject({ outcome: 'promoted', approvedBy: 'alice', waitingUntil: null });

  // Following it now that it has ended: a clear error, exit 1.
  const after = await gpuops(['follow', alias, '--node', sbx.nodeId]).exited;
  expect(after.code).toBe(1);
  expect(after.stderr).toMatch(
    new RegExp(
      `^gpuops: no deployment of ${alias} on ${sbx.nodeId} is running: deploy:\\S+ ended completed at \\S+Z\\n$`,
    ),
  );
}, 120_000);

test('`gpuops follow` exits 1 when the deployment does not promote, after the record and the reason', async () => {
  const alias = routedAlias(router, sbx);
  const pinned = `sha256:${'0'.repeat(64)}`;
  // A pin that the pulled model cannot match: the pre-flight rolls it back.
  const h = await startDeployment(alias, { model: 'qwen2.5:0.5b-good', expectedDigest: pinned, requestedBy: 'jest' });
  const text = gpuops(['follow', alias, '--node', sbx.nodeId]);
  await text.waitFor(/^following deploy:\S+ /m);
  const control = await controlWorker(env, sbx.loaded);
  const ended = await control.runUntil(async () => {
    await h.result();
    return text.exited;
  });
  expect(ended.code).toBe(1);
  expect(ended.stdout).toMatch(new RegExp(`^finished: rolled-back: digest \\S+ is not the pinned ${pinned}$`, 'm'));
  expect(ended.stderr).toContain(`rolled-back: digest`);
}, 120_000);

test('`gpuops recover --follow` joins the running recovery and prints the diagnosis and each rung until the incident record', async () => {
  injectFault(sbx.sim.store, 'engine-hang');
  await env.client.workflow.start<typeof recoverNode>('recoverNode', {
    taskQueue: env.controlQueue,
    workflowId: workflowIds.recover(sbx.nodeId),
    args: [{ node: sbx.nodeId, reason: 'test', trigger: { source: 'cli', detail: 'jest' }, ...FAST_RECOVERY }],
  });
  const cli = gpuops(['recover', sbx.nodeId, '--follow']);
  await cli.waitFor(/^following recover:\S+/m);
  const control = await controlWorker(env, sbx.loaded);
  const r = await control.runUntil(cli.exited);
  expect(r.code).toBe(0);
  const lines = r.stdout.split('\n');
  const from = (p: string): number => lines.findIndex((l) => l.startsWith(p));
  expect(lines).toContainEqual(expect.stringMatching(/^diagnosis: engine-hung ollama: .* → restart-container$/));
  expect(lines).toContain('rung 1: restart-container started');
  expect(lines).toContainEqual(
    expect.stringMatching(
      /^rung 1: restart-container healthy: verified healthy \(docker restart ollama; undrained .*\)$/,
    ),
  );
  expect(from('diagnosis:')).toBeLessThan(from('rung 1: restart-container started'));
  expect(from('rung 1: restart-container started')).toBeLessThan(from('rung 1: restart-container healthy'));
  // The record follows: the incident table.
  expect(r.stdout).toMatch(new RegExp(`^Incident on ${sbx.nodeId}: RECOVERED`, 'm'));
}, 90_000);

test('`gpuops backup follow` attaches to a running backup of the plan and prints each step, then the record', async () => {
  const plan = sbx.loaded.config.backups[0];
  if (!plan) throw new Error('no plan');
  await env.client.workflow.start<typeof runBackup>('runBackup', {
    taskQueue: env.controlQueue,
    workflowId: `${workflowIds.backupSchedule(PLAN)}:manual-${uniqueId('jest')}`,
    args: [{ ...backupInputFor(sbx.loaded.config, plan), timings: { pickupTimeout: '20s', heartbeatTimeout: '6s' } }],
  });
  const cli = gpuops(['backup', 'follow', PLAN]);
  await cli.waitFor(/^following backup:follow-models:manual-\S+ \(Ctrl-C stops following; the backup goes on\)$/m);
  const control = await controlWorker(env, sbx.loaded);
  const r = await control.runUntil(cli.exited);
  expect(r.code).toBe(0);
  const lines = r.stdout.trimEnd().split('\n');
  const steps = lines.filter((l) => /^(ok|FAILED) /.test(l)).map((l) => l.split(':')[0]);
  expect(steps).toEqual(['ok precheck', 'ok backup', 'ok forget', 'ok check']);
  expect(lines.at(-1)).toMatch(/^follow-models: ok, snapshot [0-9a-f]{8}, \d+ ms$/);
  // None running now: a clear error naming the plan.
  const none = await gpuops(['backup', 'follow', PLAN]).exited;
  expect(none.code).toBe(1);
  expect(none.stderr).toBe(
    'gpuops: no backup of plan follow-models is running (start one with gpuops backup run follow-models --follow)\n',
  );
}, 90_000);

test('following nothing is a clear error (exit 1): no deployment, no recovery; the follow command validates --node', async () => {
  const none = await gpuops(['follow', 'no-such-alias', '--node', sbx.nodeId]).exited;
  expect(none.code).toBe(1);
  expect(none.stderr).toBe(
    `gpuops: no deployment of no-such-alias on ${sbx.nodeId} is running (no workflow deploy:${sbx.nodeId}:no-such-alias)\n`,
  );
  const j = await gpuops(['--json', 'recovery', 'follow', sbx.nodeId]).exited;
  expect(j.code).toBe(1);
  expect(j.stdout).toBe('');
  expect(JSON.parse(j.stderr)).toEqual({
    error: expect.stringMatching(
      new RegExp(
        `^no recovery of ${sbx.nodeId} is running(: recover:\\S+ ended completed at \\S+| \\(no workflow .*\\))$`,
      ),
    ) as unknown,
    exitCode: 1,
  });
  const node = await gpuops(['follow', 'x', '--node', 'nowhere']).exited;
  expect(node.code).toBe(2);
  expect(node.stderr).toContain('nowhere');
}, 60_000);
