/**
 * Deployments as Temporal's visibility store shows them: read by `gpuops status` (the deployments in progress) and
 * by whoever steers them, without asking a worker.
 */
import type { Client } from '@temporalio/client';
import { SEARCH_ATTRIBUTES, deployModelWorkflow } from '../contracts';

/** A running deployment as its search attributes show it (no worker needed to answer). */
export interface DeploymentRow {
  workflowId: string;
  node: string;
  alias: string;
  model: string;
  stage: string;
  canaryWeight: number | null;
  startedAt: string;
}

/** Running deployModel workflows (of one node, or all), from visibility. */
export async function runningDeployments(client: Client, node?: string): Promise<DeploymentRow[]> {
  const query =
    `WorkflowType = '${deployModelWorkflow.workflowType}' AND ExecutionStatus = 'Running'` +
    (node ? ` AND ${SEARCH_ATTRIBUTES.node.name} = '${node.replace(/'/g, '')}'` : '');
  const rows: DeploymentRow[] = [];
  for await (const w of client.workflow.list({ query })) {
    const sa = w.searchAttributes as Record<string, unknown[] | undefined>;
    const first = (k: { name: string }): unknown => sa[k.name]?.[0];
    const weight = first(SEARCH_ATTRIBUTES.canaryWeight);
    rows.push({
      workflowId: w.workflowId,
      node: String(first(SEARCH_ATTRIBUTES.node) ?? ''),
      alias: String(first(SEARCH_ATTRIBUTES.alias) ?? ''),
      model: String(first(SEARCH_ATTRIBUTES.model) ?? ''),
      stage: String(first(SEARCH_ATTRIBUTES.stage) ?? 'starting'),
      canaryWeight: typeof weight === 'number' ? weight : null,
      startedAt: w.startTime.toISOString(),
    });
  }
  return rows;
}
