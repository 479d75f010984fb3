/**
 * The Alertmanager webhook receiver against the run-wide real Temporal dev server, with a stand-in recoverNode
 * workflow on a task queue of this file's own. Nothing about Temporal is mocked: runs are counted on the server.
 */
import { startHooksServer, type HooksServer } from '../../src/hooks/server';
import { signBody } from '../../src/hooks/auth';
import { workflowIds } from '../../src/contracts';
import { runLog } from '../helpers/run-log';
import { finishRecoverySignal, recoverInputQuery } from './fake-recover-workflow';
import {
  HMAC_SECRET,
  TOKEN,
  alert,
  deliver,
  exists,
  fixture,
  openTemporal,
  payload,
  runIds,
  withWorker,
  type Fixture,
  type Temporal,
} from './harness';

let t: Temporal;
const servers: HooksServer[] = [];

beforeAll(async () => {
  t = await openTemporal();
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await t?.close();
});

async function serve(fx: Fixture, stateFile = fx.stateFile): Promise<HooksServer> {
  // Its log goes to the run's logs, which the secret scan reads (the receiver is never given a credential to log).
  const s = await startHooksServer({
    loaded: fx.loaded,
    client: t.client,
    taskQueue: t.taskQueue,
    stateFile,
    log: runLog('hooks'),
  });
  servers.push(s);
  return s;
}

/** End the stand-in recovery's current run and wait for it to close, as a finished recovery would. */
async function finishRecovery(workflowId: string): Promise<void> {
  const handle = t.client.workflow.getHandle(workflowId);
  await handle.signal(finishRecoverySignal);
  await handle.result();
}

test('the same alert delivered three times starts one recovery, even after that recovery finished', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const wfId = workflowIds.recover(node);
  const server = await serve(fx);
  const body = payload([alert({ labels: { gpuops_node: node, gpuops_fault: 'xid-79' }, fingerprint: 'fp3x' })]);
  await withWorker(t, async () => {
    const first = await deliver(server.url, body);
    expect(first).toEqual({ status: 200, body: { started: [wfId], duplicates: [], ignored: [] } });
    const handle = t.client.workflow.getHandle(wfId);
    expect(await handle.query(recoverInputQuery)).toEqual({
      node,
      reason: 'GpuXidError: Xid 79: GPU has fallen off the bus',
      trigger: {
        source: 'alertmanager',
        detail: 'GpuXidError; summary: Xid 79: GPU has fallen off the bus; description: See dmesg.',
        alertKey: 'fp3x@2025-05-04T10:15:30.123Z',
      },
      fault: 'xid-79',
    });
    const desc = await handle.describe();
    expect(await desc.staticSummary()).toBe(`Recover ${node}: GpuXidError (Alertmanager)`);
    expect(desc.taskQueue).toBe(t.taskQueue);

    // The recovery closes; Alertmanager keeps re-sending the still-firing alert (repeat_interval, retries).
    await finishRecovery(wfId);
    for (let i = 0; i < 2; i++) {
      const again = await deliver(server.url, body);
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({
        started: [],
        duplicates: [{ alertKey: 'fp3x@2025-05-04T10:15:30.123Z', node, workflowId: wfId, why: 'seen' }],
      });
    }
    expect(await runIds(t.client, wfId, 1)).toEqual([desc.runId]);
  });
});

test('three simultaneous deliveries of one alert (an HA pair and a retry) start one recovery', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const wfId = workflowIds.recover(node);
  const server = await serve(fx);
  const body = payload([alert({ labels: { gpuops_node: node }, fingerprint: 'fpha' })]);
  const results = await Promise.all([1, 2, 3].map(() => deliver(server.url, body)));
  expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
  expect(results.flatMap((r) => r.body.started as string[])).toEqual([wfId]);
  expect(results.flatMap((r) => r.body.duplicates as unknown[])).toHaveLength(2);
  expect(await runIds(t.client, wfId, 1)).toHaveLength(1);
  await t.client.workflow.getHandle(wfId).terminate('test over');
});

test('a new firing of the same alert (a different startsAt) starts a new recovery', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const wfId = workflowIds.recover(node);
  const server = await serve(fx);
  await withWorker(t, async () => {
    const a1 = alert({ labels: { gpuops_node: node }, fingerprint: 'fpflap', startsAt: '2025-05-04T10:00:00Z' });
    expect((await deliver(server.url, payload([a1]))).body.started).toEqual([wfId]);
    await finishRecovery(wfId);
    const a2 = alert({ labels: { gpuops_node: node }, fingerprint: 'fpflap', startsAt: '2025-05-04T11:00:00Z' });
    const second = await deliver(server.url, payload([a2]));
    expect(second.body.started).toEqual([wfId]);
    const input = await t.client.workflow.getHandle(wfId).query(recoverInputQuery);
    expect(input.trigger.alertKey).toBe('fpflap@2025-05-04T11:00:00Z');
    expect(await runIds(t.client, wfId, 2)).toHaveLength(2);
  });
});

test('a second alert about a node under recovery joins the running recovery instead of starting another', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const wfId = workflowIds.recover(node);
  const server = await serve(fx);
  const xid = alert({ labels: { gpuops_node: node }, fingerprint: 'fpxid' });
  const down = alert({ labels: { alertname: 'EngineDown', gpuops_node: node }, fingerprint: 'fpdown' });
  const r = await deliver(server.url, payload([xid, down]));
  expect(r.status).toBe(200);
  expect(r.body.started).toEqual([wfId]);
  expect(r.body.duplicates).toEqual([
    expect.objectContaining({ alertKey: `fpdown@${String(down.startsAt)}`, node, workflowId: wfId, why: 'running' }),
  ]);
  expect(await runIds(t.client, wfId, 1)).toHaveLength(1);
  await t.client.workflow.getHandle(wfId).terminate('test over');
});

test('resolved alerts and alerts about unknown nodes are ignored and reported, and the rest of the batch proceeds', async () => {
  const fx = fixture();
  const [a, b] = [fx.nodes[0] ?? '', fx.nodes[1] ?? ''];
  const server = await serve(fx);
  const resolved = alert({ labels: { gpuops_node: a }, status: 'resolved', fingerprint: 'fpres' });
  const unknown = alert({ labels: { instance: 'db-7.lan:9100' }, fingerprint: 'fpunk' });
  // Node b named only by its exporter's instance label, as a stock node_exporter / DCGM alert rule would.
  const byInstance = alert({ labels: { instance: `${b}.gpu.lan:9400` }, fingerprint: 'fpinst' });
  const r = await deliver(server.url, payload([resolved, unknown, byInstance]));
  expect(r.status).toBe(200);
  expect(r.body.started).toEqual([workflowIds.recover(b)]);
  expect(r.body.ignored).toEqual([
    { alertKey: `fpres@${String(resolved.startsAt)}`, alertname: 'GpuXidError', reason: 'resolved' },
    {
      alertKey: `fpunk@${String(unknown.startsAt)}`,
      alertname: 'GpuXidError',
      reason: 'instance="db-7.lan:9100" name no configured node',
    },
  ]);
  expect(await exists(t.client, workflowIds.recover(a))).toBe(false);
  await t.client.workflow.getHandle(workflowIds.recover(b)).terminate('test over');
});

test('an alert whose recoverNode input recoverNode would refuse starts nothing; the refusal names the field and the rule', async () => {
  const fx = fixture();
  const [a, b] = [fx.nodes[0] ?? '', fx.nodes[1] ?? ''];
  const lines: string[] = [];
  const s = await startHooksServer({
    loaded: fx.loaded,
    client: t.client,
    taskQueue: t.taskQueue,
    stateFile: fx.stateFile,
    log: (l) => lines.push(l),
  });
  servers.push(s);
  // An alert rule with an empty alertname and no summary: the recovery would have no reason (recoverNode needs one).
  const nameless = alert({ labels: { gpuops_node: a, alertname: '' }, annotations: {}, fingerprint: 'fpnameless' });
  const good = alert({ labels: { gpuops_node: b }, fingerprint: 'fpgood' });
  const r = await deliver(s.url, payload([nameless, good]));
  expect(r.status).toBe(200);
  expect(r.body.started).toEqual([workflowIds.recover(b)]);
  const reason = 'invalid recoverNode input: reason: Too small: expected string to have >=1 characters';
  expect(r.body.ignored).toEqual([{ alertKey: `fpnameless@${String(nameless.startsAt)}`, alertname: '', reason }]);
  expect(lines).toContain(`hooks: refused fpnameless@${String(nameless.startsAt)}: ${reason}`);
  expect(await exists(t.client, workflowIds.recover(a))).toBe(false);
  await t.client.workflow.getHandle(workflowIds.recover(b)).terminate('test over');
});

test('an unauthenticated POST is refused with 401 and starts nothing', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const server = await serve(fx);
  const body = payload([alert({ labels: { gpuops_node: node } })]);
  const text = JSON.stringify(body);
  const attempts: Record<string, string>[] = [
    {},
    { authorization: 'Bearer wrong-token' },
    { authorization: `Basic ${Buffer.from(`gpuops:${TOKEN}`).toString('base64')}` },
    { 'x-gpuops-signature': signBody('not-the-secret', text) },
  ];
  for (const headers of attempts) {
    const r = await deliver(server.url, text, headers);
    expect({ headers, status: r.status, body: r.body }).toEqual({
      headers,
      status: 401,
      body: { error: 'unauthorized' },
    });
  }
  expect(await exists(t.client, workflowIds.recover(node))).toBe(false);
});

test('a body signed with the HMAC secret is accepted; the same signature over a tampered body is refused', async () => {
  const fx = fixture();
  const [a, b] = [fx.nodes[0] ?? '', fx.nodes[1] ?? ''];
  const server = await serve(fx);
  const text = JSON.stringify(payload([alert({ labels: { gpuops_node: a } })]));
  const signature = signBody(HMAC_SECRET, text);
  // An attacker who saw a signed delivery retargets it at another node.
  const tampered = await deliver(server.url, text.replace(a, b), { 'x-gpuops-signature': signature });
  expect(tampered.status).toBe(401);
  expect(await exists(t.client, workflowIds.recover(b))).toBe(false);
  const signed = await deliver(server.url, text, { 'x-gpuops-signature': signature });
  expect(signed.status).toBe(200);
  expect(signed.body.started).toEqual([workflowIds.recover(a)]);
  await t.client.workflow.getHandle(workflowIds.recover(a)).terminate('test over');
});

test('a malformed payload is refused with 400 naming the bad fields, and starts nothing', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const server = await serve(fx);
  const good = alert({ labels: { gpuops_node: node } });
  const { fingerprint: _dropped, ...noFingerprint } = good;
  const r = await deliver(server.url, { ...payload([good, noFingerprint]), version: '3' });
  expect(r.status).toBe(400);
  expect(r.body).toEqual({
    error: 'invalid payload',
    problems: ['version: must be one of "4"', 'alerts[1].fingerprint: is required'],
  });
  const notJson = await deliver(server.url, '{"version": "4", ');
  expect(notJson.status).toBe(400);
  expect(notJson.body.problems).toEqual([expect.stringMatching(/^\(root\): not JSON/)]);
  expect(await exists(t.client, workflowIds.recover(node))).toBe(false);
});

test('the dedupe memory survives a receiver restart (and without it the alert would start a recovery again)', async () => {
  const fx = fixture();
  const node = fx.nodes[0] ?? '';
  const wfId = workflowIds.recover(node);
  const body = payload([alert({ labels: { gpuops_node: node }, fingerprint: 'fprestart' })]);
  await withWorker(t, async () => {
    const before = await serve(fx);
    expect((await deliver(before.url, body)).body.started).toEqual([wfId]);
    await finishRecovery(wfId);
    await Promise.all(servers.splice(0).map((s) => s.close()));

    const after = await serve(fx);
    const redelivered = await deliver(after.url, body);
    expect(redelivered.body).toMatchObject({ started: [], duplicates: [{ workflowId: wfId, why: 'seen' }] });
    expect(await runIds(t.client, wfId, 1)).toHaveLength(1);

    // The control: a receiver with no memory of the alert starts a second recovery, so the store is what saved us.
    const amnesiac = await serve(fx, `${fx.stateFile}.fresh`);
    expect((await deliver(amnesiac.url, body)).body.started).toEqual([wfId]);
    await t.client.workflow.getHandle(wfId).terminate('test over');
  });
});
