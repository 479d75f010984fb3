/**
 * inspectNode — one round of health probes on a node, run ON the node (its pinned task queue), classified into a
 * typed health report. The smallest workflow that proves the whole path: control worker → node worker → host
 * tools (docker, nvidia-smi, kernel log, engine HTTP) → pure classification.
 */
import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import type { HealthReport } from '../src/domain/classify';
import { parseInput } from '../src/domain/validation';
import { InspectNodeInput, SEARCH_ATTRIBUTES, nodeTaskQueue } from '../src/contracts';
import { probeNode } from './probe';

/**
 * Probe a node and return its health report: engines, containers, GPUs, Xid events, disks, and the classified
 * problems with the recovery rung each calls for. Start it from the UI or:
 * `temporal workflow start --type inspectNode --task-queue gpuops-control --input '{"node":"sandbox-1"}'`.
 */
export async function inspectNode(rawInput: InspectNodeInput): Promise<HealthReport> {
  const input = parseInput(InspectNodeInput, rawInput, 'inspectNode input');
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.node, value: input.node }]);
  setCurrentDetails(`Probing node **${input.node}** on queue \`${nodeTaskQueue(input.node)}\``);

  const report = await probeNode(input.node, {
    generate: input.generate,
    expectedGpus: input.expectedGpus,
    xidSince: input.xidSince ?? new Date(Date.now() - 10 * 60_000).toISOString(),
    pickupTimeout: input.pickupTimeout,
    probeTimeout: input.probeTimeout,
  });
  setCurrentDetails(
    `Node **${input.node}**: ${report.healthy ? 'healthy' : 'UNHEALTHY'}; recommended rung: ${report.recommendedRung}` +
      (report.problems.length
        ? `\n\n${report.problems.map((p) => `- ${p.kind} (${p.subject}): ${p.detail}`).join('\n')}`
        : ''),
  );
  return report;
}
