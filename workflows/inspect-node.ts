/**
 * inspectNode — one round of health probes on a node, run ON the node (its pinned task queue), classified into a
 * typed health report. The smallest workflow that proves the whole path: control worker → node worker → host
 * tools (docker, nvidia-smi, kernel log, engine HTTP) → pure classification.
 */
import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { z } from 'zod';
import { DurationSchema, gpuopsId } from '../src/domain/schemas';
import type { HealthReport } from '../src/domain/classify';
import { parseInput } from '../src/domain/validation';
import { SEARCH_ATTRIBUTES, nodeTaskQueue } from '../src/messages';
import { probeNode } from './probe';

export const InspectNodeInput = z.strictObject({
  /** Node id from gpuops.yaml. */
  node: gpuopsId('a node id'),
  /** Also run a tiny real generation on each engine (catches an engine that answers /health but hangs). */
  generate: z.boolean().default(true),
  /** GPUs the node should show; fewer means one fell off the bus. */
  expectedGpus: z.int().min(0).optional(),
  /** Only Xid events after this time (ISO) count; default: the last 10 minutes. */
  xidSince: z.string().optional(),
  /** How long the node worker has to pick up a probe before the node counts as unreachable. */
  pickupTimeout: DurationSchema.default('30s'),
  /** How long one probe may run once picked up. */
  probeTimeout: DurationSchema.default('20s'),
});
export type InspectNodeInput = z.input<typeof InspectNodeInput>;

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
