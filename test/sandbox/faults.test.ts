/**
 * Faults change what the shims print, and only the right remedy clears each one.
 */
import * as core from '../../src/sandbox/shims/lib/core';
import { clearFaults, FaultError, injectFault } from '../../src/sandbox/faults';
import type { SandboxStore } from '../../src/sandbox/state';
import { nodeConfig, runShim, seedStore, tempDir } from './helpers';

let cleanup: () => void;
let store: SandboxStore;
let env: Record<string, string>;

const GPU_FIELDS = [
  '--query-gpu=index,name,ecc.errors.uncorrected.volatile.total,remapped_rows.pending',
  '--format=csv,noheader,nounits',
];

/** Run the VM through a hard reset and let the boot finish. */
function resetAndBoot(s: SandboxStore): void {
  s.update((st, now) => core.requestPower(st, 'reset', now));
  s.update((st) => {
    st.vm.phaseUntil = Date.now() - 1; // skip the wait: the test is about what the boot clears
  });
  s.update(() => undefined);
}

beforeEach(async () => {
  const t = tempDir();
  cleanup = t.cleanup;
  const node = await nodeConfig('fault-node', [{ type: 'ollama', name: 'ollama' }]);
  store = seedStore(t.dir, node);
  env = { GPUOPS_SANDBOX_STATE: store.file };
});

afterEach(() => cleanup());

test('xid-79: nvidia-smi fails with "GPU is lost" (exit 15) and dmesg shows the Xid 79 line', async () => {
  injectFault(store, 'xid-79');
  const smi = await runShim('nvidia-smi', GPU_FIELDS, env);
  expect(smi.code).toBe(15);
  expect(smi.stdout).toBe('');
  expect(smi.stderr).toBe(
    'Unable to determine the device handle for GPU 0000:01:00.0: GPU is lost. Reboot the system to recover this GPU\n',
  );
  const dmesg = await runShim('dmesg', ['--time-format', 'iso'], env);
  expect(dmesg.stdout).toMatch(/NVRM: Xid \(PCI:0000:01:00\): 79, pid=\S+, name=\S+, GPU has fallen off the bus\./);
  const reset = await runShim('nvidia-smi', ['--gpu-reset', '-i', '0'], env);
  expect(reset.code).toBe(15);
  expect(store.read().faults.map((f) => f.kind)).toEqual(['xid-79']);
});

test('xid-79 survives a docker restart of the engine but not a VM reset', async () => {
  injectFault(store, 'xid-79');
  expect((await runShim('docker', ['restart', 'ollama'], env)).code).toBe(0);
  expect((await runShim('nvidia-smi', GPU_FIELDS, env)).code).toBe(15);
  resetAndBoot(store);
  const after = await runShim('nvidia-smi', GPU_FIELDS, env);
  expect(after.code).toBe(0);
  expect(after.stdout).toBe('0, NVIDIA RTX A4000, 0, No\n');
  // The kernel ring buffer starts over at boot: the old Xid is gone with it.
  expect((await runShim('dmesg', [], env)).stdout).not.toContain('Xid');
  expect(store.read().faults).toEqual([]);
});

test('ecc: uncorrected volatile count and pending remap show, Xid 48 is logged, a GPU reset clears them', async () => {
  injectFault(store, 'ecc');
  const r = await runShim('nvidia-smi', GPU_FIELDS, env);
  expect(r.stdout).toBe('0, NVIDIA RTX A4000, 2, Yes\n');
  expect((await runShim('dmesg', [], env)).stdout).toMatch(/NVRM: Xid \(PCI:0000:01:00\): 48, /);
  // Ollama holds no GPU context while no model is loaded, so the GPU can be reset in place.
  const reset = await runShim('nvidia-smi', ['--gpu-reset', '-i', '0'], env);
  expect(reset.code).toBe(0);
  expect((await runShim('nvidia-smi', GPU_FIELDS, env)).stdout).toBe('0, NVIDIA RTX A4000, 0, No\n');
  expect(store.read().gpus[0]!.remappedRowsUncorrectable).toBe(1);
});

describe('the driver verdict (gpu-recovery-*)', () => {
  const VERDICT = ['--query-gpu=index,gpu_recovery_action', '--format=csv,noheader,nounits'];

  test('gpu-recovery-reset: the verdict reads Reset with no Xid logged; a GPU reset answers it', async () => {
    expect(injectFault(store, 'gpu-recovery-reset')).toMatchObject({ kind: 'gpu-recovery-reset', target: 'gpu0' });
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, Reset\n');
    expect((await runShim('dmesg', [], env)).stdout).not.toContain('Xid');
    // A docker restart does not answer the driver.
    expect((await runShim('docker', ['restart', 'ollama'], env)).code).toBe(0);
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, Reset\n');
    expect((await runShim('nvidia-smi', ['--gpu-reset', '-i', '0'], env)).code).toBe(0);
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, None\n');
    expect(store.read().faults).toEqual([]);
  });

  test('gpu-recovery-reboot: a GPU reset leaves it; only a VM reboot answers it', async () => {
    injectFault(store, 'gpu-recovery-reboot');
    expect((await runShim('nvidia-smi', ['--gpu-reset', '-i', '0'], env)).code).toBe(0);
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, Reboot\n');
    expect(store.read().faults.map((f) => f.kind)).toEqual(['gpu-recovery-reboot']);
    resetAndBoot(store);
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, None\n');
    expect(store.read().faults).toEqual([]);
  });

  test('a driver before R565 has no verdict: the field is rejected and the fault refused', async () => {
    store.update((s) => {
      s.host.driverVersion = '550.127.05';
    });
    const r = await runShim('nvidia-smi', VERDICT, env);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('Field "gpu_recovery_action" is not a valid field to query.\n\n');
    expect((await runShim('nvidia-smi', ['-q', '-x'], env)).stdout).not.toContain('gpu_recovery_action');
    expect(() => injectFault(store, 'gpu-recovery-reset')).toThrow(
      'driver 550.127.05 reports no GPU recovery action (drivers 565 and later do)',
    );
  });

  test('a state file from before the verdict existed reads None', async () => {
    store.update((s) => {
      delete s.gpus[0]!.recoveryAction;
    });
    expect((await runShim('nvidia-smi', VERDICT, env)).stdout).toBe('0, None\n');
  });
});

test('cuda-oom: the container log carries the CUDA OOM signature until the container restarts', async () => {
  injectFault(store, 'cuda-oom');
  const logs = await runShim('docker', ['logs', '--tail', '50', 'ollama'], env);
  expect(logs.stderr).toContain('cudaMalloc failed: out of memory');
  const mem = await runShim(
    'nvidia-smi',
    ['--query-gpu=memory.used,memory.total', '--format=csv,noheader,nounits'],
    env,
  );
  const [used, total] = mem.stdout.trim().split(', ').map(Number);
  expect(used! / total!).toBeGreaterThan(0.95);
  await runShim('docker', ['restart', 'ollama'], env);
  const startedAt = (await runShim('docker', ['inspect', '-f', '{{.State.StartedAt}}', 'ollama'], env)).stdout.trim();
  const fresh = await runShim('docker', ['logs', '--since', startedAt, 'ollama'], env);
  expect(fresh.stderr).not.toContain('out of memory');
  expect(store.read().faults).toEqual([]);
});

test('container-exit: docker inspect shows the engine exited with a crash code; docker start brings it back', async () => {
  injectFault(store, 'container-exit');
  const state = JSON.parse((await runShim('docker', ['inspect', '--format', '{{json .State}}', 'ollama'], env)).stdout);
  expect(state).toMatchObject({ Status: 'exited', Running: false, ExitCode: 2, OOMKilled: false });
  expect(store.read().faults.map((f) => f.kind)).toEqual(['container-exit']);
  await runShim('docker', ['start', 'ollama'], env);
  expect((await runShim('docker', ['inspect', '-f', '{{.State.Status}}', 'ollama'], env)).stdout).toBe('running\n');
  expect(store.read().faults).toEqual([]);
});

test('engine-hang is container-scoped: a docker restart clears it', async () => {
  injectFault(store, 'engine-hang');
  expect(store.read().containers.ollama!.faults.hang).toBe(true);
  await runShim('docker', ['restart', '-t', '0', 'ollama'], env);
  expect(store.read().containers.ollama!.faults.hang).toBe(false);
});

test('node-down marks the guest hung; only a reset or stop clears it', () => {
  injectFault(store, 'node-down');
  expect(store.read().vm).toMatchObject({ hung: true, status: 'running' });
  const reboot = store.update((s, now) => core.requestPower(s, 'reboot', now, { timeoutMs: 50 }));
  expect(reboot.exitstatus).toBe('VM quit/powerdown failed - got timeout');
  expect(store.read().vm.hung).toBe(true);
  resetAndBoot(store);
  expect(store.read().vm.hung).toBe(false);
});

test('faults need a running guest, and unknown targets are refused', () => {
  expect(() => injectFault(store, 'cuda-oom', { engine: 'nope' })).toThrow(FaultError);
  store.update((s, now) => core.requestPower(s, 'stop', now));
  expect(() => injectFault(store, 'engine-hang')).toThrow(/not running/);
});

test('clearFaults undoes every fault', () => {
  injectFault(store, 'engine-hang');
  injectFault(store, 'ecc');
  injectFault(store, 'xid-79');
  injectFault(store, 'gpu-recovery-reboot');
  expect(store.read().faults).toHaveLength(4);
  const cleared = clearFaults(store);
  expect(cleared.map((f) => f.kind).sort()).toEqual(['ecc', 'engine-hang', 'gpu-recovery-reboot', 'xid-79']);
  expect(store.read().gpus[0]!.recoveryAction).toBe('none');
  expect(store.read().faults).toEqual([]);
});
