import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createControlActivities } from '../../activities/control';
import { createHypervisorActivities } from '../../activities/hypervisor';
import { createNodeActivities } from '../../activities/node';
import { EngineSchema, type Config, type NodeConfig } from '../../src/config/schema';
import { QUERY_GPU_FIELDS } from '../../src/hosts/nvidia-smi';
import { QmCli } from '../../src/hosts/proxmox';
import { fakeTool, fixture, sendJson, startServer, type TestServer } from './fakes';
import { nonRetryableOf } from '../helpers/failures';

const TOOL_DEFAULTS = {
  systemctl: 'systemctl',
  journalctl: 'journalctl',
  systemdUnitDir: '/etc/systemd/system',
  processDir: '/var/lib/gpuops/processes',
};

function nodeConfig(over: Partial<NodeConfig> = {}): NodeConfig {
  return {
    id: 'a4000',
    gpus: [{ index: 0 }],
    engines: [],
    modelStores: [],
    tools: { docker: 'docker', nvidiaSmi: 'nvidia-smi', dmesg: 'dmesg', ...TOOL_DEFAULTS },
    sandbox: false,
    ...over,
  };
}

describe('node activities', () => {
  let ollama: TestServer;
  beforeAll(async () => {
    ollama = await startServer((req, res) => {
      if (req.url === '/api/version') return sendJson(res, 200, fixture('ollama/version.json'));
      if (req.url === '/api/tags') return sendJson(res, 200, fixture('ollama/tags.json'));
      if (req.url === '/api/ps') return sendJson(res, 200, fixture('ollama/ps.json'));
      if (req.url === '/api/generate') return sendJson(res, 200, fixture('ollama/generate.json'));
      if (req.url === '/api/pull') {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        return res.end(fixture('ollama/pull-stream.ndjson'));
      }
      return sendJson(res, 404, { error: 'not found' });
    });
  });
  afterAll(() => ollama.close());

  function setup(over: Partial<NodeConfig> = {}, tools: { dmesgDenied?: boolean } = {}) {
    const docker = fakeTool('docker', [
      {
        args: ['inspect'],
        stdout: fixture('docker/inspect-ollama-running.json'),
        stderr: fixture('docker/inspect-missing.stderr.txt'),
        exit: 1,
      },
      { args: ['logs'], stdout: 'time=2025-02-03T07:41:10Z level=INFO msg="Listening on [::]:11434"\n' },
      {
        args: ['restart', '-t', '10', 'llama-cpu'],
        stderr: 'Error response from daemon: No such container: llama-cpu\n',
        exit: 1,
      },
      { args: ['restart'], stdout: 'ollama\n' },
    ]);
    const smi = fakeTool('nvidia-smi', [
      { args: ['--gpu-reset'], stdout: fixture('nvidia-smi/gpu-reset-in-use.txt'), exit: 255 },
      // The fixture is driver 550, which predates the recovery action: it rejects the field, as the real one does.
      {
        args: [`--query-gpu=${QUERY_GPU_FIELDS.join(',')}`],
        stdout: 'Field "gpu_recovery_action" is not a valid field to query.\n\n',
        exit: 2,
      },
      { stdout: fixture('nvidia-smi/query-gpu-a4000-remap-pending.csv') },
    ]);
    const dmesg = fakeTool(
      'dmesg',
      tools.dmesgDenied
        ? [{ stderr: 'dmesg: read kernel buffer failed: Operation not permitted\n', exit: 1 }]
        : [{ stdout: fixture('dmesg/xid-iso.txt') }],
    );
    const node = nodeConfig({
      engines: [
        EngineSchema.parse({ name: 'ollama', type: 'ollama', url: ollama.url, container: 'ollama', gpus: [0] }),
        EngineSchema.parse({ name: 'llama-cpu', type: 'llamacpp', url: 'http://127.0.0.1:9', container: 'llama-cpu' }),
      ],
      tools: { docker: docker.bin, nvidiaSmi: smi.bin, dmesg: dmesg.bin, ...TOOL_DEFAULTS },
      ...over,
    });
    return { acts: createNodeActivities(node), docker, smi, dmesg };
  }

  it('serves the activity names the inspectNode workflow calls, with typed results', async () => {
    const store = mkdtempSync(path.join(os.tmpdir(), 'gpuops-store-'));
    const { acts } = setup({ modelStores: [store, path.join(store, 'not-created-yet')] });
    const [containers, gpu, xids, engines, disks] = await Promise.all([
      acts.inspectContainers(),
      acts.queryGpus(),
      acts.readXidEvents({ since: '2025-02-03T09:00:00Z' }),
      // Runs beside four tool processes (nvidia-smi asked twice: its fixture is a driver before R565): a roomy deadline.
      acts.probeEngines({ generate: true, timeoutMs: 3000 }),
      acts.checkDisks(),
    ]);
    expect(containers.map((c) => [c.name, c.exists, c.status])).toEqual([
      ['ollama', true, 'running'],
      ['llama-cpu', false, 'missing'],
    ]);
    expect(gpu.error).toBeNull();
    expect(gpu.gpus[0]).toMatchObject({ index: 0, remappedRowsPending: true, eccUncorrectedVolatile: 2 });
    expect(xids.map((x) => x.xid)).toEqual([31, 79]);
    expect(engines.find((e) => e.name === 'ollama')).toMatchObject({ healthy: true, generation: { ok: true } });
    expect(engines.find((e) => e.name === 'llama-cpu')).toMatchObject({ reachable: false, healthy: false });
    // Only the store that exists is reported; free space comes from statfs of the real directory.
    expect(disks).toHaveLength(1);
    expect(disks[0]?.path).toBe(store);
    expect(disks[0]?.totalBytes).toBeGreaterThan(0);
    expect(disks[0]?.freeBytes).toBeLessThanOrEqual(disks[0]?.totalBytes ?? 0);
  });

  it('refuses, without retry, to restart a container the node does not configure', async () => {
    const { acts, docker } = setup();
    const f = await nonRetryableOf(acts.restartContainer({ container: 'postgres' }));
    expect(f.type).toBe('UnknownContainer');
    expect(f.message).toContain('configured: ollama, llama-cpu');
    expect(docker.calls()).toEqual([]);
  });

  it('restarts a configured container inside an activity context and reports its state', async () => {
    const { acts, docker } = setup();
    const env = new MockActivityEnvironment();
    const beats: unknown[] = [];
    env.on('heartbeat', (d: unknown) => beats.push(d));
    const state = await env.run(acts.restartContainer, { container: 'ollama', timeoutSec: 10 });
    expect(state).toMatchObject({ name: 'ollama', running: true });
    expect(docker.calls()[0]).toEqual(['restart', '-t', '10', 'ollama']);
    expect(beats[0]).toEqual({ step: 'restarting', container: 'ollama' });
  });

  it('fails without retry when a configured container no longer exists', async () => {
    const { acts } = setup();
    const f = await nonRetryableOf(acts.restartContainer({ container: 'llama-cpu' }));
    expect(f.type).toBe('ContainerMissing');
  });

  it('returns a refused GPU reset as data and rejects an unconfigured GPU index', async () => {
    const { acts } = setup();
    await expect(acts.resetGpu({ index: 0 })).resolves.toMatchObject({ ok: false, reason: 'in-use' });
    expect((await nonRetryableOf(acts.resetGpu({ index: 3 }))).type).toBe('UnknownGpu');
  });

  it('reads no Xids, rather than failing every probe, when the kernel log is restricted', async () => {
    const { acts } = setup({}, { dmesgDenied: true });
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      await expect(acts.readXidEvents({})).resolves.toEqual([]);
      expect(warn).toHaveBeenCalledWith(expect.stringContaining('Operation not permitted'), {});
    } finally {
      warn.mockRestore();
    }
    expect((await nonRetryableOf(acts.readXidEvents({ since: 'yesterday' }))).type).toBe('InvalidInput');
  });

  it('pulls a model with heartbeats and reports where a previous attempt had got to', async () => {
    const { acts } = setup();
    const env = new MockActivityEnvironment({
      heartbeatDetails: {
        model: 'qwen2.5:7b-instruct-q4_K_M',
        status: 'pulling 2bada8a74506',
        completedBytes: 1171268296,
        totalBytes: 4683073184,
        // The first attempt found the model absent; the retry must not re-decide that from the store it filled.
        alreadyPresent: false,
      },
    });
    const beats: { status: string }[] = [];
    env.on('heartbeat', (d: { status: string }) => beats.push(d));
    const r = await env.run(acts.pullModel, { engine: 'ollama', model: 'qwen2.5:7b-instruct-q4_K_M' });
    expect(r).toEqual({
      alreadyPresent: false,
      model: 'qwen2.5:7b-instruct-q4_K_M',
      digest: '845dbda0ea48ed749caafd9e6037047aa19acfcfd82e704d7ca97d631a0b697e',
      sizeBytes: 4683087332,
      resumedFromBytes: 1171268296,
    });
    expect(beats.at(-1)?.status).toBe('success');
    expect((await nonRetryableOf(acts.pullModel({ engine: 'llama-cpu', model: 'x' }))).type).toBe('UnsupportedEngine');
  });
});

describe('proxmox activities', () => {
  let pve: TestServer;
  let running = true;
  const secret = 'f3b0c442-98fc-4c14-9afb-4c8996fb9242';
  beforeAll(async () => {
    pve = await startServer((req, res) => {
      if (req.headers.authorization !== `PVEAPIToken=root@pam!gpuops=${secret}`) {
        res.statusMessage = 'authentication failure';
        return sendJson(res, 401, { data: null });
      }
      if (req.url.endsWith('/status/current')) {
        return sendJson(
          res,
          200,
          fixture(running ? 'proxmox/status-current-running.json' : 'proxmox/status-current-stopped.json'),
        );
      }
      if (req.method === 'POST' && req.url.endsWith('/status/reboot'))
        return sendJson(res, 200, fixture('proxmox/power-reboot.json'));
      if (req.method === 'POST' && req.url.endsWith('/status/start')) {
        return sendJson(res, 200, { data: 'UPID:pve1:000B1D40:01A2C9F0:67A09B02:qmstart:101:root@pam!gpuops:' });
      }
      if (req.url.includes('/tasks/') && req.url.includes('qmstart'))
        return sendJson(res, 200, fixture('proxmox/task-failed.json'));
      if (req.url.includes('/tasks/')) return sendJson(res, 200, fixture('proxmox/task-ok.json'));
      return sendJson(res, 501, { data: null });
    });
  });
  afterAll(() => pve.close());

  function control(secretContent = secret) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-cfg-'));
    mkdirSync(path.join(dir, 'secrets'));
    writeFileSync(path.join(dir, 'secrets', 'pve.token'), `${secretContent}\n`);
    const config = {
      hypervisors: [
        {
          id: 'pve1',
          type: 'proxmox-api',
          url: pve.url,
          pveNode: 'pve1',
          tokenId: 'root@pam!gpuops',
          tokenSecretFile: 'secrets/pve.token',
          insecureSkipVerify: false,
        },
        { id: 'pve2', type: 'qm', qm: 'qm' },
      ],
      reportsDir: 'reports',
    } as unknown as Config;
    // The secret path is relative: it must resolve from the config file's directory, not the worker's cwd.
    return createControlActivities({ path: path.join(dir, 'gpuops.yaml'), config });
  }

  it('skips a start on a running VM, and returns the UPID of a reboot', async () => {
    const acts = control();
    running = true;
    await expect(acts.vmPower({ hypervisor: 'pve1', vmid: 101, action: 'start' })).resolves.toBeNull();
    await expect(acts.vmPower({ hypervisor: 'pve1', vmid: 101, action: 'reboot' })).resolves.toBe(
      'UPID:pve1:000B1C2D:01A2B3C4:67A09A1E:qmreboot:101:root@pam!gpuops:',
    );
    running = false;
    await expect(acts.vmStatus({ hypervisor: 'pve1', vmid: 101 })).resolves.toMatchObject({ status: 'stopped' });
    await expect(acts.vmPower({ hypervisor: 'pve1', vmid: 101, action: 'start' })).resolves.toMatch(/:qmstart:101:/);
  });

  it('waits for a task with heartbeats and reports a failed task as ok=false', async () => {
    const acts = control();
    const env = new MockActivityEnvironment();
    const beats: unknown[] = [];
    env.on('heartbeat', (d: unknown) => beats.push(d));
    const ok = await env.run(acts.waitVmTask, {
      hypervisor: 'pve1',
      upid: 'UPID:pve1:000B1C2D:01A2B3C4:67A09A1E:qmreboot:101:root@pam!gpuops:',
    });
    expect(ok).toMatchObject({ ok: true, exitstatus: 'OK' });
    expect(beats).toHaveLength(1);
    const failed = await acts.waitVmTask({
      hypervisor: 'pve1',
      upid: 'UPID:pve1:000B1D40:01A2C9F0:67A09B02:qmstart:101:root@pam!gpuops:',
    });
    expect(failed).toMatchObject({ ok: false, exitstatus: 'start failed: QEMU exited with code 1' });
  });

  it('makes authentication failures and wrong hypervisors non-retryable', async () => {
    expect((await nonRetryableOf(control('not-the-secret').vmStatus({ hypervisor: 'pve1', vmid: 101 }))).type).toBe(
      'ProxmoxAuth',
    );
    const acts = control();
    expect((await nonRetryableOf(acts.vmStatus({ hypervisor: 'nope', vmid: 101 }))).type).toBe('UnknownHypervisor');
    expect((await nonRetryableOf(acts.vmStatus({ hypervisor: 'pve2', vmid: 101 }))).type).toBe('WrongHypervisorType');
    expect(
      (await nonRetryableOf(acts.vmPower({ hypervisor: 'pve1', vmid: 101, action: 'hibernate' as never }))).type,
    ).toBe('InvalidInput');
  });
});

describe('hypervisor (qm) activities', () => {
  it('runs qm power actions and status with argument arrays', async () => {
    const qm = fakeTool('qm', [
      { args: ['status', '101'], stdout: fixture('qm/status-running.txt') },
      { args: ['start', '101'], stderr: fixture('qm/start-already-running.txt'), exit: 255 },
    ]);
    const acts = createHypervisorActivities({ id: 'pve2', type: 'qm', qm: qm.bin }, { qm: new QmCli({ bin: qm.bin }) });
    await expect(acts.qmStatus({ vmid: 101 })).resolves.toBe('running');
    await expect(acts.qmPower({ vmid: 101, action: 'start' })).resolves.toMatchObject({
      ok: true,
      alreadyInState: true,
    });
    expect((await nonRetryableOf(acts.qmPower({ vmid: 7, action: 'start' }))).type).toBe('InvalidInput');
  });
});
