/** JSON Schema of gpuops.yaml, for editors (yaml-language-server) — generated from the zod schema, never by hand. */
import { z } from 'zod';
import { ConfigSchema } from './schema';

export function configJsonSchema(): Record<string, unknown> {
  // 'input' describes what operators write (defaults optional), not the parsed result.
  const schema = z.toJSONSchema(ConfigSchema, { io: 'input', unrepresentable: 'any' });
  return { ...schema, $id: 'https://gpuops.dev/schemas/gpuops.schema.json', title: 'gpuops.yaml' };
}
