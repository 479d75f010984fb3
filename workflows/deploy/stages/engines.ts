/**
 * Undo and clean-up steps on engines that other routes may share: never stop an engine or unload a model that a
 * route (read from the router at the time) still uses, e.g. after an earlier undo step failed.
 */
import { namesModel, sendsTrafficTo } from '../../../src/domain/route-ops';
import type { Deployment } from '../deployment';
import type { Engine } from './plan';

/** What these steps need of an engine: its name (for the node) and URL (as routes name it). */
type EngineRef = Pick<Engine, 'name' | 'url'>;

/** Put a blue/green half in standby unless a route still sends it traffic. */
export async function standbyUnlessRouted(dep: Deployment, engine: EngineRef): Promise<string> {
  if (await dep.routed(sendsTrafficTo(engine.url))) return `kept: a route still sends traffic to ${engine.name}`;
  await dep.acts.node.standbyEngine({ engine: engine.name });
  return 'standby';
}

/** Unload a model from an engine unless a route still names it there; `kept` says why it stayed. */
export async function unloadUnlessRouted(
  dep: Deployment,
  engine: EngineRef,
  model: string,
  kept: string,
): Promise<string> {
  if (await dep.routed(namesModel(engine.url, model))) return kept;
  await dep.acts.node.unloadModel({ engine: engine.name, model });
  return 'unloaded';
}
