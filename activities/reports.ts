/**
 * Deployment reports on the control host: the risk report of each deployModel run as JSON and Markdown under
 * `reportsDir/<workflow id>/<run id>/`, so auditors have a file per decision (the status query links to them).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { RiskReport } from '../src/domain/risk';

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
  return {
    /** Write the risk report; idempotent (a retry rewrites the same files). */
    async writeRiskReport(input: { workflowId: string; runId: string; report: RiskReport }): Promise<WrittenReport> {
      const where = path.join(dir, segment(input.workflowId), segment(input.runId));
      await mkdir(where, { recursive: true });
      const json = path.join(where, 'risk-report.json');
      const markdown = path.join(where, 'risk-report.md');
      const { markdown: md, ...rest } = input.report;
      await writeFile(json, `${JSON.stringify(rest, null, 2)}\n`);
      await writeFile(markdown, md);
      return { json, markdown };
    },
  };
}
