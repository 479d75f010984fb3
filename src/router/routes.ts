/**
 * The route table: which engines serve each model alias, with what weight, and which engines are drained. It is
 * replaced atomically (a new immutable snapshot per change, each with a version used as an ETag for compare-and-swap)
 * and persisted with write-temp-then-rename, so a restart or crash mid-write never loses or half-writes it.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { formatIssues, ValidationError } from '../domain/validation';

const engineUrl = z
  .string()
  .refine((s) => /^https?:\/\/[^\s/]+/.test(s) && URL.canParse(s), { message: 'must be an http(s) URL' });

/** One weighted destination of an alias: a model on an engine. */
export const VariantSchema = z.strictObject({
  /** Variant name; a deployment uses `stable` and `canary`. */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, {
    message: 'must be letters, digits, dot, dash or underscore (max 63)',
  }),
  /** Base URL of the engine HTTP API, e.g. http://10.0.0.5:11434. */
  engine: engineUrl,
  /** Engine kind; Ollama-native requests (/api/chat, /api/generate) go only to `ollama` variants. */
  engineType: z.enum(['ollama', 'vllm', 'llamacpp']),
  /** Model name the engine knows, written into the forwarded request's `model` field. */
  model: z.string().min(1, { message: 'must be a model name' }),
  /** Relative share of traffic, 0-100; 0 keeps the variant defined but idle. */
  weight: z.int().min(0).max(100),
  /** File on the router's machine holding the engine's API key (vLLM --api-key), sent as a bearer token. */
  apiKeyFile: z.string().min(1, { message: 'must be a file path' }).optional(),
});
export type Variant = z.infer<typeof VariantSchema>;

/**
 * Mirroring of a share of an alias's requests to one more variant (a deployment's shadow stage): the client always
 * gets the chosen variant's answer; the mirror's answer is read, measured and dropped (src/router/shadow.ts).
 */
export const ShadowSchema = z.strictObject({
  /** The variant the copies go to (usually `canary` at weight 0, so no client request is served by it). */
  variant: VariantSchema.shape.name,
  /** Share of the alias's requests mirrored, 1-100 %. */
  percent: z.int().min(1).max(100),
  /** Mirrored requests in flight at most for the alias; a request over the cap is not mirrored (counted as dropped). */
  maxConcurrent: z.int().min(1).max(256),
});
export type Shadow = z.infer<typeof ShadowSchema>;

/** How one alias is served. */
export const AliasRouteSchema = z
  .strictObject({
    /** Weighted variants; names are unique within the alias. */
    variants: z.array(VariantSchema).min(1, { message: 'must list at least one variant' }),
    /** Mirror a share of the requests to a variant without serving its answers (off when absent). */
    shadow: ShadowSchema.optional(),
    /** Request header whose value pins a session to one variant (same value → same variant while weights hold). */
    stickyHeader: z
      .string()
      .regex(/^[A-Za-z0-9-]+$/, { message: 'must be an HTTP header name' })
      .optional(),
  })
  .superRefine((r, ctx) => {
    const seen = new Set<string>();
    r.variants.forEach((v, i) => {
      if (seen.has(v.name)) ctx.addIssue({ code: 'custom', path: ['variants', i, 'name'], message: 'duplicate name' });
      seen.add(v.name);
    });
    if (r.variants.every((v) => v.weight === 0))
      ctx.addIssue({ code: 'custom', path: ['variants'], message: 'weights must not all be 0' });
    if (r.shadow && !seen.has(r.shadow.variant))
      ctx.addIssue({ code: 'custom', path: ['shadow', 'variant'], message: 'must name a variant of the alias' });
  });
export type AliasRoute = z.infer<typeof AliasRouteSchema>;

const aliasName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/, {
  message: 'must be letters, digits and . _ : / - (max 128)',
});

/** The replaceable part of the table, as PUT /admin/routes takes it. */
export const RouteTableSchema = z.strictObject({
  /** Alias → route. */
  routes: z.record(aliasName, AliasRouteSchema),
  /** Engine base URLs that get no traffic, whatever their weight. */
  drained: z.array(engineUrl).default([]),
});
export type RouteTableInput = z.input<typeof RouteTableSchema>;

/** One immutable version of the table. */
export interface RouteSnapshot {
  /** Increases by one with every change; the ETag is `"<version>"`. */
  version: number;
  routes: Record<string, AliasRoute>;
  /** Normalised engine URLs (see {@link normalizeEngineUrl}). */
  drained: string[];
  updatedAt: string;
}

const StateFileSchema = z.strictObject({
  format: z.literal(1),
  version: z.int().min(0),
  updatedAt: z.string(),
  routes: z.record(aliasName, AliasRouteSchema),
  drained: z.array(engineUrl),
});

/** Body of PATCH /admin/routes/:alias/weights. */
export const WeightsPatchSchema = z.strictObject({
  /** Variant name → new weight; variants not named keep theirs. */
  weights: z.record(z.string(), z.int().min(0).max(100)),
});

/** Body of POST /admin/drain and /admin/undrain. */
export const DrainSchema = z.strictObject({ engine: engineUrl });

const normalized = new Map<string, string>();

/** `http://Host:80/x/` → `http://host/x`: the form drained URLs are compared in. */
export function normalizeEngineUrl(u: string): string {
  let n = normalized.get(u);
  if (n === undefined) {
    const url = new URL(u);
    n = `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
    // Memoised: it runs per request for every variant; engine URLs are few, but bound it anyway.
    if (normalized.size > 10_000) normalized.clear();
    normalized.set(u, n);
  }
  return n;
}

/** `"7"` for version 7. */
export function etagOf(version: number): string {
  return `"${version}"`;
}

/** The compare-and-swap precondition failed: someone changed the table since the caller read it. */
export class VersionConflictError extends Error {
  constructor(
    readonly expected: string,
    readonly current: number,
  ) {
    super(`route table is at version ${current}, not ${expected}`);
    this.name = 'VersionConflictError';
  }
}

/** The alias does not exist. */
export class UnknownAliasError extends Error {
  constructor(readonly alias: string) {
    super(`no route for alias "${alias}"`);
    this.name = 'UnknownAliasError';
  }
}

function parseOr(schema: z.ZodType, input: unknown, what: string): unknown {
  const r = schema.safeParse(input);
  if (!r.success) throw new ValidationError(what, formatIssues(r.error));
  return r.data;
}

/**
 * The live route table. Reads are a plain property access on an immutable snapshot, so a request in flight keeps
 * the snapshot it chose from; every change builds a new snapshot, persists it, then swaps it in.
 */
export class RouteStore {
  private snap: RouteSnapshot;
  private readonly listeners: ((snap: RouteSnapshot) => void)[] = [];

  /**
   * Load from `stateFile` if it exists (an invalid file is an error, never silently reset), else start empty. `log`
   * gets the failures of change listeners (they never fail a change that is already persisted).
   */
  constructor(
    readonly stateFile: string | undefined,
    private readonly log: (line: string) => void = () => undefined,
  ) {
    this.snap = { version: 0, routes: {}, drained: [], updatedAt: new Date(0).toISOString() };
    if (stateFile && existsSync(stateFile)) {
      let raw: unknown;
      try {
        raw = JSON.parse(readFileSync(stateFile, 'utf8'));
      } catch (err) {
        throw new ValidationError(`router state ${stateFile}`, [`(root): not JSON (${(err as Error).message})`]);
      }
      const s = parseOr(StateFileSchema, raw, `router state ${stateFile}`) as z.infer<typeof StateFileSchema>;
      this.snap = {
        version: s.version,
        routes: s.routes,
        drained: [...new Set(s.drained.map(normalizeEngineUrl))],
        updatedAt: s.updatedAt,
      };
    }
  }

  /** The current snapshot. */
  get current(): RouteSnapshot {
    return this.snap;
  }

  /** Call `fn` with every new snapshot, once it is in place (the shadow mirror cuts copies a change ended). */
  onChange(fn: (snap: RouteSnapshot) => void): void {
    this.listeners.push(fn);
  }

  /** Whether an engine is drained in the current snapshot. */
  isDrained(engine: string): boolean {
    return this.snap.drained.includes(normalizeEngineUrl(engine));
  }

  /**
   * Replace routes and drained set at once. `ifMatch` (an ETag or `*`) makes it a compare-and-swap.
   * Throws ValidationError (bad table) or VersionConflictError.
   */
  replace(input: unknown, ifMatch?: string): RouteSnapshot {
    const t = parseOr(RouteTableSchema, input, 'route table') as z.infer<typeof RouteTableSchema>;
    this.checkMatch(ifMatch);
    return this.commit({ routes: t.routes, drained: [...new Set(t.drained.map(normalizeEngineUrl))] });
  }

  /** Change some variants' weights of one alias atomically (the other aliases and variants stay as they are). */
  patchWeights(alias: string, input: unknown, ifMatch?: string): RouteSnapshot {
    const p = parseOr(WeightsPatchSchema, input, 'weights patch') as z.infer<typeof WeightsPatchSchema>;
    this.checkMatch(ifMatch);
    const route = this.snap.routes[alias];
    if (!route) throw new UnknownAliasError(alias);
    const names = new Set(route.variants.map((v) => v.name));
    const unknown = Object.keys(p.weights).filter((n) => !names.has(n));
    if (unknown.length > 0)
      throw new ValidationError(
        'weights patch',
        unknown.map((n) => `weights.${n}: no such variant in "${alias}"`),
      );
    const next: AliasRoute = {
      ...route,
      variants: route.variants.map((v) => ({ ...v, weight: p.weights[v.name] ?? v.weight })),
    };
    // The same rules as a full replace (e.g. not all weights 0).
    const checked = parseOr(AliasRouteSchema, next, `routes.${alias}`) as AliasRoute;
    return this.commit({ routes: { ...this.snap.routes, [alias]: checked }, drained: this.snap.drained });
  }

  /** Add (`drain`) or remove an engine from the drained set. A no-op change still returns the current snapshot. */
  setDrained(input: unknown, drained: boolean, ifMatch?: string): RouteSnapshot {
    const { engine } = parseOr(DrainSchema, input, drained ? 'drain' : 'undrain') as z.infer<typeof DrainSchema>;
    this.checkMatch(ifMatch);
    const url = normalizeEngineUrl(engine);
    const has = this.snap.drained.includes(url);
    if (has === drained) return this.snap;
    const list = drained ? [...this.snap.drained, url] : this.snap.drained.filter((d) => d !== url);
    return this.commit({ routes: this.snap.routes, drained: list });
  }

  private checkMatch(ifMatch: string | undefined): void {
    if (ifMatch === undefined || ifMatch.trim() === '*') return;
    const tags = ifMatch.split(',').map((t) => t.trim().replace(/^W\//, ''));
    if (!tags.includes(etagOf(this.snap.version))) throw new VersionConflictError(ifMatch, this.snap.version);
  }

  private commit(next: Pick<RouteSnapshot, 'routes' | 'drained'>): RouteSnapshot {
    const snap: RouteSnapshot = {
      version: this.snap.version + 1,
      routes: next.routes,
      drained: next.drained,
      updatedAt: new Date().toISOString(),
    };
    // Persist first: a change the caller was told succeeded must survive a restart.
    if (this.stateFile) persist(this.stateFile, snap);
    this.snap = snap;
    // The change is persisted and in place: a listener that throws is logged, and the others still hear of it.
    for (const fn of this.listeners) {
      try {
        fn(snap);
      } catch (err) {
        this.log(`router: route change listener failed: ${String(err)}`);
      }
    }
    return snap;
  }
}

function persist(file: string, snap: RouteSnapshot): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const body = { format: 1, ...snap };
  writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

/**
 * The variants a request may go to: weight > 0, engine not drained (by an operator, or by the router itself:
 * `autoDrained`), and able to speak the request's API.
 */
export function eligibleVariants(
  route: AliasRoute,
  snap: RouteSnapshot,
  ollamaNative: boolean,
  autoDrained?: ReadonlySet<string>,
): Variant[] {
  return route.variants.filter((v) => {
    if (v.weight <= 0 || (ollamaNative && v.engineType !== 'ollama')) return false;
    const url = normalizeEngineUrl(v.engine);
    return !snap.drained.includes(url) && !(autoDrained !== undefined && autoDrained.size > 0 && autoDrained.has(url));
  });
}

/** FNV-1a of a string, as a fraction in [0, 1): the sticky session's fixed point on the weight line. */
export function stickyPoint(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h / 0x1_0000_0000;
}

/**
 * Weighted choice: `u` in [0, 1) is a point on the line of cumulative weights. A random `u` gives the weighted split;
 * a sticky session's fixed `u` gives the same variant on every request while the weights and eligible set hold.
 */
export function chooseVariant(variants: readonly Variant[], u: number): Variant | undefined {
  const total = variants.reduce((s, v) => s + v.weight, 0);
  if (total <= 0) return undefined;
  let point = u * total;
  for (const v of variants) {
    if (point < v.weight) return v;
    point -= v.weight;
  }
  return variants[variants.length - 1];
}
