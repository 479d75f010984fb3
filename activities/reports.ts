/**
 * Deployment reports on the control host, under `reportsDir/<workflow id>/<run id>/` so auditors have a file per
 * decision (the status query links to them): the risk report of each deployModel run as JSON and Markdown, and
 * when the run ends its deployment page as one self-contained HTML file (src/reports/deployment-page.ts).
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DeploymentStatus } from '../src/contracts/deploy';
import type { RiskReport } from '../src/domain/risk';
import { renderDeploymentPage, type PageThresholds } from '../src/reports/deployment-page';

export interface ReportActivityDeps {
  /** Absolute reports directory. */
  dir: string;
}

export interface WrittenReport {
  json: string;
  markdown: string;
}

/** A workflow or run id as one safe path segment (`deploy:n1:chat` → `deploy_n1_chat`). */
function segment(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 200);
}

export function createReportActivities({ dir }: ReportActivityDeps) {
  const runDir = async (workflowId: string, runId: string): Promise<string> => {
    const where = path.join(dir, segment(workflowId), segment(runId));
    await mkdir(where, { recursive: true });
    return where;
  };
  return {
    /** Write the risk report; idempotent (a retry rewrites the same files). */
    async writeRiskReport(input: { workflowId: string; runId: string; report: RiskReport }): Promise<WrittenReport> {
      const where = await runDir(input.workflowId, input.runId);
      const json = path.join(where, 'risk-report.json');
      const markdown = path.join(where, 'risk-report.md');
      const { markdown: md, ...rest } = input.report;
      await writeFile(json, `${JSON.stringify(rest, null, 2)}\n`);
      await writeFile(markdown, md);
      return { json, markdown };
    },

    /**
     * Write the deployment page (`deployment.html`) of a finished run from its record and its policy's thresholds.
     * Idempotent; written to a temporary name and renamed, so a reader never sees half a page.
     */
    async writeDeploymentReport(input: {
      workflowId: string;
      runId: string;
      status: DeploymentStatus;
      thresholds: PageThresholds;
    }): Promise<{ html: string }> {
      const where = await runDir(input.workflowId, input.runId);
      const html = path.join(where, 'deployment.html');
      const partial = `${html}.partial`;
      await writeFile(partial, renderDeploymentPage(input));
      await rename(partial, html);
      return { html };
    },
  };
}
