import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseDocument } from 'yaml';
import { ConfigSchema, type Config } from './schema';
import { ValidationError, formatIssues } from '../domain/validation';

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
  return r.data;
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
