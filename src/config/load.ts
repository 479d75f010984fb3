import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigSchema, type Config } from './schema';
import { GoldenSetSchema, SafetySetSchema } from '../domain/deploy-policy';
import { ValidationError, formatIssues, issuePath } from '../domain/validation';

/** Repository root (where package.json lives), for defaults such as examples/sandbox.yaml. */
export const PROJECT_ROOT = path.resolve(__dirname, '..', '..');

/**
 * Which gpuops.yaml to use: the explicit path, else $GPUOPS_CONFIG, else ./gpuops.yaml, else the sandbox example
 * (so a fresh clone runs with no configuration at all).
 */
export function resolveConfigPath(explicit?: string): string {
  if (explicit) return path.resolve(explicit);
  if (process.env.GPUOPS_CONFIG) return path.resolve(process.env.GPUOPS_CONFIG);
  const local = path.resolve('gpuops.yaml');
  if (existsSync(local)) return local;
  return path.join(PROJECT_ROOT, 'examples', 'sandbox.yaml');
}

export interface LoadedConfig {
  path: string;
  config: Config;
}

export function parseConfig(text: string, source: string): Config {
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length > 0) {
    throw new ValidationError(
      `config ${source}`,
      doc.errors.map((e) => `YAML: ${e.message.split('\n')[0] ?? e.message}`),
    );
  }
  let value: unknown;
  try {
    value = doc.toJS();
  } catch (err) {
    // yaml refuses an alias bomb ("billion laughs") here with a ReferenceError; it is still just a bad file.
    throw new ValidationError(`config ${source}`, [`YAML: ${(err as Error).message}`]);
  }
  const r = ConfigSchema.safeParse(value ?? {});
  if (!r.success) throw new ValidationError(`config ${source}`, formatIssues(r.error));
  const problems = loadSetFiles(r.data, source);
  if (problems.length > 0) throw new ValidationError(`config ${source}`, problems);
  return r.data;
}

/**
 * Read each policy's and alias's goldenFile / safetyFile (YAML or JSON, relative to the config) into its golden /
 * safety list, validated like the inline one: the deployment input carries the list, never a path. The file field
 * stays, naming the set's source in the risk report. Returns one line per problem.
 */
function loadSetFiles(config: Config, source: string): string[] {
  const problems: string[] = [];
  const read = <S extends z.ZodType>(schema: S, file: string, at: (string | number)[]): z.output<S> | undefined => {
    const where = `${issuePath(at)} (${file})`;
    const full = resolveFrom(source, file);
    let text: string;
    try {
      text = readFileSync(full, 'utf8');
    } catch (err) {
      problems.push(`${where}: cannot read ${full}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return undefined;
    }
    const doc = parseDocument(text, { prettyErrors: true });
    const yamlError = doc.errors[0];
    if (yamlError) {
      problems.push(`${where}: YAML: ${yamlError.message.split('\n')[0] ?? yamlError.message}`);
      return undefined;
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (err) {
      problems.push(`${where}: YAML: ${(err as Error).message}`);
      return undefined;
    }
    const r = schema.safeParse(value);
    if (!r.success) {
      problems.push(...formatIssues(r.error).map((line) => `${where}: ${line}`));
      return undefined;
    }
    return r.data;
  };
  const owners = [
    ...Object.entries(config.policies).map(([name, p]) => ({ at: ['policies', name], p })),
    ...Object.entries(config.aliases).map(([name, p]) => ({ at: ['aliases', name], p })),
  ];
  for (const { at, p } of owners) {
    if (p.goldenFile !== undefined) p.golden = read(GoldenSetSchema, p.goldenFile, [...at, 'goldenFile']);
    if (p.safetyFile !== undefined) p.safety = read(SafetySetSchema, p.safetyFile, [...at, 'safetyFile']);
  }
  return problems;
}

/** Load and validate a config file. Throws ValidationError with one line per bad field. */
export function loadConfig(explicit?: string): LoadedConfig {
  const p = resolveConfigPath(explicit);
  if (!existsSync(p)) throw new ValidationError('config', [`${p}: file not found`]);
  return { path: p, config: parseConfig(readFileSync(p, 'utf8'), p) };
}

/** Resolve a path from the config relative to the config file's directory. */
export function resolveFrom(configPath: string, p: string): string {
  return path.isAbsolute(p) ? p : path.resolve(path.dirname(configPath), p);
}
