/**
 * Promotion: 100% to the new version, the old one kept defined (weight 0, `previous`) and warm through the rollback
 * window, so going back is a route switch; after the window the old version's route and memory are freed.
 */
import { CancellationScope } from '@temporalio/workflow';
import { parseDuration } from '../../../src/domain/durations';
import { dropPrevious, namesModel, promote as promoteOp, revertToPrevious } from '../../../src/domain/route-ops';
import { recordStep } from '../../saga';
import type { Deployment } from '../deployment';
import { canaryVariant } from './canary';
import { standbyUnlessRouted, unloadUnlessRouted } from './engines';
import type { Engine, Plan } from './plan';

/** Send 100% to the new version, keep the old as `previous`; a rollback from here is the route switch back. */
export async function promote(dep: Deployment, plan: Plan, served: string): Promise<void> {
  const { slot, stable: old } = plan;
  dep.stage('promoting', 'sending 100% to the new version');
  await dep.moveWeights(100);
  // Idempotent: a retry after a write that landed (but whose answer was lost) finds the route promoted already.
  await dep.changeRoute(promoteOp(canaryVariant(plan, served, 100)));
  dep.status.promotedBy = dep.promotion?.by ?? 'auto (policy autoPromote)';
  // From here a rollback is a route switch back to the old version, then the new one is unloaded / stopped.
  dep.saga.reset();
  if (slot.type === 'ollama') {
    dep.saga.add(`unload ${served} from ${slot.name}`, () =>
      unloadUnlessRouted(dep, slot, served, `kept: another route uses ${served}`),
    );
  } else {
    dep.saga.add(`stop ${slot.name} (new version)`, () => standbyUnlessRouted(dep, slot));
  }
  dep.saga.add(`route: ${old.model} back to stable at 100, ${served} removed`, async () => {
    await dep.changeRoute(revertToPrevious());
    return `routes switched back to ${old.model}`;
  });
}

/** The engine of the node that served the old version (none when it ran elsewhere). */
const oldEngineOf = (plan: Plan): Engine | undefined => plan.engines.find((e) => e.url === plan.stable.engine);

/** Keep the old version warm for the rollback window and wait it out; a rollback in it is the route switch. */
export async function rollbackWindow(dep: Deployment, plan: Plan): Promise<void> {
  const old = plan.stable;
  const oldEngine = oldEngineOf(plan);
  const windowMs = parseDuration(dep.policy.rollbackWindow);
  // Keep the old version warm through the window: the rollback must not be a cold load.
  if (oldEngine?.type === 'ollama') {
    await dep.acts.node.keepModelLoaded({ engine: oldEngine.name, model: old.model, keepAlive: -1 });
  }
  const endsAt = new Date(Date.now() + windowMs).toISOString();
  dep.status.rollbackWindowEndsAt = endsAt;
  dep.stage(
    'rollback-window',
    `${dep.input.model} serves 100%; ${old.model} stays loaded until ${endsAt} for a rollback`,
    endsAt,
  );
  // Cancelling during the window ends it early: the promotion stands (send rollback to go back).
  await dep.waitFor(() => false, windowMs, { cancelEndsWait: true });
  dep.closeWindow();
}

/** The window is over: drop the `previous` route and free the old version (unless another route uses it). */
export function cleanUp(dep: Deployment, plan: Plan): Promise<void> {
  const { cleanup } = dep.status;
  const old = plan.stable;
  const oldEngine = oldEngineOf(plan);
  return CancellationScope.nonCancellable(async () => {
    dep.saga.reset();
    await recordStep(cleanup, 'route: remove the previous variant', async () => {
      await dep.changeRoute(dropPrevious());
      return 'removed';
    });
    if (!oldEngine) {
      const detail = `${old.engine} is not an engine of ${dep.input.node}: unload it there`;
      cleanup.push({ step: `unload ${old.model}`, ok: false, detail });
      return;
    }
    await recordStep(cleanup, `unload ${old.model} from ${oldEngine.name}`, () => freeOld(dep, oldEngine, old.model));
  });
}

async function freeOld(dep: Deployment, engine: Engine, model: string): Promise<string> {
  const kept = `kept: another route uses ${model}`;
  if (engine.type === 'ollama') return unloadUnlessRouted(dep, engine, model, kept);
  if (await dep.routed(namesModel(engine.url, model))) return kept;
  await dep.acts.node.standbyEngine({ engine: engine.name });
  return `${engine.name} stopped (standby slot)`;
}
