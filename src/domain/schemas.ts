/** zod field schemas shared by workflow inputs, the config and the CLI. Pure; safe in workflows. */
import { z } from 'zod';

/** Ids in gpuops.yaml (nodes, hypervisors, plans): lowercase letters, digits and dashes, at most 63. */
export const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** An id that must name something in gpuops.yaml, e.g. `gpuopsId('a node id')`. */
export function gpuopsId(what: string) {
  return z.string().regex(ID_PATTERN, { message: `must be ${what} from gpuops.yaml` });
}

/** A duration as parseDuration reads it: a number and ms, s, m, h or d. */
export const DurationSchema = z
  .string()
  .regex(/^\d+(ms|s|m|h|d)$/, { message: 'must be a duration such as 500ms, 30s, 5m, 1h or 7d' });
