/**
 * How deployments started before patch ROUTE_OPS_PATCH change routes, kept so their histories replay: the workflow
 * reads the table (getRoutes), applies the operation and writes it back (putRoutes, If-Match); a conflict means read
 * again, at most 3 times, in the workflow. New deployments use the changeRoute activity, whose retry policy does that.
 */
import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';
import { applyRouteOp, type RouteOp } from '../../src/domain/route-ops';
import type { DeploymentActivities } from './activities';

function failureType(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

/** Read-modify-write of the alias's route with If-Match, from the workflow (histories before ROUTE_OPS_PATCH). */
export async function legacyChangeRoute(
  control: DeploymentActivities['control'],
  { alias, actor }: { alias: string; actor: string },
  op: RouteOp,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const doc = await control.getRoutes();
    const route = doc.routes[alias];
    if (!route) throw ApplicationFailure.nonRetryable(`alias ${alias} is not in the router`, 'UnknownAlias');
    const next = applyRouteOp(route, op);
    if (next === null) return;
    try {
      await control.putRoutes({
        routes: { ...doc.routes, [alias]: next },
        drained: doc.drained,
        ifMatch: doc.etag,
        actor,
      });
      return;
    } catch (err) {
      if (failureType(err) !== 'RouteConflict' || attempt >= 3) throw err;
    }
  }
}
