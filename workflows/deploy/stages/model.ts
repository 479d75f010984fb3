/**
 * The new version onto its engine: pre-flight (disk), then Ollama pulls it as a second tag on the engine, or vLLM /
 * llama.cpp load it in the canary slot; its digest is checked against the pin and its GPU memory against the cap.
 * Each step that changed the node adds its undo to the saga.
 */
import { Rollback, type Deployment } from '../deployment';
import { addUndo, engineRef } from '../undo';
import type { Engine, Plan } from './plan';

/** Answers the model name the engine serves the new version as. */
export async function stageModel(dep: Deployment, plan: Plan): Promise<string> {
  const { input, policy, status } = dep;
  dep.stage('preflight', 'checking the model stores have room');
  const disk = await dep.acts.node.preflightDisk({ minFreeGiB: policy.minFreeDiskGiB });
  status.preflight.disk = disk;
  if (!disk.ok) throw new Rollback('pre-flight', `disk: ${disk.detail}`);

  const served = plan.slot.type === 'ollama' ? await pull(dep, plan.slot) : await loadSlot(dep, plan.slot);
  status.canary = { engine: plan.slot.name, url: plan.slot.url, model: served };
  const norm = (d: string): string => d.replace(/^sha256:/, '').toLowerCase();
  if (input.expectedDigest && (!status.digest || norm(status.digest) !== norm(input.expectedDigest))) {
    throw new Rollback('pre-flight', `digest ${status.digest ?? '(none)'} is not the pinned ${input.expectedDigest}`);
  }

  dep.stage('preflight', `checking ${input.model} fits GPU memory under the ${policy.memoryCapPct}% cap`);
  const memory = await dep.acts.node.preflightGpuMemory({
    engine: plan.slot.name,
    model: served,
    memoryCapPct: policy.memoryCapPct,
  });
  status.preflight.memory = memory;
  if (!memory.fits) throw new Rollback('pre-flight', `GPU memory: ${memory.detail}`);
  return served;
}

/** Ollama: pull the tag (a retry resumes from the partial blobs). */
async function pull(dep: Deployment, engine: Engine): Promise<string> {
  const { input, policy, status } = dep;
  dep.stage('pulling', `pulling ${input.model}`);
  const pulled = await dep.acts.modelPull.pullModel({
    engine: engine.name,
    model: input.model,
    minFreeGiB: policy.minFreeDiskGiB,
  });
  status.digest = pulled.digest;
  const { resumedFromBytes, alreadyPresent, sizeBytes } = pulled;
  status.pull = { resumedFromBytes, alreadyPresent, sizeBytes };
  // The pulled model stays in the store unless the policy says remove (and this deployment pulled it).
  const ref = engineRef(engine);
  if (policy.removePulledOnRollback && !pulled.alreadyPresent) {
    addUndo(dep, { undo: 'delete-model', engine: ref, model: input.model });
  }
  addUndo(dep, {
    undo: 'unload-model',
    engine: ref,
    model: input.model,
    kept: `kept: a route still uses ${input.model}`,
  });
  return input.model;
}

/** vLLM / llama.cpp: start the canary slot with the new version. */
async function loadSlot(dep: Deployment, slot: Engine): Promise<string> {
  const { input } = dep;
  const { control, modelPull } = dep.acts;
  dep.stage('loading-canary-slot', `starting ${slot.name} with ${input.model}`);
  // vLLM opens its port only once the model is loaded: pause the watcher for the slot, or it would "recover"
  // (restart) the container mid-load.
  const pause = { node: input.node, engine: slot.name, by: dep.actor };
  addUndo(dep, { undo: 'end-slot-maintenance', engine: engineRef(slot) });
  await control.setWatchMaintenance({
    ...pause,
    reason: `deployModel loading ${input.model}`,
    duration: input.pullTimeout,
  });
  addUndo(dep, { undo: 'stop-slot', engine: engineRef(slot) });
  const loaded = await modelPull.loadCanarySlot({
    engine: slot.name,
    model: input.model,
    ...(input.revision ? { revision: input.revision } : {}),
  });
  dep.status.digest = loaded.revision;
  await control.setWatchMaintenance({ ...pause, reason: 'canary slot loaded', clear: true });
  return loaded.model;
}
