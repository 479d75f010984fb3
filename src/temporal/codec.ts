/**
 * Payload encryption: an AES-256-GCM PayloadCodec that every gpuops client and worker uses when
 * temporal.encryption is configured, so the Temporal server stores workflow inputs, results, memos and failure
 * messages as ciphertext. The conventions are those of Temporal's encryption samples, so their codec servers and
 * ours read each other's payloads: the whole Payload (metadata and data, protobuf-encoded) is encrypted; the new
 * payload's metadata is `encoding: binary/encrypted` and `encryption-key-id: <id>`; its data is
 * IV (12 random bytes) ‖ ciphertext ‖ GCM tag (16 bytes).
 *
 * Keys come from files (read here, by the process that uses them; never config values, never logged). Every
 * configured key decodes; `encryptWith` names the one that encodes, so keys rotate without losing old history.
 * Payloads that are not encrypted pass through decode untouched: committed histories still replay, and a server
 * whose older history is plaintext still works.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  METADATA_ENCODING_KEY,
  ValueError,
  type DataConverter,
  type Payload,
  type PayloadCodec,
} from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { resolveFrom, type LoadedConfig } from '../config/load';
import type { Config } from '../config/schema';

export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const METADATA_ENCRYPTION_KEY_ID = 'encryption-key-id';
const IV_BYTES = 12;
const TAG_BYTES = 16;
const KEY_BYTES = 32;

type EncryptionConfig = NonNullable<Config['temporal']['encryption']>;

export class EncryptionCodec implements PayloadCodec {
  /**
   * @param keys every key that may decode, by id (32 bytes each)
   * @param encryptWith the id of the key that encodes
   */
  constructor(
    private readonly keys: ReadonlyMap<string, Buffer>,
    readonly encryptWith: string,
  ) {
    for (const [id, key] of keys) {
      if (key.length !== KEY_BYTES) throw new Error(`encryption key "${id}": must be ${KEY_BYTES} bytes`);
    }
    if (!keys.has(encryptWith)) throw new Error(`encryption key "${encryptWith}" (encryptWith) is not among the keys`);
  }

  /** Ids of the keys this codec can decode with. */
  get keyIds(): string[] {
    return [...this.keys.keys()];
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const key = this.keys.get(this.encryptWith) as Buffer;
    return payloads.map((payload) => {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      const plain = temporal.api.common.v1.Payload.encode(payload).finish();
      const data = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      return {
        metadata: {
          [METADATA_ENCODING_KEY]: Buffer.from(ENCRYPTED_ENCODING),
          [METADATA_ENCRYPTION_KEY_ID]: Buffer.from(this.encryptWith),
        },
        data,
      };
    });
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => {
      const encoding = payload.metadata?.[METADATA_ENCODING_KEY];
      if (!encoding || Buffer.from(encoding).toString() !== ENCRYPTED_ENCODING) return payload;
      const idBytes = payload.metadata?.[METADATA_ENCRYPTION_KEY_ID];
      if (!idBytes) throw new ValueError(`encrypted payload without ${METADATA_ENCRYPTION_KEY_ID} metadata`);
      const id = Buffer.from(idBytes).toString();
      const key = this.keys.get(id);
      if (!key) {
        throw new ValueError(
          `payload encrypted with key "${id}", which is not configured (temporal.encryption.keys has ${this.keyIds.join(', ')}): keep a retired key listed until no history needs it`,
        );
      }
      const data = Buffer.from(payload.data ?? new Uint8Array());
      if (data.length < IV_BYTES + TAG_BYTES) throw new ValueError(`encrypted payload (key "${id}") is truncated`);
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, IV_BYTES));
      decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
      let plain: Buffer;
      try {
        plain = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
      } catch {
        throw new ValueError(`encrypted payload (key "${id}") failed authentication: altered, or a different key`);
      }
      return temporal.api.common.v1.Payload.decode(plain);
    });
  }
}

/**
 * Read one key file: 32 bytes, base64 (what `openssl rand -base64 32` writes). Errors name the field and the path,
 * never the content.
 */
function readKeyFile(field: string, file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(
      `${field} (${file}): ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'not readable' : code}`,
    );
  }
  const b64 = text.trim();
  const key = Buffer.from(b64, 'base64');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || key.length !== KEY_BYTES) {
    throw new Error(
      `${field} (${file}): must hold ${KEY_BYTES} random bytes, base64-encoded (make one with \`openssl rand -base64 32\`)`,
    );
  }
  return key;
}

/** The codec of a temporal.encryption section; key files resolve from the config file's directory. */
export function encryptionCodec(encryption: EncryptionConfig, configPath: string): EncryptionCodec {
  const keys = new Map<string, Buffer>();
  encryption.keys.forEach((k, i) =>
    keys.set(k.id, readKeyFile(`temporal.encryption.keys[${i}].file`, resolveFrom(configPath, k.file))),
  );
  return new EncryptionCodec(keys, encryption.encryptWith);
}

/**
 * The failure converter used with encryption: a failure's message and stack trace move into its encoded
 * attributes, a payload, so the codec encrypts them too (operators' error text can name models, paths and hosts).
 * A file of its own because workers load it by path, in the workflow sandbox too.
 */
export const ENCRYPTED_FAILURE_CONVERTER_PATH = require.resolve('./failure-converter');

/**
 * The data converter every gpuops Temporal client and worker uses for this config: the encryption codec (and the
 * failure converter that encodes messages) when temporal.encryption is set, the SDK's default otherwise.
 */
export function gpuopsDataConverter(loaded: LoadedConfig): DataConverter | undefined {
  const enc = loaded.config.temporal.encryption;
  if (!enc) return undefined;
  return dataConverterWith(encryptionCodec(enc, loaded.path));
}

/** The data converter around one codec (for tools that hold a codec already, e.g. tests and the codec server). */
export function dataConverterWith(codec: EncryptionCodec): DataConverter {
  return { payloadCodecs: [codec], failureConverterPath: ENCRYPTED_FAILURE_CONVERTER_PATH };
}
