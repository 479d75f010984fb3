/**
 * The CI example deploy/ci/deploy-and-promote.sh, run by POSIX sh with the real `temporal` CLI against the run-wide
 * dev server, a control worker on this file's queue, a real router and a sandbox node with its node worker; and the
 * Updates' `expect` guard through `gpuops approve|promote|rollback --expect-*`.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { getDeploymentStatusQuery, promoteCanaryUpdate, workflowIds } from '../src/contracts';
import { defaultLibrary } from '../src/sandbox/state';
import { findTemporalCli } from '../src/temporal/cli';
import type { deployModel } from '../workflows/deploy';
import { routedAlias } from './production/fixtures/deployments';
import { controlWorker, testTarget, useSandboxEnv, waitForDeployment } from './helpers/env';

const run = promisify(execFile);
const SCRIPT = path.resolve(__dirname, '..', 'deploy', 'ci', 'deploy-and-promote.sh');
const GPUOPS = path.resolve(__dirname, '..', 'bin', 'gpuops');
const ctx = useSandboxEnv({ router: true, sandbox: {} });

const digestOf = (model: string): string => defaultLibrary()[model]?.digest ?? '';
/** A seconds-long canary that waits for the promote Update. */
const policy = {
  canarySteps: [50],
  stepDuration: '2s',
  analysisInterval: '1s',
  minSamples: 10,
  rollbackWindow: '1s',
  autoPromote: false,
};

type Exit = { code: number; stdout: string; stderr: string };
const exit = (p: Promise<{ stdout: string; stderr: string }>): Promise<Exit> =>
  p.then(
    (r) => ({ code: 0, ...r }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({
      code: typeof e.code === 'number' ? e.code : -1,
      stdout: e.stdout ?? '',
      stderr: e.stderr ?? '',
    }),
  );

/** The script as a CI job runs it: sh, the temporal CLI, the Temporal target in TEMPORAL_* variables only. */
function ciScript(vars: Record<string, string>): Promise<Exit> {
  const t = testTarget();
  const temporal = findTemporalCli();
  if (!temporal) throw new Error('the temporal CLI is not installed (npm run setup, or TEMPORAL_CLI_PATH)');
  const env = {
    PATH: process.env.PATH ?? '',
    TEMPORAL: temporal,
    TEMPORAL_ADDRESS: t.address,
    TEMPORAL_NAMESPACE: t.namespace,
    ...(t.tls
      ? {
          TEMPORAL_TLS_CERT: t.tls.certFile ?? '',
          TEMPORAL_TLS_KEY: t.tls.keyFile ?? '',
          TEMPORAL_TLS_CA: t.tls.caFile ?? '',
          TEMPORAL_TLS_SERVER_NAME: t.tls.serverName ?? '',
        }
      : {}),
    TASK_QUEUE: ctx.env.controlQueue,
    NODE: ctx.sbx.nodeId,
    ENGINE: 'ollama',
    POLICY: JSON.stringify(policy),
    WAIT_SECONDS: '90',
    POLL_SECONDS: '1',
    ...vars,
  };
  return exit(run('sh', [SCRIPT], { env, timeout: 120_000 }));
}

/** `gpuops` as an operator runs it, against the sandbox's gpuops.yaml. */
function gpuops(args: string[]): Promise<Exit> {
  return exit(run(GPUOPS, args, { env: { ...process.env, GPUOPS_CONFIG: ctx.sbx.loaded.path } }));
}

test('the CI script starts its deployment, checks the run is its own, waits for the canary and promotes that run', async () => {
  const alias = routedAlias(ctx.router, ctx.sbx);
  const model = 'qwen2.5:0.5b-good';
  const id = workflowIds.deploy(ctx.sbx.nodeId, alias);
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  const { r, record } = await control.runUntil(async () => {
    const r = await ciScript({ ALIAS: alias, MODEL: model, DIGEST: digestOf(model), BY: 'ci#101' });
    return { r, record: await ctx.env.client.workflow.getHandle<typeof deployModel>(id).result() };
  });
  const runId = /^started \S+: run (\S+)$/m.exec(r.stdout)?.[1] ?? '';
  expect(r.stderr).toBe('');
  expect(r.stdout).toBe(`started ${id}: run ${runId}\npromoted ${id} run ${runId} (${model})\n`);
  expect(r.code).toBe(0);
  expect(record).toMatchObject({ model, outcome: 'promoted', promotedBy: 'ci#101', requestedBy: 'ci#101' });
  // The promote went to the very run the script started.
  expect((await ctx.env.client.workflow.getHandle(id).describe()).runId).toBe(runId);
}, 120_000);

test("while another model's deployment holds the ID, the CI script's start joins it: the script fails naming that model and nothing is promoted; `--expect-*` refuses the wrong deployment and lets the right one through", async () => {
  const alias = routedAlias(ctx.router, ctx.sbx);
  const theirs = 'qwen2.5:0.5b-lax'; // medium risk: waits for approve
  const ours = 'qwen2.5:0.5b-good';
  const node = ctx.sbx.nodeId;
  const h = await ctx.env.client.workflow.start<typeof deployModel>('deployModel', {
    taskQueue: ctx.env.controlQueue,
    workflowId: workflowIds.deploy(node, alias),
    workflowIdConflictPolicy: 'FAIL',
    args: [
      { node, alias, engine: 'ollama', model: theirs, expectedDigest: digestOf(theirs), requestedBy: 'ci#7', policy },
    ],
  });
  const runId = h.firstExecutionRunId;
  const control = await controlWorker(ctx.env, ctx.sbx.loaded);
  const record = await control.runUntil(async () => {
    await waitForDeployment(h, (s) => s.stage === 'awaiting-approval', 60_000);
    const r = await ciScript({ ALIAS: alias, MODEL: ours, BY: 'ci#102' });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe(`started ${h.workflowId}: run ${runId}\n`); // the temporal CLI handed it their run ID
    expect(r.stderr).toBe(
      `deploy-and-promote: ${h.workflowId} was already running run ${runId} of ${theirs} (requested by ci#7), not this job's ${ours}: the start joined it; nothing was promoted\n`,
    );
    expect(await h.query(getDeploymentStatusQuery)).toMatchObject({ model: theirs, stage: 'awaiting-approval' });

    // Approve expecting another model: refused, naming what runs. Expecting theirs (and their run): accepted.
    const wrong = await gpuops(['approve', alias, '--node', node, '--by', 'ci#102', '--expect-model', ours]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toBe(
      `gpuops: approve refused: the running deployment ${h.workflowId} is ${theirs} (digest ${digestOf(theirs)}, run ${runId}), not the expected ${ours}\n`,
    );
    const right = await gpuops([
      'approve',
      alias,
      '--node',
      node,
      '--by',
      'alice',
      '--expect-model',
      theirs,
      '--expect-run-id',
      runId,
    ]);
    expect(right).toMatchObject({ code: 0, stderr: '' });
    const passed = await waitForDeployment(h, (s) => s.stage === 'awaiting-promotion', 60_000);
    expect(passed.digest).toBe(digestOf(theirs));

    // Promote expecting our model: refused by the Update's validator, through the SDK and through the CLI.
    const refused = h.executeUpdate(promoteCanaryUpdate, { args: [{ by: 'ci#102', expect: { model: ours, runId } }] });
    await expect(refused).rejects.toBeInstanceOf(WorkflowUpdateFailedError);
    await expect(refused).rejects.toMatchObject({
      cause: {
        message: expect.stringMatching(
          new RegExp(`^the running deployment \\S+ is ${theirs} \\(digest .*\\), not the expected ${ours}$`),
        ),
      },
    });
    const viaCli = await gpuops([
      'promote',
      alias,
      '--node',
      node,
      '--expect-model',
      ours,
      '--expect-digest',
      digestOf(ours),
    ]);
    expect(viaCli.code).toBe(1);
    expect(viaCli.stderr).toMatch(
      new RegExp(
        `^gpuops: promote refused: the running deployment \\S+ is ${theirs} \\(.*\\), not the expected ${ours}, digest ${digestOf(ours)}\\n$`,
      ),
    );
    expect((await h.query(getDeploymentStatusQuery)).stage).toBe('awaiting-promotion');
    // Its owner rolls it back, expecting its own digest.
    const rb = await gpuops([
      'rollback',
      alias,
      '--node',
      node,
      '--by',
      'ci#7',
      '--reason',
      'test over',
      '--expect-digest',
      digestOf(theirs),
    ]);
    expect(rb).toMatchObject({ code: 0, stderr: '' });
    return h.result();
  });
  expect(record).toMatchObject({ model: theirs, outcome: 'rolled-back', approvedBy: 'alice', promotedBy: null });
  expect(record.rollback).toEqual({ by: 'ci#7', reason: 'rollback requested: test over' });
}, 240_000);
