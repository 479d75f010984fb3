/**
 * Is the running deployment the one the sender of an Update means? The workflow ID `deploy:<node>:<alias>` names an
 * alias, not a deployment: a caller whose start joined someone else's run (the `temporal` CLI joins a running
 * execution of the ID and exits 0) must not promote, approve or roll back that one. Pure; safe in workflows.
 */

/** What the caller expects (the `expect` field of promote, approve and rollback). */
export interface Expectation {
  model?: string | undefined;
  digest?: string | undefined;
  revision?: string | undefined;
  runId?: string | undefined;
}

/** The running deployment as its record and workflowInfo() know it. */
export interface RunningDeployment {
  workflowId: string;
  stage: string;
  model: string;
  /** The pulled digest (vLLM / llama.cpp: the loaded revision); null until the pull or load has finished. */
  digest: string | null;
  /** The pinned digest from the input, if any. */
  expectedDigest: string | null;
  revision: string | null;
  /** This run's ID. */
  runId: string;
  /** The chain's first run ID: a continue-as-new changes `runId`, not this; a caller may have recorded either. */
  firstExecutionRunId: string;
}

const norm = (d: string): string => d.replace(/^sha256:/, '').toLowerCase();

/** Null when `expect` (absent: nothing expected) matches `running`; else why the Update is refused. */
export function expectationRefusal(expect: Expectation | undefined, running: RunningDeployment): string | null {
  if (!expect) return null;
  const r = running;
  const known = r.digest ?? r.expectedDigest;
  const what = [
    r.digest ? `digest ${r.digest}` : r.expectedDigest ? `pinned digest ${r.expectedDigest}` : null,
    r.revision ? `revision ${r.revision}` : null,
    `run ${r.runId}`,
  ].filter((x) => x !== null);
  const is = `the running deployment ${r.workflowId} is ${r.model} (${what.join(', ')})`;
  const wrong: string[] = [];
  if (expect.model !== undefined && expect.model !== r.model) wrong.push(expect.model);
  if (expect.digest !== undefined && known !== null && norm(known) !== norm(expect.digest)) {
    wrong.push(`digest ${expect.digest}`);
  }
  if (expect.revision !== undefined && expect.revision !== r.revision) wrong.push(`revision ${expect.revision}`);
  if (expect.runId !== undefined) {
    const id = expect.runId.toLowerCase();
    if (id !== r.runId.toLowerCase() && id !== r.firstExecutionRunId.toLowerCase()) wrong.push(`run ${expect.runId}`);
  }
  if (wrong.length > 0) return `${is}, not the expected ${wrong.join(', ')}`;
  if (expect.digest !== undefined && known === null) {
    return `${is}: its digest is not known yet (stage ${r.stage}: the pull has not finished and no digest was pinned), so it cannot be checked against the expected digest ${expect.digest}`;
  }
  return null;
}
