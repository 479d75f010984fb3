/** Node names on the command line, checked against gpuops.yaml before anything is started. */
import type { Config } from '../config/schema';
import { ValidationError } from '../domain/validation';

/** Throw a ValidationError (exit 2) listing the configured nodes unless `node` is one of them. */
export function requireNode(config: Config, node: string): void {
  if (!config.nodes.some((n) => n.id === node)) {
    throw new ValidationError('argument', [
      `node: must be one of ${config.nodes.map((n) => n.id).join(', ')} (got "${node}")`,
    ]);
  }
}
