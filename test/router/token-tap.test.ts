/**
 * The router's token tap reads streamed answers with the shared framing of src/hosts/streams: server-sent events for
 * OpenAI-compatible engines, NDJSON for Ollama, whole however the bytes are cut into chunks.
 */
import { TokenTap } from '../../src/router/proxy';

/** Feed `text` to a tap cut at `at` (byte offsets) and end it. */
function tapOf(text: string, framing: 'sse' | 'ndjson', at: number[] = []): TokenTap {
  const bytes = Buffer.from(text, 'utf8');
  const tap = new TokenTap(true, framing);
  let from = 0;
  for (const to of [...at, bytes.length]) {
    tap.push(bytes.subarray(from, to));
    from = to;
  }
  tap.end();
  return tap;
}

const delta = (content: string): string =>
  `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n`;

test('counts OpenAI SSE content chunks cut at every byte, and prefers the usage the engine reports', () => {
  const noUsage = `${delta('Hel')}${delta('lo ')}${delta('wörld')}data: [DONE]\n\n`;
  const withUsage = `${delta('Hi')}data: {"choices":[],"usage":{"completion_tokens":7}}\n\ndata: [DONE]\n\n`;
  for (let i = 1; i < Buffer.byteLength(noUsage); i++) {
    expect(tapOf(noUsage, 'sse', [i]).tokens()).toBe(3);
  }
  for (let i = 1; i < Buffer.byteLength(withUsage); i++) {
    expect(tapOf(withUsage, 'sse', [i]).tokens()).toBe(7);
  }
});

test('reads an event whose data spans several data: lines, and skips comments and named events', () => {
  const text =
    ': ping\n\nevent: message\ndata: {"choices":[{"delta":{"content":"a"}}],\ndata: "usage":{"completion_tokens":2}}\n\n';
  expect(tapOf(text, 'sse').tokens()).toBe(2);
});

test('notices an error object inside a 200 stream', () => {
  const tap = tapOf(`${delta('a')}data: {"error":{"message":"CUDA out of memory","code":500}}\n\n`, 'sse');
  expect(tap.streamError).toBe(true);
  expect(tapOf(`${delta('a')}data: [DONE]\n\n`, 'sse').streamError).toBe(false);
});

test('reads Ollama NDJSON lines cut anywhere, with the final eval_count', () => {
  const text =
    '{"model":"m","message":{"role":"assistant","content":"Hé"},"done":false}\n' +
    '{"model":"m","message":{"role":"assistant","content":"llo"},"done":false}\n' +
    '{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":2}\n';
  for (let i = 1; i < Buffer.byteLength(text); i++) expect(tapOf(text, 'ndjson', [i]).tokens()).toBe(2);
});

test('an event too large to be protocol is left unread without disturbing the tap', () => {
  const huge = `data: ${'x'.repeat(1 << 21)}`;
  const tap = new TokenTap(true, 'sse');
  expect(() => {
    tap.push(Buffer.from(delta('a')));
    tap.push(Buffer.from(huge));
    tap.push(Buffer.from('\n\n'));
    tap.end();
  }).not.toThrow();
  expect(tap.tokens()).toBe(1);
});
