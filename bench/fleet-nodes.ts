/**
 * The node side of `npm run bench fleet`: one process that serves the probe rounds of many nodes, so that the
 * bench measures what watching costs the control worker and the Temporal server, not hundreds of node processes.
 *
 * Each node gets a real Worker on its own queue (gpuops-node-<id>, the node worker's options) with the node worker's
 * real activities; only the tools under them differ. One sandbox node (the template) runs the simulated engine every
 * node's probe generates on, and its shims' answers to `docker inspect`, `docker logs`, `nvidia-smi --query-gpu` and
 * `dmesg` are captured once at start; every probe then parses them afresh with the real parsers, without spawning.
 *
 * Run by bench/fleet.ts: `node --import tsx bench/fleet-nodes.ts <gpuops.yaml> <temporal address> <template node>`.
 * Prints `READY <n>` once every worker polls; stops on SIGTERM.
 */
import { NativeConnection, Worker } from '@temporalio/worker';
import { readFileSync } from 'node:fs';
import { createNodeActivities } from '../activities/node';
import { parseConfig } from '../src/config/load';
import type { NodeConfig } from '../src/config/schema';
import { nodeTaskQueue } from '../src/contracts';
import type { ContainerState, XidEvent } from '../src/domain/health';
import { DockerCli, parseDockerInspect, scanLogSignals } from '../src/hosts/docker';
import { runTool, type ToolResult } from '../src/hosts/exec';
import { KernelLog, filterXidSince, parseXidEvents } from '../src/hosts/kernel-log';
import { NvidiaSmi, QUERY_GPU_FIELDS, parseQueryGpuOutput, type GpuQueryResult } from '../src/hosts/nvidia-smi';
import { SandboxNode } from '../src/sandbox/node';
import { NODE_WORKER_OPTIONS } from '../workers/node';

/** What the template's tools printed once, parsed again at every probe. */
interface Captured {
  inspect: ToolResult;
  logs: string[];
  smi: ToolResult;
  dmesg: ToolResult;
}

class CapturedDocker extends DockerCli {
  constructor(private readonly captured: Captured) {
    super();
  }
  override async inspect(
    names: readonly string[],
    opts: { logSignals?: { tail?: number } | false } = {},
  ): Promise<ContainerState[]> {
    const states = parseDockerInspect(this.captured.inspect, names);
    if (!opts.logSignals) return states;
    return states.map((s) => (s.exists ? { ...s, logSignals: scanLogSignals(this.captured.logs) } : s));
  }
}

class CapturedNvidiaSmi extends NvidiaSmi {
  constructor(private readonly captured: Captured) {
    super();
  }
  override async queryGpus(): Promise<GpuQueryResult> {
    return parseQueryGpuOutput(this.captured.smi);
  }
}

class CapturedKernelLog extends KernelLog {
  constructor(private readonly captured: Captured) {
    super();
  }
  override async xidEvents(opts: { since?: string } = {}): Promise<XidEvent[]> {
    return filterXidSince(parseXidEvents(this.captured.dmesg.stdout), opts.since);
  }
}

async function capture(sim: SandboxNode, node: NodeConfig): Promise<Captured> {
  const env = sim.shimEnv();
  const container = node.engines[0]?.container ?? 'ollama';
  const captured: Captured = {
    inspect: await runTool(node.tools.docker, ['inspect', container], { env }),
    logs: await new DockerCli({ bin: node.tools.docker, env }).logs(container, { tail: 200 }),
    smi: await runTool(
      node.tools.nvidiaSmi,
      [`--query-gpu=${QUERY_GPU_FIELDS.join(',')}`, '--format=csv,noheader,nounits'],
      { env },
    ),
    dmesg: await runTool(node.tools.dmesg, ['--time-format', 'iso'], { env }),
  };
  for (const [name, r] of Object.entries(captured)) {
    if (!Array.isArray(r) && (r as ToolResult).exitCode !== 0) {
      throw new Error(`template ${name} failed: ${(r as ToolResult).stderr}`);
    }
  }
  return captured;
}

async function main(): Promise<void> {
  const [configPath, address, templateId] = process.argv.slice(2);
  if (!configPath || !address || !templateId) throw new Error('usage: fleet-nodes.ts <gpuops.yaml> <address> <node>');
  const config = parseConfig(readFileSync(configPath, 'utf8'), configPath);
  const template = config.nodes.find((n) => n.id === templateId);
  if (!template || !config.sandbox) throw new Error(`no sandbox node ${templateId} in ${configPath}`);
  const sim = new SandboxNode({ node: template, stateDir: config.sandbox.stateDir, bootSeconds: 1 });
  await sim.start();
  const captured = await capture(sim, template);
  const tools = {
    configPath,
    docker: new CapturedDocker(captured),
    nvidiaSmi: new CapturedNvidiaSmi(captured),
    kernelLog: new CapturedKernelLog(captured),
  };
  const fleet = config.nodes.filter((n) => n.id !== templateId);
  // A connection per node, as each node worker has its own: one HTTP/2 connection carries only so many long polls.
  const connections = await Promise.all(fleet.map(() => NativeConnection.connect({ address })));
  const workers = await Promise.all(
    fleet.map((node, i) =>
      Worker.create({
        connection: connections[i] as NativeConnection,
        namespace: 'default',
        taskQueue: nodeTaskQueue(node.id),
        identity: `gpuops-node-${node.id}@fleet:${process.pid}`,
        activities: createNodeActivities(node, tools),
        // The node worker's own settings: its pollers are the server's to carry.
        ...NODE_WORKER_OPTIONS,
      }),
    ),
  );
  const running = workers.map((w) => w.run());
  console.log(`READY ${workers.length}`);
  await Promise.all(running);
  await Promise.all(connections.map((c) => c.close()));
  await sim.stop();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
