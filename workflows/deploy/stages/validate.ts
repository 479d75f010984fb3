/**
 * Validation on the node, before any traffic: golden prompts (answers checked, streamed to measure TTFT and tokens/s
 * against the latency SLOs), all of the model in VRAM, safety probes, resources and provenance for the risk rating.
 */
import { checkLatencySlos } from '../../../src/domain/slo';
import type { PromptResult } from '../../../src/domain/risk';
import type { DeploymentActivities } from '../activities';
import { Rollback, type Deployment } from '../deployment';
import type { Plan } from './plan';

type Node = DeploymentActivities['node'];

/** What validation measured, for the risk assessment and the canary's synthetic traffic. */
export interface Checks {
  golden: PromptResult[];
  safety: PromptResult[];
  resources: Awaited<ReturnType<Node['checkModelResources']>>;
  provenance: Awaited<ReturnType<Node['modelProvenance']>>;
}

/** Validate the served model on its engine; a missed SLO or CPU offload rolls back before any traffic. */
export async function validate(dep: Deployment, plan: Plan, served: string): Promise<Checks> {
  const { input, policy, status } = dep;
  const { node } = dep.acts;
  dep.stage('validating', 'golden prompts and safety probes on the node');
  const check = { engine: plan.slot.name, model: served };
  const golden = await node.runGoldenPrompts(policy.golden ? { ...check, golden: policy.golden } : check);
  // The golden prompts loaded the model: did all of it land in VRAM?
  const offload = await node.checkModelOffload(check);
  status.preflight.offload = { cpuPct: offload.cpuPct, detail: offload.detail };
  if (offload.cpuPct > 0) throw new Rollback('pre-flight', `CPU offload: ${offload.detail}`);
  const slo = checkLatencySlos(golden, {
    ttftP95Ms: policy.validationTtftP95Ms,
    minTokensPerSecond: policy.validationMinTokensPerSecond,
  });
  status.latency = slo;
  if (!slo.ok) {
    status.validation = golden;
    throw new Rollback('validation', slo.detail);
  }
  // The policy's safety set travels only when it has one: inputs from before it existed send what they sent.
  const probes = policy.safety ? { ...check, safety: policy.safety } : check;
  const safety = input.safetyProbes ? await node.runSafetyProbes(probes) : [];
  const resources = await node.checkModelResources(check);
  const provenance = await node.modelProvenance(check);
  status.validation = [...golden, ...safety];
  return { golden, safety, resources, provenance };
}
