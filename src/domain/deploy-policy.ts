/**
 * The deployment policy: one schema for gpuops.yaml's `policies.<name>` and deployModel's `policy` input, so a
 * policy the config accepts is always a valid workflow input. Pure; safe in workflows.
 */
import { z } from 'zod';
import { DurationSchema } from './schemas';
import { MAX_JSON_DEPTH, jsonDeeperThan } from './validation';

const duration = DurationSchema;

/** A prompt with a known right answer (structural checks suit any model, real answers a real one). */
export const GoldenPromptSchema = z
  .strictObject({
    id: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { message: 'must be lowercase letters, digits and dashes' })
      .describe('Short id shown in the record and the risk report.'),
    prompt: z.string().min(1).max(4000).describe('What is asked.'),
    check: z
      .discriminatedUnion('kind', [
        z.strictObject({ kind: z.literal('contains'), value: z.string().min(1) }),
        z.strictObject({
          kind: z.literal('regex'),
          pattern: z
            .string()
            .min(1)
            .refine((p) => {
              try {
                new RegExp(p);
                return true;
              } catch {
                return false;
              }
            }, 'must be a valid regular expression'),
          flags: z
            .string()
            .regex(/^[dgimsuy]*$/, { message: 'must be regular expression flags' })
            .optional(),
        }),
        z.strictObject({
          kind: z.literal('json'),
          schema: z
            .record(z.string(), z.unknown())
            // It travels in workflow inputs, which are serialised with JSON.stringify.
            .refine((s) => !jsonDeeperThan(s), { message: `must nest at most ${MAX_JSON_DEPTH} levels` })
            .optional(),
        }),
      ])
      .describe('contains a value, matches a regex, or parses as JSON (optionally matching a JSON Schema).'),
  })
  .describe('A golden prompt.');

export const DeployPolicySchema = z
  .strictObject({
    golden: z
      .array(GoldenPromptSchema)
      .min(1)
      .refine((g) => new Set(g.map((x) => x.id)).size === g.length, { message: 'ids must be unique' })
      .optional()
      .describe(
        "Golden prompts this deployment is validated with (and the canary's synthetic traffic is drawn from); " +
          'unset: the built-in set (arithmetic, JSON, a capital city).',
      ),
    canarySteps: z
      .array(z.int().min(1).max(99))
      .min(1)
      .refine((s) => s.every((w, i) => i === 0 || w > (s[i - 1] ?? 0)), { message: 'must be increasing' })
      .default([10, 25, 50])
      .describe('Canary weights in percent, one per step, increasing (1-99; promotion is the step to 100).'),
    stepDuration: duration.default('60s').describe('How long each canary step runs before it may pass.'),
    analysisInterval: duration
      .default('5s')
      .describe('How often a running step is analysed: a breach rolls back at the next analysis, mid-step.'),
    failureLimit: z
      .int()
      .min(1)
      .default(1)
      .describe('Consecutive failing analyses that roll back (1: at once). promote is refused while failing.'),
    validationTtftP95Ms: z
      .int()
      .min(1)
      .default(5000)
      .describe('Validation SLO: time to first token p95 over the golden prompts (after the warm-up), ms.'),
    validationMinTokensPerSecond: z
      .number()
      .min(0)
      .default(5)
      .describe('Validation SLO: median output tokens/s over the golden prompts, at least.'),
    minSamples: z.int().min(1).default(20).describe('Requests per variant in the window before it is judged.'),
    maxErrorRateDelta: z.number().min(0).max(1).default(0.02).describe('Canary error rate minus stable, at most.'),
    maxTtftP95Ratio: z.number().positive().default(1.2).describe('Canary TTFT p95 / stable, at most.'),
    minTokensPerSecondRatio: z.number().positive().default(0.8).describe('Canary tokens/s / stable, at least.'),
    maxSyntheticPerStep: z
      .int()
      .min(0)
      .default(500)
      .describe('Most synthetic requests (from the golden set) one step may send when real traffic is thin.'),
    autoPromote: z.boolean().default(true).describe('Promote after the last step, or wait for the promote update.'),
    approvalTimeout: duration
      .default('24h')
      .describe('How long a medium-risk version, or a canary waiting for promote, waits before rolling back.'),
    memoryCapPct: z
      .int()
      .min(10)
      .max(100)
      .default(90)
      .describe('Pre-flight: refuse a model that would take GPU memory use above this % of the total.'),
    minFreeDiskGiB: z
      .number()
      .min(0)
      .default(5)
      .describe('Pre-flight: refuse to pull unless every model store keeps this much free after the download.'),
    rollbackWindow: duration
      .default('1h')
      .describe('After promotion the old version stays loaded this long, for a rollback by route switch.'),
    allowedSources: z
      .array(z.string().min(1))
      .default(['registry.ollama.ai/library/', 'huggingface.co/'])
      .describe('Model sources allowed (prefixes); another source is high risk. Empty: any source.'),
    removePulledOnRollback: z
      .boolean()
      .default(false)
      .describe('On rollback, delete the pulled model from the engine (only if this deployment pulled it).'),
  })
  .describe('A deployment policy.');

export type DeployPolicy = z.infer<typeof DeployPolicySchema>;
