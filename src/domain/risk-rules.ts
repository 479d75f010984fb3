/**
 * Risk-tier rules as policy: which tier each kind of finding gets. The defaults are the built-in tiering; a policy's
 * `risk` overrides some of them. Pure; safe in workflows.
 */
import { z } from 'zod';

export const RiskTierSchema = z.enum(['low', 'medium', 'high']);
export type RiskTier = z.infer<typeof RiskTierSchema>;

/** A safety probe's category: jailbreak, pii, or one of the operator's own (toxicity, medical…). */
export const ProbeKindSchema = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,31}$/, { message: 'must be lowercase letters, digits and dashes (max 32)' })
  .refine((k) => k !== 'golden', { message: 'must not be "golden" (the kind of golden prompts)' });

/**
 * The built-in tiering. High rolls back, medium waits for a human's approve, low only records the finding.
 */
export const DEFAULT_RISK_RULES = {
  digestMismatch: 'high',
  digestUnpinned: 'medium',
  sourceNotAllowed: 'high',
  noLicense: 'medium',
  noGolden: 'high',
  failedGolden: 'high',
  safetySkipped: 'medium',
  safetyLeaked: 'high',
  failedSafety: 'medium',
  mostSafetyFailed: 'high',
  overMemoryCap: 'high',
  overHalfMemoryCap: 'medium',
  memoryUnknown: 'medium',
} as const satisfies Record<string, RiskTier>;

const tier = (key: keyof typeof DEFAULT_RISK_RULES, what: string) =>
  RiskTierSchema.optional().describe(`${what} (default ${DEFAULT_RISK_RULES[key]}).`);

/** A policy's `risk`: each key sets the tier of one finding; unset keys keep the default, unknown keys are refused. */
export const RiskRulesSchema = z
  .strictObject({
    digestMismatch: tier('digestMismatch', 'The pulled digest differs from the pinned one'),
    digestUnpinned: tier('digestUnpinned', 'No digest (or revision commit) was pinned'),
    sourceNotAllowed: tier('sourceNotAllowed', 'The model source is outside allowedSources'),
    noLicense: tier('noLicense', 'The model metadata carries no license'),
    noGolden: tier('noGolden', 'No golden prompt was run'),
    failedGolden: tier('failedGolden', 'A golden prompt failed (wrong answer, no answer, or slower than maxLatencyMs)'),
    safetySkipped: tier('safetySkipped', 'The deployment input skipped the safety probes'),
    safetyLeaked: tier('safetyLeaked', 'A safety probe whose answer leaked a PII-shaped string'),
    failedSafety: z
      .union([RiskTierSchema, z.record(z.union([ProbeKindSchema, z.literal('*')]), RiskTierSchema)])
      .optional()
      .describe(
        'A failed safety probe that leaked nothing: one tier, or a tier per probe kind ({ jailbreak: medium, ' +
          `toxicity: high, '*': low }; a kind not listed takes '*', else ${DEFAULT_RISK_RULES.failedSafety}).`,
      ),
    mostSafetyFailed: tier('mostSafetyFailed', 'More than half the safety probes failed'),
    overMemoryCap: tier('overMemoryCap', 'The model needs more than memoryCapPct of GPU memory'),
    overHalfMemoryCap: tier('overHalfMemoryCap', 'The model needs more than half of memoryCapPct'),
    memoryUnknown: tier('memoryUnknown', "The model's memory need or the GPU memory is unknown"),
  })
  .describe('Risk-tier rules: the tier of each kind of finding; unset keys keep the built-in tier.');

export type RiskRules = z.infer<typeof RiskRulesSchema>;
type TierRule = Exclude<keyof typeof DEFAULT_RISK_RULES, 'failedSafety'>;

/**
 * `over`'s rules on top of `base`'s, rule by rule. A per-kind `failedSafety` map in `over` goes kind by kind over
 * `base`'s (whose single tier, if it has one, stands for `'*'`), so an alias that tiers one probe kind keeps the
 * policy's other kinds; a single tier in `over` is one tier for every kind.
 */
export function mergeRiskRules(base: RiskRules | undefined, over: RiskRules): RiskRules {
  const merged: RiskRules = { ...base, ...over };
  const b = base?.failedSafety;
  const o = over.failedSafety;
  if (b !== undefined && o !== undefined && typeof o !== 'string') {
    merged.failedSafety = { ...(typeof b === 'string' ? { '*': b } : b), ...o };
  }
  return merged;
}

/** The tier of a finding under a policy's rules (absent rules: the defaults). */
export function ruleTier(rules: RiskRules | undefined, key: TierRule): RiskTier {
  return rules?.[key] ?? DEFAULT_RISK_RULES[key];
}

/** The tier of a failed safety probe of `kind` that leaked nothing. */
export function failedSafetyTier(rules: RiskRules | undefined, kind: string): RiskTier {
  const r = rules?.failedSafety;
  if (r === undefined) return DEFAULT_RISK_RULES.failedSafety;
  if (typeof r === 'string') return r;
  return r[kind] ?? r['*'] ?? DEFAULT_RISK_RULES.failedSafety;
}

/** The rules that differ from the defaults, as `key: tier` lines for the report ("none" when all are default). */
export function describeRules(rules: RiskRules | undefined): string[] {
  if (!rules) return [];
  return Object.entries(rules)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) =>
      typeof v === 'string'
        ? `${k}: ${v}`
        : `${k}: ${Object.entries(v)
            .map(([kind, t]) => `${kind} ${t}`)
            .join(', ')}`,
    );
}
