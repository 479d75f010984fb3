/**
 * The route changes a deployment makes, as pure operations on one alias's route. The workflow names the operation;
 * one activity (changeRoute) reads the route table, applies it here and writes the table back with If-Match, so a
 * concurrent change is never overwritten: the activity is retried and applies the operation to the new table.
 * Pure; safe in workflows.
 */
import type { AliasRoute, Variant } from '../router/routes';

/** One change to an alias's route. */
export type RouteOp =
  /** Add (or replace) the `canary` variant at its weight; `stable` gets the rest. */
  | { op: 'addCanary'; canary: Variant }
  /** Remove the `canary` variant; `stable` back to 100. */
  | { op: 'removeCanary' }
  /** The canary becomes `stable` at 100; the old stable stays defined at weight 0 as `previous` (rollback by switch). */
  | { op: 'promote'; canary: Variant }
  /** `previous` back to `stable` at 100; the promoted version and any canary removed. */
  | { op: 'revertToPrevious' }
  /** Remove `previous` (the rollback window is over). */
  | { op: 'dropPrevious' }
  /**
   * The shadow stage: the `canary` variant defined at weight 0 (stable at 100) and `shadow` mirroring `percent` of
   * the alias's requests to it, at most `maxConcurrent` at a time.
   */
  | { op: 'addShadow'; canary: Variant; percent: number; maxConcurrent: number }
  /** Stop mirroring (the variants stay as they are). */
  | { op: 'removeShadow' };

export const addCanary = (canary: Variant): RouteOp => ({ op: 'addCanary', canary });
export const removeCanary = (): RouteOp => ({ op: 'removeCanary' });
export const promote = (canary: Variant): RouteOp => ({ op: 'promote', canary });
export const revertToPrevious = (): RouteOp => ({ op: 'revertToPrevious' });
export const dropPrevious = (): RouteOp => ({ op: 'dropPrevious' });
export const addShadow = (canary: Variant, percent: number, maxConcurrent: number): RouteOp => ({
  op: 'addShadow',
  canary: { ...canary, weight: 0 },
  percent,
  maxConcurrent,
});
export const removeShadow = (): RouteOp => ({ op: 'removeShadow' });

const named =
  (...names: string[]) =>
  (v: Variant): boolean =>
    names.includes(v.name);
const not =
  (pred: (v: Variant) => boolean) =>
  (v: Variant): boolean =>
    !pred(v);

/**
 * The route after `op`, or null when the operation has nothing to do (already applied, or nothing to remove): a
 * retry after a write that landed but whose answer was lost finds it done. `addCanary` always answers a route.
 */
export function applyRouteOp(route: AliasRoute, op: RouteOp): AliasRoute | null {
  const vs = route.variants;
  if (op.op === 'addShadow') {
    const { percent, maxConcurrent } = op;
    const next = applyRouteOp(route, { op: 'addCanary', canary: { ...op.canary, weight: 0 } });
    return next && { ...next, shadow: { variant: 'canary', percent, maxConcurrent } };
  }
  if (op.op === 'removeShadow') return route.shadow ? withoutShadow(route) : null;
  // A shadow mirrors to the canary variant: whatever else is done to the alias leaves no mirroring behind.
  if (route.shadow) return applyRouteOp(withoutShadow(route), op) ?? withoutShadow(route);
  switch (op.op) {
    case 'addCanary':
      return {
        ...route,
        variants: [
          ...vs
            .filter(not(named('canary')))
            .map((v) => (v.name === 'stable' ? { ...v, weight: 100 - op.canary.weight } : v)),
          op.canary,
        ],
      };
    case 'removeCanary':
      if (!vs.some(named('canary'))) return null;
      return {
        ...route,
        variants: vs.filter(not(named('canary'))).map((v) => ({ ...v, weight: v.name === 'stable' ? 100 : v.weight })),
      };
    case 'promote':
      if (vs.some((v) => v.name === 'stable' && v.engine === op.canary.engine && v.model === op.canary.model))
        return null;
      return {
        ...route,
        variants: [
          { ...op.canary, name: 'stable', weight: 100 },
          ...vs.filter(named('stable')).map((v) => ({ ...v, name: 'previous', weight: 0 })),
          ...vs.filter(not(named('stable', 'canary', 'previous'))),
        ],
      };
    case 'revertToPrevious': {
      const prev = vs.find(named('previous'));
      if (!prev) return null;
      return {
        ...route,
        variants: [{ ...prev, name: 'stable', weight: 100 }, ...vs.filter(not(named('previous', 'stable', 'canary')))],
      };
    }
    case 'dropPrevious':
      if (!vs.some(named('previous'))) return null;
      return { ...route, variants: vs.filter(not(named('previous'))) };
  }
}

function withoutShadow(route: AliasRoute): AliasRoute {
  const { shadow: _, ...rest } = route;
  return rest;
}

/** The stable/canary weights the alias has once `op` is applied (null: the operation does not move traffic). */
export function weightsAfter(op: RouteOp): { stable: number; canary: number } | null {
  if (op.op === 'addCanary') return { stable: 100 - op.canary.weight, canary: op.canary.weight };
  if (op.op === 'dropPrevious' || op.op === 'removeShadow') return null;
  return { stable: 100, canary: 0 };
}

/** Are two routes the same (variants in order, field by field)? A write that would change nothing is skipped. */
export function sameRoute(a: AliasRoute, b: AliasRoute): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, v]) => v !== undefined)
        .sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))
        .map(([k, v]) => [k, canonical(v)]),
    );
  }
  return value;
}

/** The aliases with a variant that satisfies `pred`. */
export function aliasesWhere(routes: Record<string, AliasRoute>, pred: (v: Variant) => boolean): string[] {
  return Object.entries(routes)
    .filter(([, r]) => r.variants.some(pred))
    .map(([alias]) => alias);
}

/** Does any route send traffic (weight > 0) to this engine URL? */
export const sendsTrafficTo =
  (url: string) =>
  (v: Variant): boolean =>
    v.engine === url && v.weight > 0;

/** Does a variant name this model on this engine (at any weight)? */
export const namesModel =
  (url: string, model: string) =>
  (v: Variant): boolean =>
    v.engine === url && v.model === model;
