/**
 * Model deployment. `deployModel` pulls a new model version onto a node (Ollama: a second tag on the same engine;
 * vLLM / llama.cpp: the engine's canary slot container), checks it fits (disk, GPU memory under the cap, no CPU
 * offload), validates it there (golden prompts, safety probes), rates its risk, then moves traffic to it in canary
 * steps through the router — analysing canary against stable in the same window every analysisInterval, so a breach
 * rolls back mid-step — and promotes it, keeping the old version loaded for a rollback window. Any rollback is a
 * saga that undoes each change in reverse, even when the workflow is cancelled, and records what could not be undone.
 *
 * The state and its one writer is {@link Deployment}; each stage is a function of it in ./stages.
 */
import type { DeployModelInput, DeploymentStatus } from '../../src/contracts';
import { Deployment } from './deployment';
import { resumed, type Prepared } from './resume';
import { canary, awaitPromotion } from './stages/canary';
import { stageModel } from './stages/model';
import { plan } from './stages/plan';
import { cleanUp, promote, rollbackWindow } from './stages/promote';
import { assessRisk } from './stages/risk';
import { shadow } from './stages/shadow';
import { validate } from './stages/validate';

/**
 * Deploy a model version to an alias as a canary: pull → pre-flight → validate → risk → [shadow] → canary steps → promote →
 * rollback window, or roll back. ID `deploy:<node>:<alias>` (one at a time; start with conflict policy FAIL).
 * Updates `approve`, `promote`, `rollback`; Query `status`. Returns the audit record.
 */
export async function deployModel(input: DeployModelInput): Promise<DeploymentStatus> {
  const dep = Deployment.start(input);
  try {
    // A run continued as new (./resume.ts) skips the stages its first run finished.
    const prepared = resumed(dep) ?? (await prepare(dep));
    const { where, served } = prepared;
    await shadow(dep, prepared);
    await canary(dep, prepared);
    await awaitPromotion(dep);
    await promote(dep, where, served);
    await rollbackWindow(dep, where);
    await cleanUp(dep, where);
    dep.complete();
  } catch (err) {
    await dep.abort(err);
  }
  return dep.finish();
}

/** The stages before any traffic moves: where the new version runs, what it serves as, its golden answers. */
async function prepare(dep: Deployment): Promise<Prepared> {
  const where = await plan(dep);
  const served = await stageModel(dep, where);
  const checks = await validate(dep, where, served);
  await assessRisk(dep, where, checks);
  return { where, served, golden: checks.golden };
}
