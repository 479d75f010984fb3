/**
 * Every gpuops command that starts, signals or updates a workflow checks what it would send with the workflow's own
 * schema (src/contracts) before it connects: a bad input exits 2 with the field and the rule, and nothing starts.
 * Temporal is pointed at a closed port, so a command that connected first would exit 1 "cannot reach Temporal"
 * instead. No server needed. The table runs the command in process (main(), its stderr captured); the case
 * runs as a real process too.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { main } from '../src/cli/main';
import { watchInputs } from '../src/cli/recovery';
import { inspectInputs } from '../src/cli/status';
import { parseConfig } from '../src/config/load';
import { ValidationError } from '../src/domain/validation';
import { deployPolicyFor } from '../src/config/policy';
import { DeployModelInput } from '../src/contracts';
import { desiredSchedule } from '../src/temporal/schedules';

const run = promisify(execFile);
const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');
const CREDENTIALS = 'rest:https://backup:s3cret@backup.example/repo';

// The sandbox example, its first backup plan with credentials in the repository URL: gpuops.yaml allows any
// repository string, runBackup's input does not (they would land in workflow history).
const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-cli-inputs-'));
const raw = parse(readFileSync(path.resolve(__dirname, '..', 'examples', 'sandbox.yaml'), 'utf8')) as {
  backups: { id: string; repository: string }[];
};
const plan = raw.backups[0]?.id ?? '';
raw.backups = raw.backups.map((b, i) => (i === 0 ? { ...b, repository: CREDENTIALS } : b));
const configPath = path.join(dir, 'gpuops.yaml');
writeFileSync(configPath, stringify(raw));

const ENV = { GPUOPS_CONFIG: configPath, TEMPORAL_ADDRESS: '127.0.0.1:1', USER: 'jest' };

/** The gpuops command as a real process, with --json. */
async function gpuops(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(GPUOPS, ['--json', ...args], { env: { ...process.env, ...ENV }, timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** The gpuops command in this process (main(), as bin/gpuops runs it), with --json; what it wrote. */
async function inProcess(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const saved = { ...process.env };
  Object.assign(process.env, ENV);
  const out = { stdout: '', stderr: '' };
  const capture = (k: 'stdout' | 'stderr') =>
    jest.spyOn(process[k], 'write').mockImplementation((chunk: string | Uint8Array) => {
      out[k] += chunk.toString();
      return true;
    });
  const spies = [capture('stdout'), capture('stderr')];
  try {
    const code = await main(['node', 'gpuops', '--json', ...args]);
    return { code, ...out };
  } finally {
    spies.forEach((s) => s.mockRestore());
    process.env = saved;
  }
}

const long = (n: number): string => 'x'.repeat(n);
const repoProblem = 'plan.repository: must not embed credentials (user:password@); use the backend credential files';

// The rules as the workflows' schemas word them.
const MODEL = 'must be a model reference (name:tag, org/repo or a .gguf)';
const MAX = (n: number): string => `Too big: expected string to have <=${n} characters`;
const DIGEST = 'must be a sha256 digest (64 hex)';
const node = ['--node', 'sandbox-1'];

test.each([
  {
    command: ['deploy', 'x;y', 'qwen$(id)', ...node],
    error: 'invalid deployModel input',
    problems: ['alias: must be a router alias name', `model: ${MODEL}`],
  },
  {
    command: ['deploy', 'chat', 'qwen2:0.5b', ...node, '--digest', 'abc', '--revision', '-rf'],
    error: 'invalid deployModel input',
    problems: ['revision: must be a git revision (commit, branch or tag)', `expectedDigest: ${DIGEST}`],
  },
  {
    command: ['promote', 'chat', ...node, '--by', '  ', '--expect-model', 'qwen$(id)'],
    error: 'invalid promote input',
    problems: ['by: must say who', `expect.model: ${MODEL}`],
  },
  {
    command: ['approve', 'chat', ...node, '--reason', long(2001), '--expect-run-id', 'run-1'],
    error: 'invalid approve input',
    problems: [`comment: ${MAX(2000)}`, 'expect.runId: must be a workflow run ID (a UUID)'],
  },
  {
    command: ['rollback', 'chat', ...node, '--reason', '   ', '--expect-digest', 'sha256:zz'],
    error: 'invalid rollback input',
    problems: ['reason: must say why', `expect.digest: ${DIGEST}`],
  },
  {
    command: ['promote', 'x;y', ...node],
    error: 'invalid arguments',
    problems: ['alias: must be a router alias name'],
  },
  {
    command: ['recover', 'sandbox-1', '--reason', long(2001)],
    error: 'invalid recoverNode input',
    problems: [`reason: ${MAX(2000)}`],
  },
  {
    command: ['maintenance', 'sandbox-1', '--reason', long(501), '--for', '30m'],
    error: 'invalid maintenance input',
    problems: [`reason: ${MAX(500)}`],
  },
  { command: ['backup', 'run', plan], error: `invalid runBackup input for plan ${plan}`, problems: [repoProblem] },
  {
    command: ['backup', 'restore', plan, '--target', path.join(dir, 'restore')],
    error: `invalid restoreBackup input for plan ${plan}`,
    problems: [repoProblem],
  },
  { command: ['backup', 'status'], error: `invalid backupReport input for plan ${plan}`, problems: [repoProblem] },
  { command: ['schedules', 'sync'], error: `invalid runBackup input for plan ${plan}`, problems: [repoProblem] },
  // status and watch build inspectNode / watchNode inputs from gpuops.yaml alone (their schemas' refusals are tested
  // on the functions below, since gpuops.yaml's own rules are the same): a node argument is checked before connecting.
  {
    command: ['status', 'nope'],
    error: 'invalid argument',
    problems: ['node: must be one of sandbox-1, sandbox-2 (got "nope")'],
  },
  {
    command: ['watch', 'nope'],
    error: 'invalid argument',
    problems: ['node: must be one of sandbox-1, sandbox-2 (got "nope")'],
  },
  {
    command: ['schedules', 'trigger', plan],
    error: `invalid runBackup input for plan ${plan}`,
    problems: [repoProblem],
  },
])(
  'gpuops $command.0 $command.1 with an input its workflow refuses exits 2 naming the field and the rule, without connecting',
  async ({ command, error, problems }) => {
    const r = await inProcess(command);
    expect(r.stdout).toBe('');
    expect(JSON.parse(r.stderr)).toEqual({ error, problems, exitCode: 2 });
    expect(r.code).toBe(2);
  },
  30_000,
);

test("`gpuops deploy 'x;y' 'qwen$(id)'` as a real process: exit 2 naming alias and model, no connection attempted", async () => {
  const r = await gpuops(['deploy', 'x;y', 'qwen$(id)', '--node', 'sandbox-1']);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(JSON.parse(r.stderr)).toEqual({
    error: 'invalid deployModel input',
    problems: [
      'alias: must be a router alias name',
      'model: must be a model reference (name:tag, org/repo or a .gguf)',
    ],
    exitCode: 2,
  });
}, 60_000);

test('`gpuops up` with a plan runBackup refuses exits 2 naming the field and the rule, having started nothing', async () => {
  // No TEMPORAL_ADDRESS: a gpuops up that went ahead would start the dev server and the sandbox nodes, their SQLite
  // file and state directory in ../.gpuops from the config (here: inside this test's own directory).
  const upConfig = path.join(dir, 'up', 'gpuops.yaml');
  mkdirSync(path.dirname(upConfig));
  writeFileSync(upConfig, stringify(raw));
  const { TEMPORAL_ADDRESS: _unused, ...env } = { ...process.env, ...ENV, GPUOPS_CONFIG: upConfig };
  const r = await run(GPUOPS, ['--json', 'up'], { env, timeout: 60_000 }).then(
    (x) => ({ code: 0, ...x }),
    (err: { code?: number; stdout?: string; stderr?: string }) => ({
      code: err.code,
      stdout: err.stdout ?? '',
      stderr: err.stderr ?? '',
    }),
  );
  expect(r.stdout).toBe('');
  expect(JSON.parse(r.stderr)).toEqual({
    error: `invalid runBackup input for plan ${plan}`,
    problems: [repoProblem],
    exitCode: 2,
  });
  expect(r.code).toBe(2);
  expect(existsSync(path.join(dir, '.gpuops'))).toBe(false);
}, 60_000);

test('a backup schedule is never built from an input runBackup refuses, whoever syncs (defence in depth)', () => {
  const config = parseConfig(readFileSync(configPath, 'utf8'), configPath);
  const [bad, good] = config.backups;
  if (!bad || !good) throw new Error('the sandbox example has two backup plans');
  expect(() => desiredSchedule(config, bad)).toThrow(
    expect.objectContaining({ what: `runBackup input for plan ${plan}`, problems: [repoProblem] }) as Error,
  );
  expect(desiredSchedule(config, good).options.scheduleId).toBe(`backup:${good.id}`);
});

test('a command with good input does connect (the closed port): the table above is not refusing everything', async () => {
  const r = await inProcess(['deploy', 'chat', 'qwen2:0.5b', '--node', 'sandbox-1']);
  expect(r.code).toBe(1);
  expect(JSON.parse(r.stderr)).toMatchObject({
    error: expect.stringMatching(/^cannot reach Temporal at 127\.0\.0\.1:1 /),
  });
}, 30_000);

test('a secret in a refused input is not echoed: the problem names the field and the rule only', async () => {
  const r = await inProcess(['backup', 'run', plan]);
  expect(r.code).toBe(2);
  expect(r.stderr).not.toContain('s3cret');
}, 30_000);

test('watchNode and inspectNode inputs (built from gpuops.yaml alone) go through their workflows’ schemas too', () => {
  const config = parseConfig(readFileSync(configPath, 'utf8'), configPath);
  // Past gpuops.yaml's own checks (as a config object built in code could be): watchNode's schema still refuses it.
  const bad = { ...config, recovery: { ...config.recovery, probeInterval: 'soon', failureThreshold: 0 } };
  expect(() => watchInputs(bad, ['sandbox-1'])).toThrow(ValidationError);
  expect(() => watchInputs(bad, ['sandbox-1'])).toThrow(
    expect.objectContaining({
      what: 'watchNode input for sandbox-1',
      problems: [
        'probeInterval: must be a duration such as 500ms, 30s, 5m, 1h or 7d',
        'failureThreshold: Too small: expected number to be >=1',
      ],
    }) as Error,
  );
  expect(watchInputs(config).map((i) => i.node)).toEqual(config.nodes.map((n) => n.id));
  const badIds = { ...config, nodes: config.nodes.map((n) => ({ ...n, id: `${n.id} ` })) };
  expect(() => inspectInputs(badIds, {})).toThrow(
    expect.objectContaining({ problems: ['node: must be a node id from gpuops.yaml'] }) as Error,
  );
  expect(inspectInputs(config, { node: 'sandbox-1', generate: false })).toEqual([
    { node: 'sandbox-1', generate: false, expectedGpus: config.nodes[0]?.gpus.length },
  ]);
});

test('`gpuops config policy <alias>` prints the policy gpuops deploy sends, as a valid deployModel policy; bad names exit 2', async () => {
  const config = parseConfig(readFileSync(configPath, 'utf8'), configPath);
  const r = await inProcess(['config', 'policy', 'chat']);
  expect(r.code).toBe(0);
  const printed = JSON.parse(r.stdout) as unknown;
  expect(printed).toEqual(deployPolicyFor(config, 'chat'));
  // The sandbox's default policy, not the workflow's built-in defaults.
  expect(printed).toMatchObject({ canarySteps: config.policies.default?.canarySteps });
  expect(() =>
    DeployModelInput.parse({ node: 'n', alias: 'chat', engine: 'e', model: 'm', policy: printed }),
  ).not.toThrow();
  const unknown = await inProcess(['config', 'policy', 'chat', '--policy', 'nope']);
  expect([unknown.code, unknown.stderr]).toEqual([
    2,
    expect.stringContaining('--policy: must be a policy in gpuops.yaml'),
  ]);
  const badAlias = await inProcess(['config', 'policy', 'x;y']);
  expect([badAlias.code, badAlias.stderr]).toEqual([2, expect.stringContaining('alias: must be a router alias name')]);
});
