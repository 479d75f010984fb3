/**
 * The rollback saga's undos before promotion, as data (DeployUndo) turned into the step the saga runs. The stages
 * register them here, and a run that continues as new rebuilds the same undos from the same data, so a rollback
 * after the boundary undoes what the runs before it did.
 */
import type { DeployUndo } from '../../src/contracts';
import { removeCanary } from '../../src/domain/route-ops';
import type { SagaStep } from '../saga';
import type { Deployment } from './deployment';
import { standbyUnlessRouted, unloadUnlessRouted } from './stages/engines';

/** The undo's step as the record names it, and what it does. */
function undoStep(dep: Deployment, u: DeployUndo): { step: string; run: SagaStep } {
  switch (u.undo) {
    case 'delete-model':
      return {
        step: `delete ${u.model} from ${u.engine.name}`,
        run: async () =>
          (await dep.acts.node.deleteModel({ engine: u.engine.name, model: u.model })) ? 'deleted' : 'gone',
      };
    case 'unload-model':
      return {
        step: `unload ${u.model} from ${u.engine.name}`,
        run: () => unloadUnlessRouted(dep, u.engine, u.model, u.kept),
      };
    case 'end-slot-maintenance': {
      const pause = { node: dep.input.node, engine: u.engine.name, by: dep.actor };
      return {
        step: `end the watcher's maintenance window on ${u.engine.name}`,
        run: async () =>
          (await dep.acts.control.setWatchMaintenance({ ...pause, reason: 'deployModel done', clear: true })).detail,
      };
    }
    case 'stop-slot':
      return { step: `stop the canary slot ${u.engine.name}`, run: () => standbyUnlessRouted(dep, u.engine) };
    case 'remove-canary':
      return {
        step: 'route: remove the canary variant, stable back to 100',
        run: async () => {
          await dep.changeRoute(removeCanary());
          return 'stable only';
        },
      };
    case 'canary-weight-0':
      return {
        step: 'route: canary weight 0',
        run: async () => {
          await dep.moveWeights(0);
          return 'canary weight 0';
        },
      };
  }
}

/** Register an undo with the saga, its data kept beside it (what continue-as-new carries). */
export function addUndo(dep: Deployment, u: DeployUndo): void {
  const { step, run } = undoStep(dep, u);
  dep.saga.add(step, run, u);
}

/** An engine as an undo names it (its name and URL only: what the undos use, and all a resumed run needs). */
export const engineRef = (e: { name: string; url: string }): { name: string; url: string } => ({
  name: e.name,
  url: e.url,
});
