/**
 * Risk: rate the version from what validation measured (provenance, golden and safety results, resources), write the
 * report files, refuse a high tier, and hold a medium one for a human's approve.
 */
import { workflowInfo } from '@temporalio/workflow';
import { policySets } from '../../../src/domain/deploy-policy';
import { assessRisk as rate, type RiskTier } from '../../../src/domain/risk';
import { Rollback, fromNow, type Deployment } from '../deployment';
import type { Plan } from './plan';
import type { Checks } from './validate';

/** Rate the risk and write its report; high rolls back, medium waits at the approval gate. */
export async function assessRisk(dep: Deployment, plan: Plan, checks: Checks): Promise<void> {
  const { input, policy, status } = dep;
  dep.stage('assessing-risk', 'rating risk');
  const risk = rate({
    model: input.model,
    alias: input.alias,
    node: input.node,
    provenance: {
      digest: status.digest,
      expectedDigest: plan.pinned,
      source: checks.provenance.source,
      allowedSources: policy.allowedSources,
      license: checks.provenance.license,
    },
    golden: checks.golden,
    safety: checks.safety,
    safetyProbesRun: input.safetyProbes,
    resources: {
      ...checks.resources,
      modelBytes: checks.resources.modelBytes ?? status.pull?.sizeBytes ?? null,
      memoryCapPct: policy.memoryCapPct,
    },
    requestedBy: input.requestedBy,
    ...(policy.risk ? { rules: policy.risk } : {}),
    sets: policySets(policy, input.safetyProbes),
  });
  status.risk = risk;
  status.riskTier = risk.tier;
  const { workflowId, runId } = workflowInfo();
  status.reports = await dep.acts.control.writeRiskReport({ workflowId, runId, report: risk });
  if (risk.tier === 'high') {
    const high = risk.findings.filter((f) => f.tier === 'high').map((f) => f.detail);
    throw new Rollback('risk assessment', `risk tier high: ${high.join('; ')}`);
  }
  await approvalGate(dep, risk.tier);
}

/**
 * The gate before any traffic moves: a medium tier waits for approve (up to approvalTimeout); every tier stops here
 * when a rollback was requested.
 */
async function approvalGate(dep: Deployment, tier: RiskTier): Promise<void> {
  const { approvalTimeout } = dep.policy;
  const needed = tier === 'medium';
  if (needed) {
    dep.stage(
      'awaiting-approval',
      `medium risk: waiting up to ${approvalTimeout} for approve`,
      fromNow(approvalTimeout),
    );
  }
  const approved = await dep.waitFor(() => !needed || dep.approval !== null, approvalTimeout);
  if (!approved) throw new Rollback('deployModel', `no approve within ${approvalTimeout} for a medium-risk version`);
  if (needed) dep.status.approvedBy = dep.approval?.by ?? null;
}
