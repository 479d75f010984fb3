/**
 * `qm` for the sandbox: status, config and the power actions of simulated VMs. Like the real qm, power actions run
 * synchronously: the command returns when the task has finished (a reboot of a hung guest blocks until the ACPI
 * timeout, then fails). The VM is found by vmid among the node state files under $GPUOPS_SANDBOX_STATE_DIR, or is
 * the node of $GPUOPS_SANDBOX_STATE.
 */
import type { PowerAction, SandboxState } from '../state';
import * as core from './lib/core';
import { err, out } from './lib/shim';

const PVE_NODE = process.env.GPUOPS_SANDBOX_PVE_NODE || 'pve';
const POWER_ACTIONS: readonly string[] = ['start', 'stop', 'shutdown', 'reboot', 'reset'] satisfies PowerAction[];

function locate(vmid: number): string | undefined {
  if (process.env.GPUOPS_SANDBOX_STATE_DIR) {
    const file = core.findStateByVmid(process.env.GPUOPS_SANDBOX_STATE_DIR, vmid);
    if (file) return file;
  }
  const single = process.env.GPUOPS_SANDBOX_STATE;
  if (single) {
    const s = core.tryReadState(single);
    if (s && s.vm.vmid === vmid) return single;
  }
  return undefined;
}

function noConfig(vmid: number): number {
  err(`Configuration file 'nodes/${PVE_NODE}/qemu-server/${vmid}.conf' does not exist\n`);
  return 255;
}

function macFor(state: SandboxState): string {
  const h = core.hexOf(`${state.node}/mac`, 6).toUpperCase();
  return `BC:24:11:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}`;
}

/** A UUID-shaped id derived from the node (version 4 digit, then `variant`). */
function nodeUuid(state: SandboxState, what: string, variant: string): string {
  const h = (n: number, len: number): string => core.hexOf(`${state.node}/${what}${n === 1 ? '' : n}`, len);
  return `${h(1, 8)}-${h(2, 4)}-4${h(3, 3)}-${variant}${h(4, 3)}-${h(5, 12)}`;
}

/** The VM's config as `qm config` prints it (keys sorted), with one hostpciN line per passed-through GPU. */
function configLines(state: SandboxState): string[] {
  const vm = state.vm;
  const cfg: Record<string, string> = {
    agent: '1',
    balloon: '0',
    bios: 'ovmf',
    boot: 'order=scsi0;net0',
    cores: String(vm.cores),
    cpu: 'host',
    efidisk0: `local-lvm:vm-${vm.vmid}-disk-0,efitype=4m,pre-enrolled-keys=1,size=4M`,
    machine: 'q35',
    memory: String(vm.memoryMiB),
    meta: `creation-qemu=8.1.5,ctime=${Math.floor(state.createdAt / 1000)}`,
    name: vm.name,
    net0: `virtio=${macFor(state)},bridge=vmbr0,firewall=1`,
    numa: '0',
    ostype: 'l26',
    scsi0: `local-lvm:vm-${vm.vmid}-disk-1,discard=on,iothread=1,size=200G`,
    scsihw: 'virtio-scsi-single',
    smbios1: `uuid=${nodeUuid(state, 'smbios', 'a')}`,
    sockets: '1',
    vmgenid: nodeUuid(state, 'vmgenid', '8'),
  };
  state.gpus.forEach((g, i) => {
    cfg[`hostpci${i}`] = `${g.hostPci},pcie=1`;
  });
  return Object.keys(cfg)
    .sort()
    .map((k) => `${k}: ${cfg[k]}`);
}

function statusVerbose(state: SandboxState, now: number): string[] {
  const vm = state.vm;
  const running = vm.status === 'running';
  const lines: Record<string, string | undefined> = {
    balloon: String(vm.memoryMiB * 1048576),
    cpus: String(vm.cores),
    disk: '0',
    diskread: running ? '512802816' : '0',
    diskwrite: running ? '104857600' : '0',
    maxdisk: String(200 * 1024 ** 3),
    maxmem: String(vm.memoryMiB * 1048576),
    mem: running ? String(Math.round(vm.memoryMiB * 1048576 * 0.37)) : '0',
    name: vm.name,
    netin: running ? '1048576' : '0',
    netout: running ? '524288' : '0',
    qmpstatus: running ? 'running' : 'stopped',
    'running-machine': running ? 'pc-q35-8.1+pve0' : undefined,
    'running-qemu': running ? '8.1.5' : undefined,
    status: vm.status,
    uptime: running ? String(Math.max(0, Math.floor((now - vm.bootedAt) / 1000))) : '0',
    vmid: String(vm.vmid),
    pid: running ? String(4000 + vm.bootId) : undefined,
  };
  return Object.keys(lines)
    .filter((k) => lines[k] !== undefined)
    .sort()
    .map((k) => `${k}: ${lines[k]}`);
}

function power(file: string, action: PowerAction, timeoutSec: number | undefined): number {
  const task = core.updateState(file, (s, now) =>
    core.requestPower(s, action, now, {
      user: 'root@pam',
      pveNode: PVE_NODE,
      ...(timeoutSec !== undefined ? { timeoutMs: timeoutSec * 1000 } : {}),
    }),
  );
  // qm runs the task in the foreground: wait for it to finish, advancing the VM state as we go.
  for (;;) {
    const wait = task.endAt - Date.now();
    if (wait <= 0) break;
    core.sleepSync(Math.min(wait, 100));
  }
  core.updateState(file, () => undefined);
  if (task.exitstatus !== 'OK') {
    err(`${task.exitstatus}\n`);
    return 255;
  }
  return 0;
}

function main(argv: string[]): number {
  const [cmd, vmidText, ...rest] = argv;
  if (!cmd || !['status', 'config', ...POWER_ACTIONS].includes(cmd)) {
    err(`ERROR: unknown command 'qm ${cmd || ''}'\nUSAGE: qm <COMMAND> [ARGS] [OPTIONS]\n`);
    return 255;
  }
  const vmid = Number(vmidText);
  if (!vmidText || !Number.isInteger(vmid) || vmid < 100) {
    err(`400 not enough arguments\nqm ${cmd} <vmid>\n`);
    return 255;
  }
  const file = locate(vmid);
  if (!file) return noConfig(vmid);
  const verbose = rest.includes('--verbose');
  const ti = rest.indexOf('--timeout');
  const timeoutSec = ti >= 0 ? Number(rest[ti + 1]) : undefined;
  if (cmd === 'status') {
    const state = core.updateState(file, (s) => s);
    if (verbose) out(`${statusVerbose(state, Date.now()).join('\n')}\n`);
    else out(`status: ${state.vm.status}\n`);
    return 0;
  }
  if (cmd === 'config') {
    out(`${configLines(core.readState(file)).join('\n')}\n`);
    return 0;
  }
  return power(file, cmd as PowerAction, timeoutSec);
}

process.exitCode = main(process.argv.slice(2));
