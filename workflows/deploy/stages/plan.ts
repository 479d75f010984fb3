/**
 * Plan: which engine the new version runs on and what it is compared with, from the node's facts and the router's
 * table. Everything here is refused before anything changes (a failed deployment with nothing to undo).
 */
import { ApplicationFailure } from '@temporalio/workflow';
import type { NodeFacts } from '../../../activities/recovery';
import { OLLAMA_MODEL } from '../../../src/contracts';
import { aliasesWhere, sendsTrafficTo } from '../../../src/domain/route-ops';
import type { Variant } from '../../../src/router/routes';
import type { DeployInput, Deployment } from '../deployment';

export type Engine = NodeFacts['engines'][number];

export interface Plan {
  /** The node's engines. */
  engines: Engine[];
  /**
   * Where the new version runs. Ollama: the named engine itself, a second tag. vLLM / llama.cpp: the half of the
   * engine's blue/green pair that the stable route does not point at.
   */
  slot: Engine;
  /** The alias's stable variant when the deployment began: what the canary is compared with and rolled back to. */
  stable: Variant;
  /** What provenance counts as pinned: an Ollama digest, or a full HF commit id as the revision. */
  pinned: string | null;
}

function invalid(message: string): never {
  throw ApplicationFailure.nonRetryable(message, 'ValidationError');
}

/** Read the node's engines and the alias's route; refuse what cannot be deployed; answer where it runs. */
export async function plan(dep: Deployment): Promise<Plan> {
  const { input } = dep;
  const facts = await dep.acts.control.nodeFacts({ node: input.node });
  const engine = facts.engines.find((e) => e.name === input.engine);
  if (!engine) invalid(`engine: must be one of ${facts.engines.map((e) => e.name).join(', ')} (got "${input.engine}")`);
  if (engine.type === 'ollama' && !OLLAMA_MODEL.test(input.model)) {
    invalid(`model: must be name:tag for an Ollama engine, e.g. qwen2.5:0.5b (got "${input.model}")`);
  }
  const { routes } = await dep.acts.control.getRoutes();
  const stable = routes[input.alias]?.variants.find((v) => v.name === 'stable');
  if (!stable) {
    throw ApplicationFailure.nonRetryable(
      `alias ${input.alias} has no "stable" variant in the router: a canary needs a stable version to compare with`,
      'UnknownAlias',
    );
  }
  dep.status.stable = { model: stable.model, engine: stable.engine };
  if (engine.type === 'ollama' && stable.engine === engine.url && stable.model === input.model) {
    // Pulling the same tag would overwrite the serving model in place: no canary, and nothing to roll back to.
    invalid(
      `model: ${input.model} already serves ${input.alias} on ${engine.name}; deploy a new tag (pin it with expectedDigest)`,
    );
  }
  const slot = slotFor(engine, facts.engines, stable, input.alias);
  if (slot.type !== 'ollama') {
    const users = aliasesWhere(routes, sendsTrafficTo(slot.url));
    if (users.length > 0) {
      invalid(
        `engine: the canary slot ${slot.name} serves ${users.join(', ')}; free it (route those aliases elsewhere) first`,
      );
    }
    if (input.expectedDigest) {
      invalid(
        `expectedDigest: pins an Ollama manifest digest; for ${slot.type} pin the HF commit with revision (40 hex)`,
      );
    }
  }
  return { engines: facts.engines, slot, stable, pinned: pinnedBy(slot, input) };
}

/** The engine the new version runs on (see Plan.slot). */
function slotFor(engine: Engine, engines: Engine[], stable: Variant, alias: string): Engine {
  if (engine.type === 'ollama') return engine;
  const partner = engines.find((e) => e.name === engine.canarySlot);
  if (!partner) {
    invalid(
      `engine: ${engine.name} is ${engine.type} and has no canarySlot in gpuops.yaml (one model per container: the canary needs its own)`,
    );
  }
  if (stable.engine !== engine.url && stable.engine !== partner.url) {
    invalid(
      `alias ${alias}: its stable variant (${stable.engine}) is on neither ${engine.name} nor its slot ${partner.name}`,
    );
  }
  return stable.engine === partner.url ? engine : partner;
}

function pinnedBy(slot: Engine, input: DeployInput): string | null {
  if (slot.type === 'ollama') return input.expectedDigest ?? null;
  return input.revision && /^[0-9a-f]{40}$/.test(input.revision) ? input.revision : null;
}
