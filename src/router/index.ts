/** The inference router: data plane for canary deployments (see README "The inference router"). */
export { startRouter, type RouterHandle, type RouterOptions } from './server';
export {
  RouteStore,
  RouteTableSchema,
  AliasRouteSchema,
  VariantSchema,
  WeightsPatchSchema,
  DrainSchema,
  etagOf,
  normalizeEngineUrl,
  type AliasRoute,
  type RouteSnapshot,
  type RouteTableInput,
  type Variant,
} from './routes';
export { StatsStore, summarize, type AliasStats, type Outcome, type Sample, type VariantStats } from './stats';
export { routesDocument } from './admin';
