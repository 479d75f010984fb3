import {
  addCanary,
  addShadow,
  aliasesWhere,
  applyRouteOp,
  dropPrevious,
  namesModel,
  promote,
  removeCanary,
  removeShadow,
  revertToPrevious,
  sameRoute,
  sendsTrafficTo,
  weightsAfter,
  type RouteOp,
} from '../../src/domain/route-ops';
import type { AliasRoute, Variant } from '../../src/router/routes';

const OLD = 'http://10.0.0.5:11434';
const NEW = 'http://10.0.0.6:8000';
const v = (name: string, engine: string, model: string, weight: number): Variant => ({
  name,
  engine,
  engineType: engine === OLD ? 'ollama' : 'vllm',
  model,
  weight,
});
const stable = v('stable', OLD, 'llama3.2:1b', 100);
const shadow = v('shadow', OLD, 'llama3.2:3b', 0);
const canary = v('canary', NEW, 'org/new', 10);
const route = (...variants: Variant[]): AliasRoute => ({ variants, stickyHeader: 'x-session' });

/** Apply each op in turn, as the activity would (a null answer leaves the route as it was). */
const run = (r: AliasRoute, ...ops: RouteOp[]): AliasRoute => ops.reduce((cur, op) => applyRouteOp(cur, op) ?? cur, r);

test('addCanary gives the canary its weight and stable the rest, leaves other variants and the route settings alone', () => {
  expect(applyRouteOp(route(stable, shadow), addCanary(canary))).toEqual(
    route({ ...stable, weight: 90 }, shadow, canary),
  );
});

test('addCanary replaces a canary left behind (a retry, or an earlier deployment) instead of adding a second one', () => {
  const left = v('canary', NEW, 'org/older', 50);
  expect(applyRouteOp(route({ ...stable, weight: 50 }, left), addCanary(canary))).toEqual(
    route({ ...stable, weight: 90 }, canary),
  );
});

test('removeCanary takes the canary out and gives stable 100; without a canary it has nothing to do', () => {
  const r = route({ ...stable, weight: 90 }, shadow, canary);
  expect(applyRouteOp(r, removeCanary())).toEqual(route(stable, shadow));
  expect(applyRouteOp(route(stable), removeCanary())).toBeNull();
});

test('promote makes the canary stable at 100 and keeps the old stable at 0 as previous, for a rollback by switch', () => {
  const r = route({ ...stable, weight: 50 }, { ...canary, weight: 50 }, shadow, v('previous', OLD, 'llama3:8b', 0));
  expect(applyRouteOp(r, promote(canary))).toEqual(
    route({ ...canary, name: 'stable', weight: 100 }, { ...stable, name: 'previous', weight: 0 }, shadow),
  );
});

test('promote is idempotent: once the new version is stable, a retry changes nothing', () => {
  const promoted = run(route(stable, canary), promote(canary));
  expect(applyRouteOp(promoted, promote(canary))).toBeNull();
});

test('revertToPrevious switches back to the old version at 100 and removes the promoted one; without previous it has nothing to do', () => {
  const promoted = run(route(stable, shadow, canary), promote(canary));
  expect(applyRouteOp(promoted, revertToPrevious())).toEqual(route(stable, shadow));
  expect(applyRouteOp(route(stable), revertToPrevious())).toBeNull();
});

test('dropPrevious removes the previous variant once; then it has nothing to do', () => {
  const promoted = run(route(stable, canary), promote(canary));
  const dropped = run(promoted, dropPrevious());
  expect(dropped).toEqual(route({ ...canary, name: 'stable', weight: 100 }));
  expect(applyRouteOp(dropped, dropPrevious())).toBeNull();
});

test('a whole deployment, and a rollback of one, leave the route as each should', () => {
  const start = route(stable, shadow);
  expect(run(start, addCanary(canary), promote(canary), dropPrevious())).toEqual(
    route({ ...canary, name: 'stable', weight: 100 }, shadow),
  );
  expect(run(start, addCanary(canary), removeCanary())).toEqual(start);
  expect(run(start, addCanary(canary), promote(canary), revertToPrevious())).toEqual(start);
});

test('applying an operation does not change the route it was given', () => {
  const r = route({ ...stable, weight: 90 }, canary);
  const copy = structuredClone(r);
  for (const op of [addCanary(canary), removeCanary(), promote(canary), revertToPrevious(), dropPrevious()]) {
    applyRouteOp(r, op);
  }
  expect(r).toEqual(copy);
});

test('weightsAfter says where traffic stands after each operation', () => {
  expect(weightsAfter(addCanary(canary))).toEqual({ stable: 90, canary: 10 });
  for (const op of [removeCanary(), promote(canary), revertToPrevious()]) {
    expect(weightsAfter(op)).toEqual({ stable: 100, canary: 0 });
  }
  expect(weightsAfter(dropPrevious())).toBeNull();
});

test('sameRoute ignores key order and undefined fields, not values or variant order', () => {
  const a = route(stable, canary);
  // The same route with every object's keys in reverse order (as another JSON writer might produce it).
  const reverseKeys = (o: object): object => Object.fromEntries(Object.entries(o).reverse());
  const reordered = reverseKeys({ ...a, variants: a.variants.map(reverseKeys) }) as AliasRoute;
  expect(Object.keys(reordered)).toEqual(['stickyHeader', 'variants']);
  expect(sameRoute(a, reordered)).toBe(true);
  expect(sameRoute(a, { ...a, variants: [...a.variants, { ...shadow, apiKeyFile: undefined }] })).toBe(false);
  expect(sameRoute(route(stable, { ...shadow, apiKeyFile: undefined }), route(stable, shadow))).toBe(true);
  expect(sameRoute(a, route(canary, stable))).toBe(false);
  expect(sameRoute(a, route(stable, { ...canary, weight: 11 }))).toBe(false);
});

test('aliasesWhere finds the aliases that send traffic to an engine, or name a model on it', () => {
  const routes = { a: route(stable), b: route(v('stable', NEW, 'org/x', 100), v('canary', OLD, 'llama3.2:1b', 0)) };
  expect(aliasesWhere(routes, sendsTrafficTo(OLD))).toEqual(['a']);
  expect(aliasesWhere(routes, namesModel(OLD, 'llama3.2:1b'))).toEqual(['a', 'b']);
  expect(aliasesWhere(routes, namesModel(NEW, 'llama3.2:1b'))).toEqual([]);
});

test('addShadow defines the canary at weight 0 with mirroring; removeShadow stops it; every other operation drops it', () => {
  const op = addShadow(canary, 25, 4);
  const shadowed = applyRouteOp(route(stable), op);
  expect(shadowed).toEqual({
    variants: [stable, { ...canary, weight: 0 }],
    stickyHeader: 'x-session',
    shadow: { variant: 'canary', percent: 25, maxConcurrent: 4 },
  });
  expect(weightsAfter(op)).toEqual({ stable: 100, canary: 0 });
  if (!shadowed) throw new Error('no route');
  // Re-applying (a retried activity) changes nothing.
  expect(sameRoute(applyRouteOp(shadowed, op) ?? route(), shadowed)).toBe(true);
  expect(applyRouteOp(shadowed, removeShadow())).toEqual({
    variants: [stable, { ...canary, weight: 0 }],
    stickyHeader: 'x-session',
  });
  expect(applyRouteOp(route(stable), removeShadow())).toBeNull();
  expect(weightsAfter(removeShadow())).toBeNull();
  // The canary stage's first step, the rollback and a promotion leave no mirroring behind.
  expect(applyRouteOp(shadowed, addCanary(canary))).toEqual(route({ ...stable, weight: 90 }, canary));
  expect(applyRouteOp(shadowed, removeCanary())).toEqual(route(stable));
  expect(applyRouteOp(shadowed, promote(canary))?.shadow).toBeUndefined();
  // Nothing else to do but the shadow to drop: still a change.
  expect(
    applyRouteOp({ ...route(stable), shadow: { variant: 'stable', percent: 5, maxConcurrent: 1 } }, dropPrevious()),
  ).toEqual(route(stable));
});
