/**
 * The deployment policy a `gpuops deploy` sends for an alias: the named policy (--policy, else the alias's
 * `policy`, else "default") with the alias's own golden set, safety set and risk rules over it, file paths replaced
 * by the lists the loader read, and `sources` saying where each came from (for the risk report).
 */
import type { z } from 'zod';
import type { DeployPolicy, DeployPolicySchema } from '../domain/deploy-policy';
import { mergeRiskRules } from '../domain/risk-rules';
import { ValidationError } from '../domain/validation';
import type { AliasConfig, Config, PolicyConfig } from './schema';

type Input = z.input<typeof DeployPolicySchema>;

/** Where a set came from, as the risk report shows it. */
const label = (owner: string, file: string | undefined): string => (file ? `${owner} (${file})` : owner);

/**
 * The policy input for a deployment to `alias`, or undefined when neither a policy nor the alias sets anything (the
 * workflow's built-in defaults apply). `named` must be a key of config.policies (the CLI checks it).
 */
export function deployPolicyFor(config: Config, alias: string, named?: string): Input | undefined {
  const a: AliasConfig | undefined = config.aliases[alias];
  const name = named ?? a?.policy ?? 'default';
  const base: PolicyConfig | undefined = config.policies[name];
  if (!base && !a) return undefined;
  const { goldenFile, safetyFile, ...fields } = base ?? ({} as Partial<PolicyConfig>);
  const policy: Record<string, unknown> = { ...fields };
  const sources: NonNullable<DeployPolicy['sources']> = {};
  const owner = `policy ${name}`;
  if (fields.golden) sources.golden = label(owner, goldenFile);
  if (fields.safety) sources.safety = label(owner, safetyFile);
  if (fields.risk) sources.risk = owner;
  const here = `alias ${alias}`;
  if (a?.golden) {
    policy.golden = a.golden;
    sources.golden = label(here, a.goldenFile);
  }
  if (a?.safety) {
    policy.safety = a.safety;
    sources.safety = label(here, a.safetyFile);
  }
  if (a?.risk) {
    // Rule by rule (failedSafety kind by kind): the alias's tiers over the policy's.
    policy.risk = mergeRiskRules(fields.risk, a.risk);
    sources.risk = fields.risk ? `${here} over ${owner}` : here;
  }
  return { ...policy, ...(Object.keys(sources).length ? { sources } : {}) } as Input;
}

/** deployPolicyFor for a `--policy` given on a command line: an unknown name is refused, naming the ones there are. */
export function deployPolicyForArgs(config: Config, alias: string, named?: string): Input | undefined {
  if (named && !config.policies[named]) {
    const known = Object.keys(config.policies);
    throw new ValidationError('arguments', [
      `--policy: must be a policy in gpuops.yaml (${known.join(', ') || 'none defined'}; got "${named}")`,
    ]);
  }
  return deployPolicyFor(config, alias, named);
}
