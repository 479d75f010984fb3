/**
 * The shared stream framing (src/hosts/streams.ts): lines and server-sent events read whole however the bytes are cut
 * into chunks, as engines, restic, child processes and the router's tap all need.
 */
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ResticCli, type ResticBackupStatus } from '../../src/hosts/restic';
import { LineSplitter, readNdjson, readSse, SseSplitter } from '../../src/hosts/streams';
import { readSse as engineReadSse } from '../../src/hosts/engines';

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

/** Cut `text`'s UTF-8 bytes at every offset in `at`. */
function cut(text: string, at: number[]): Uint8Array[] {
  const bytes = utf8(text);
  const bounds = [0, ...at, bytes.length];
  return bounds.slice(1).map((end, i) => bytes.subarray(bounds[i], end));
}

/** A fetch Response whose body arrives as exactly these chunks. */
function chunked(chunks: Uint8Array[]): Response {
  let i = 0;
  return new Response(
    new ReadableStream<Uint8Array>({
      pull(c) {
        const next = chunks[i++];
        if (next) c.enqueue(next);
        else c.close();
      },
    }),
  );
}

function lines(chunks: (Uint8Array | string)[], opts?: { maxLineLength?: number }): string[] {
  const out: string[] = [];
  const s = new LineSplitter((l) => out.push(l), opts);
  for (const c of chunks) s.push(c);
  s.end();
  return out;
}

describe('LineSplitter', () => {
  test('joins a line cut across chunks, at every possible cut', () => {
    const text = '{"status":"pulling"}\r\n{"status":"success"}\n';
    for (let i = 1; i < text.length; i++) {
      expect(lines(cut(text, [i]))).toEqual(['{"status":"pulling"}', '{"status":"success"}']);
    }
  });

  test('keeps a UTF-8 character cut between chunks, and delivers a last line without newline', () => {
    const text = 'température 71°C\nlast';
    const deg = utf8(text).indexOf(0xb0);
    expect(lines(cut(text, [deg]))).toEqual(['température 71°C', 'last']);
  });

  test('keeps empty lines (callers decide) and many lines in one chunk', () => {
    expect(lines(['a\n\nb\nc\n'])).toEqual(['a', '', 'b', 'c']);
  });

  test('drops a partial line that outgrows maxLineLength, up to its newline, and reads on', () => {
    expect(lines(['ok\n', 'x'.repeat(10), 'y'.repeat(10), 'z\nnext\n'], { maxLineLength: 15 })).toEqual(['ok', 'next']);
    expect(lines(['ok\n', 'x'.repeat(20)], { maxLineLength: 15 })).toEqual(['ok']);
  });
});

describe('SseSplitter', () => {
  function events(chunks: (Uint8Array | string)[]): { event?: string; data: string }[] {
    const out: { event?: string; data: string }[] = [];
    const s = new SseSplitter((e) => out.push(e.event ? { event: e.event, data: e.data } : { data: e.data }));
    for (const c of chunks) s.push(c);
    s.end();
    return out;
  }

  test('reads events cut at every byte, with comments, CRLF, event names and multi-line data', () => {
    const text = ': keep-alive\r\n\r\ndata: {"a":1}\r\n\r\nevent: usage\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n';
    for (let i = 1; i < utf8(text).length; i++) {
      expect(events(cut(text, [i]))).toEqual([
        { data: '{"a":1}' },
        { event: 'usage', data: '{"b":\n2}' },
        { data: '[DONE]' },
      ]);
    }
  });

  test('delivers a last event whose blank line never came', () => {
    expect(events(['data: {"x":1}\n'])).toEqual([{ data: '{"x":1}' }]);
    expect(events(['data: {"x":1}'])).toEqual([{ data: '{"x":1}' }]);
  });
});

describe('readNdjson and readSse', () => {
  test('readNdjson parses each line of a chunked body and skips blank lines', async () => {
    const seen: unknown[] = [];
    await readNdjson(chunked(cut('{"a":1}\n\n{"b":"ü"}\n', [3, 12])), (v) => seen.push(v));
    expect(seen).toEqual([{ a: 1 }, { b: 'ü' }]);
  });

  test('readSse parses each event’s data, joining multi-line data and skipping [DONE]', async () => {
    const seen: unknown[] = [];
    const body = 'data: {"choices":[{"delta":{"content":"Hi"}}],\ndata: "usage":null}\n\n: ping\n\ndata: [DONE]\n\n';
    await engineReadSse(chunked(cut(body, [7, 40])), (v) => seen.push(v));
    expect(seen).toEqual([{ choices: [{ delta: { content: 'Hi' } }], usage: null }]);
  });

  test('a handler that throws stops the transfer and the error comes back', async () => {
    let pulled = 0;
    const res = new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          pulled++;
          c.enqueue(utf8('data: {"error":{"message":"CUDA out of memory"}}\n\n'));
        },
      }),
    );
    await expect(
      readSse(res, (v) => {
        throw new Error((v as { error: { message: string } }).error.message);
      }),
    ).rejects.toThrow('CUDA out of memory');
    expect(pulled).toBeLessThan(5);
  });
});

describe('restic backup --json read as it streams', () => {
  test('status, error and summary lines cut across pipe chunks, a path with a multi-byte character included', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-restic-stream-'));
    const passwordFile = path.join(dir, 'pw');
    writeFileSync(passwordFile, 'x\n');
    const status = '{"message_type":"status","percent_done":0.5,"total_files":2,"files_done":1}\n';
    const error =
      '{"message_type":"error","error":{"message":"open /models/modèle.gguf: permission denied"},"during":"archival"}\n';
    const summary =
      '{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":1,' +
      '"dirs_changed":0,"dirs_unmodified":0,"data_added":10,"total_files_processed":1,"total_bytes_processed":10,' +
      '"total_duration":0.1,"snapshot_id":"1a2b3c4d"}';
    const bin = path.join(dir, 'restic');
    // Each write is a separate pipe chunk (the pauses), cut inside the status line and inside "è".
    const whole = Buffer.from(status + error + summary, 'utf8');
    const cuts = [20, Buffer.byteLength(status) + Buffer.from(error).indexOf(0xa8), whole.length];
    writeFileSync(
      bin,
      `#!/usr/bin/env node
const { setTimeout: sleep } = require('node:timers/promises');
const whole = Buffer.from(${JSON.stringify(whole.toString('base64'))}, 'base64');
const cuts = ${JSON.stringify(cuts)};
let from = 0;
(async () => {
  for (const to of cuts) {
    process.stdout.write(whole.subarray(from, to));
    from = to;
    await sleep(150);
  }
})();
`,
    );
    chmodSync(bin, 0o755);
    const progress: ResticBackupStatus[] = [];
    const r = await new ResticCli({ repository: dir, passwordFile, bin }).backup([dir], {
      onProgress: (s) => progress.push(s),
    });
    expect(progress).toEqual([expect.objectContaining({ percent_done: 0.5, files_done: 1 })]);
    expect(r.warnings).toEqual([expect.stringContaining('open /models/modèle.gguf: permission denied')]);
    expect(r.summary.snapshot_id).toBe('1a2b3c4d');
  });
});
