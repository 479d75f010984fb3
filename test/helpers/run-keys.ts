/**
 * The payload-encryption keys a test run configured (every `temporal.encryption.keys[]` of every gpuops.yaml under
 * the run directory), so the secret scan can decode encrypted histories before it searches them: a secret must not
 * reach a history at all, encrypted or not. The keys are secrets of the run themselves and are scanned for too.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { ENCRYPTED_ENCODING, EncryptionCodec } from '../../src/temporal/codec';
import { yamlDocuments } from './secret-scan';
import type { RegisteredSecret } from './secrets';

export interface RunKey {
  id: string;
  key: Buffer;
  /** The key file's text, as a secret to scan for. */
  secret: RegisteredSecret;
}

/** Every encryption key a gpuops.yaml under `root` lists (unreadable or malformed ones are skipped). */
export function discoverRunKeys(root: string): RunKey[] {
  const found: RunKey[] = [];
  for (const { file, doc } of yamlDocuments(root)) {
    const keys = (doc as { temporal?: { encryption?: { keys?: unknown } } } | null)?.temporal?.encryption?.keys;
    if (!Array.isArray(keys)) continue;
    for (const k of keys as { id?: unknown; file?: unknown }[]) {
      if (typeof k?.id !== 'string' || typeof k.file !== 'string') continue;
      const target = path.resolve(path.dirname(file), k.file);
      let text: string;
      try {
        text = readFileSync(target, 'utf8').trim();
      } catch {
        continue;
      }
      const key = Buffer.from(text, 'base64');
      if (key.length !== 32) continue;
      found.push({
        id: k.id,
        key,
        secret: { name: `encryption key ${k.id} of ${path.relative(root, file)}`, value: text, file: target },
      });
    }
  }
  return found;
}

/**
 * Decodes each payload with whichever of the run's keys opens it (tests reuse key ids with different keys); a
 * payload none opens stays as stored and is counted in `undecodable`, so the scan can say what it could not read.
 */
export class RunKeysDecoder implements PayloadCodec {
  undecodable = 0;
  private readonly codecs: EncryptionCodec[];

  constructor(keys: readonly RunKey[]) {
    this.codecs = keys.map((k) => new EncryptionCodec(new Map([[k.id, k.key]]), k.id));
  }

  encode(payloads: Payload[]): Promise<Payload[]> {
    return Promise.resolve(payloads);
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    const out: Payload[] = [];
    for (const p of payloads) out.push(await this.decodeOne(p));
    return out;
  }

  private async decodeOne(p: Payload): Promise<Payload> {
    if (Buffer.from(p.metadata?.encoding ?? []).toString() !== ENCRYPTED_ENCODING) return p;
    for (const codec of this.codecs) {
      try {
        const [plain] = await codec.decode([p]);
        if (plain) return plain;
      } catch {
        // not this key
      }
    }
    this.undecodable += 1;
    return p;
  }
}
