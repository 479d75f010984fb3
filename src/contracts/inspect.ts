/** inspectNode's contract. Workflow-safe. */
import { z } from 'zod';
import type { HealthReport } from '../domain/classify';
import { DurationSchema, gpuopsId } from '../domain/schemas';
import { workflowContract } from './common';

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

/** inspectNode, by typed reference. */
export const inspectNodeWorkflow = workflowContract<InspectNodeInput, HealthReport>('inspectNode');
