/** `gpuops status [node]`: run inspectNode for each node (or one) and print the health reports. */
import type { Client } from '@temporalio/client';
import type { HealthReport } from '../domain/classify';
import type { Config } from '../config/schema';
import { InspectNodeInput, inspectNodeWorkflow, workflowIds } from '../contracts';
import { executeWorkflow } from '../temporal/workflows';
import { withInputs, workflowInput, type GlobalOptions, type Program } from './context';
import { runningDeployments, type DeploymentRow } from './deployments';
import { requireNode } from './nodes';
import { emit, table } from './output';

/** inspectNode's input for a node, checked with inspectNode's own schema. */
export function inspectInput(config: Config, node: string, generate = true): InspectNodeInput {
  const n = config.nodes.find((x) => x.id === node);
  const input = { node, generate, ...(n ? { expectedGpus: n.gpus.length } : {}) };
  return workflowInput(InspectNodeInput, input, `inspectNode input for ${node}`);
}

/** inspectNode's inputs for every node (or one), in config order. */
export function inspectInputs(config: Config, opts: { node?: string; generate?: boolean }): InspectNodeInput[] {
  if (opts.node) requireNode(config, opts.node);
  const nodes = opts.node ? [opts.node] : config.nodes.map((n) => n.id);
  return nodes.map((n) => inspectInput(config, n, opts.generate ?? true));
}

export function inspect(client: Client, input: InspectNodeInput): Promise<HealthReport> {
  return executeWorkflow(client, inspectNodeWorkflow, input, {
    workflowId: workflowIds.inspect(input.node, new Date().toISOString().replace(/[:.]/g, '-')),
    staticSummary: `Inspect node ${input.node}`,
    staticDetails: "Started by `gpuops status`: one round of health probes on the node's pinned queue.",
    workflowExecutionTimeout: '2m',
  });
}

/** Engines and containers that are standby halves of canary slot pairs (reports of older workers have none). */
function standbyOf(r: HealthReport): { engines: Set<string>; containers: Map<string, string> } {
  const list = (r.standby as HealthReport['standby'] | undefined) ?? [];
  return {
    engines: new Set(list.flatMap((s) => (s.engine === null ? [] : [s.engine]))),
    containers: new Map(list.map((s) => [s.container, s.partner])),
  };
}

export function renderReport(r: HealthReport): string {
  const o = r.observation;
  const standby = standbyOf(r);
  const out: string[] = [];
  out.push(
    `Node ${r.node} — ${r.healthy ? 'healthy' : 'UNHEALTHY'}${r.recommendedRung !== 'none' ? `, recommended action: ${r.recommendedRung}` : ''}  (${r.observedAt})`,
  );
  if (!o.reachable) out.push('  node worker did not answer in time: node unreachable');
  if (o.engines.length) {
    out.push(
      '',
      table(
        ['ENGINE', 'TYPE', 'URL', 'HEALTH', 'VERSION', 'LOADED', 'GEN'],
        o.engines.map((e) => [
          e.name,
          e.type,
          e.url,
          standby.engines.has(e.name)
            ? 'standby'
            : !e.reachable
              ? 'unreachable'
              : e.loading
                ? 'loading'
                : e.healthy
                  ? 'ok'
                  : 'unhealthy',
          e.version,
          e.loaded.join(',') || '-',
          e.generation
            ? e.generation.ok
              ? `ok ${e.generation.ms}ms`
              : `${e.generation.skipped ? 'skipped' : 'FAIL'} ${e.generation.error ?? ''}`
            : '-',
        ]),
      ),
    );
  }
  if (o.containers.length) {
    out.push(
      '',
      table(
        ['CONTAINER', 'STATUS', 'HEALTH', 'EXIT', 'OOM', 'RESTARTS'],
        o.containers.map((c) => [
          c.name,
          standby.containers.has(c.name) ? `standby (${c.status}; ${standby.containers.get(c.name)} serves)` : c.status,
          c.health,
          c.exitCode,
          c.oomKilled,
          c.restartCount,
        ]),
      ),
    );
  }
  if (o.gpuError) out.push('', `GPU: nvidia-smi failed: ${o.gpuError}`);
  if (o.gpus.length) {
    out.push(
      '',
      table(
        ['GPU', 'NAME', 'MEM USED/TOTAL MiB', 'UTIL%', 'TEMP C', 'POWER W', 'ECC UNCORR', 'STATE'],
        o.gpus.map((g) => [
          g.index,
          g.name,
          `${g.memoryUsedMiB ?? '?'}/${g.memoryTotalMiB ?? '?'}`,
          g.utilizationGpuPct,
          g.temperatureC,
          g.powerDrawW === null ? null : `${g.powerDrawW}/${g.powerLimitW ?? '?'}`,
          g.eccUncorrectedVolatile,
          g.lost ? 'LOST' : g.clocksEventReasons.filter((x) => x !== 'gpu_idle').join(',') || 'ok',
        ]),
      ),
    );
  }
  if (o.xids.length)
    out.push(
      '',
      table(
        ['XID', 'PCI', 'TIME', 'MESSAGE'],
        o.xids.map((x) => [x.xid, x.pciBusId, x.time, x.message]),
      ),
    );
  if (r.problems.length) {
    out.push(
      '',
      table(
        ['PROBLEM', 'SUBJECT', 'RUNG', 'DETAIL'],
        r.problems.map((p) => [p.kind, p.subject, p.rung, p.detail]),
      ),
    );
  }
  return out.join('\n');
}

/** "2/2 ok", or "1/1 ok, 1 standby" when a canary slot half is stopped on purpose. */
function engineSummary(r: HealthReport): string {
  const standby = standbyOf(r).engines;
  const active = r.observation.engines.filter((e) => !standby.has(e.name));
  const ok = `${active.filter((e) => e.healthy).length}/${active.length} ok`;
  return standby.size > 0 ? `${ok}, ${standby.size} standby` : ok;
}

/** The summary table, each node's report, then the deployments in progress (when there are any). */
export function renderStatus(reports: HealthReport[], deployments: DeploymentRow[]): string {
  const summary = table(
    ['NODE', 'HEALTH', 'ACTION', 'ENGINES', 'GPUS', 'PROBLEMS'],
    reports.map((r) => [
      r.node,
      r.healthy ? 'healthy' : 'UNHEALTHY',
      r.recommendedRung,
      engineSummary(r),
      r.observation.gpuError ? 'error' : `${r.observation.gpus.filter((g) => !g.lost).length} ok`,
      r.problems.length,
    ]),
  );
  const out = [summary, '', reports.map(renderReport).join('\n\n')];
  if (deployments.length > 0) {
    out.push(
      '',
      'Deployments in progress',
      table(
        ['DEPLOYMENT', 'MODEL', 'STAGE', 'CANARY', 'STARTED'],
        deployments.map((d) => [
          d.workflowId,
          d.model,
          d.stage,
          d.canaryWeight === null ? '-' : `${d.canaryWeight}%`,
          d.startedAt,
        ]),
      ),
    );
  }
  return out.join('\n');
}

export function registerStatusCommand(program: Program): void {
  const globals = (): GlobalOptions => program.opts();
  program
    .command('status [node]')
    .description('probe nodes (inspectNode workflow) and print their health')
    .option('--no-generate', 'skip the test generation on each engine')
    .action(async (node, opts) => {
      const which = { generate: opts.generate, ...(node ? { node } : {}) };
      await withInputs(
        globals(),
        ({ config }) => inspectInputs(config, which),
        async (client, inputs) => {
          const reports = await Promise.all(inputs.map((input) => inspect(client, input)));
          // The deployments in progress are part of the text only: --json prints the reports alone.
          await emit(globals(), reports, async (r) => renderStatus(r, await runningDeployments(client, node)));
        },
      );
    });
}
