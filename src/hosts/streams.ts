/**
 * Framing for the byte streams gpuops reads as they arrive: newline-delimited lines (Ollama's NDJSON, restic's
 * `--json` output, child process logs) and server-sent events (the OpenAI-compatible streams of vLLM and
 * llama-server, parsed by `eventsource-parser`). One implementation for every reader, so a line that arrives in two
 * chunks, a "\r\n" ending and a UTF-8 character cut between chunks are handled the same everywhere.
 */
import { createParser, type EventSourceMessage, type EventSourceParser } from 'eventsource-parser';

/** Options of a LineSplitter. */
export interface LineSplitterOptions {
  /**
   * Longest partial line kept between chunks, in characters. A line that grows past it is dropped whole, up to its
   * newline (it is not a protocol line worth reading, and it must not grow memory without bound). Default: no limit.
   */
  maxLineLength?: number;
}

/**
 * Splits a chunked stream into lines. Bytes are decoded as one UTF-8 stream; "\n" ends a line and a "\r" before it
 * is dropped; the partial last line waits for the next chunk, and end() delivers it if the stream stops without a
 * final newline. An exception thrown by `onLine` propagates out of push(); the caller stops reading.
 */
export class LineSplitter {
  private carry = '';
  /** Inside a line that outgrew maxLineLength: drop everything up to its newline. */
  private skipping = false;
  private readonly decoder = new TextDecoder();

  constructor(
    private readonly onLine: (line: string) => void,
    private readonly opts: LineSplitterOptions = {},
  ) {}

  /** Feed the next chunk (bytes, or text already decoded). */
  push(chunk: Uint8Array | string): void {
    const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', start)) {
      const piece = text.slice(start, nl);
      start = nl + 1;
      if (this.skipping) {
        this.skipping = false;
        continue;
      }
      const line = this.carry + piece;
      this.carry = '';
      this.onLine(line.endsWith('\r') ? line.slice(0, -1) : line);
    }
    if (this.skipping) return;
    this.carry += text.slice(start);
    const max = this.opts.maxLineLength;
    if (max !== undefined && this.carry.length > max) {
      this.carry = '';
      this.skipping = true;
    }
  }

  /** The stream ended: deliver a last line that had no newline. */
  end(): void {
    const rest = this.carry + this.decoder.decode();
    this.carry = '';
    if (this.skipping) {
      this.skipping = false;
      return;
    }
    if (rest !== '') this.onLine(rest.endsWith('\r') ? rest.slice(0, -1) : rest);
  }
}

/** Options of an SseSplitter. */
export interface SseSplitterOptions {
  /** Most characters buffered for one unfinished event; past it the stream is abandoned with an error. */
  maxBufferSize?: number;
}

/**
 * Splits a server-sent-events stream into events with `eventsource-parser` (multi-line `data:` fields joined,
 * comments and `event:`/`id:` fields handled per the WHATWG spec). end() also delivers a last event whose blank line
 * never came, as engines that close the connection right after their final `data:` line intend.
 */
export class SseSplitter {
  private readonly decoder = new TextDecoder();
  private readonly parser: EventSourceParser;
  private failure: Error | undefined;

  constructor(onEvent: (event: EventSourceMessage) => void, opts: SseSplitterOptions = {}) {
    this.parser = createParser({
      onEvent,
      onError: (err) => {
        // Unknown fields are ignored, as the spec says; only an overflowing buffer ends the stream.
        if (err.type === 'max-buffer-size-exceeded') this.failure = err;
      },
      ...(opts.maxBufferSize !== undefined ? { maxBufferSize: opts.maxBufferSize } : {}),
    });
  }

  /** Feed the next chunk (bytes, or text already decoded). Throws once the event buffer overflowed. */
  push(chunk: Uint8Array | string): void {
    if (this.failure) throw this.failure;
    this.parser.feed(typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true }));
    if (this.failure) throw this.failure;
  }

  /** The stream ended: deliver the pending event, if any. */
  end(): void {
    if (this.failure) return;
    const rest = this.decoder.decode();
    // Two newlines end the pending field line (if any) and then the event.
    this.parser.feed(`${rest}\n\n`);
  }
}

/** Anything with push() and end(): a LineSplitter or an SseSplitter. */
export interface StreamSplitter {
  push(chunk: Uint8Array | string): void;
  end(): void;
}

/**
 * Read a fetch Response body through `splitter` as bytes arrive. A splitter callback that throws (an `{"error"}`
 * line) stops the transfer instead of leaving it open, and the error propagates.
 */
export async function readBody(res: Response, splitter: StreamSplitter): Promise<void> {
  if (!res.body) return;
  const reader = res.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      splitter.push(value);
    }
    splitter.end();
  } catch (err) {
    await reader.cancel().catch(() => undefined);
    throw err;
  }
}

/** Calls `onValue` with each parsed line of a newline-delimited JSON body, as bytes arrive (blank lines skipped). */
export async function readNdjson(res: Response, onValue: (value: unknown) => void): Promise<void> {
  await readBody(
    res,
    new LineSplitter((line) => {
      if (line.trim() !== '') onValue(JSON.parse(line));
    }),
  );
}

/**
 * Calls `onData` with the parsed JSON `data` of each server-sent event, as bytes arrive. The OpenAI convention's
 * terminating `data: [DONE]` and events without data (keep-alives) are skipped.
 */
export async function readSse(res: Response, onData: (value: unknown) => void): Promise<void> {
  await readBody(
    res,
    new SseSplitter((event) => {
      if (event.data === '' || event.data === '[DONE]') return;
      onData(JSON.parse(event.data));
    }),
  );
}
