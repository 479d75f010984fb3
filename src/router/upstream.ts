/**
 * One engine request on undici's dispatcher API, without request()'s per-request Readable, async iterator and
 * AbortSignal: the response's chunks are handed to a sink as the parser produces them, and a full client socket
 * pauses the engine's (backpressure end to end). Errors are undici's own (connect codes, UND_ERR_* timeouts), so
 * failover's classification of them (connectFailure, isTimeout) is unchanged.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';

/** Where the body goes once the caller has seen the headers. */
export interface BodySink {
  /** One chunk; false when the sink is full (the engine is paused until `resume`). */
  data(chunk: Buffer): boolean;
  end(): void;
  error(err: Error): void;
}

/** Largest 503 body read (and dropped) to keep its connection; a longer one is cut. */
const DISCARD_MAX = 64 * 1024;

/** An engine response whose headers have arrived; its body flows once `pipe` gives it a sink. */
export class UpstreamCall implements Dispatcher.DispatchHandler {
  statusCode = 0;
  headers: IncomingHttpHeaders = {};
  private controller: Dispatcher.DispatchController | undefined;
  private abortReason: Error | undefined;
  private sink: BodySink | undefined;
  /** Chunks (and the end or error) that came before `pipe`: the parser runs on in the tick that delivers headers. */
  private early: Buffer[] = [];
  private done: { err?: Error } | undefined;
  private started = false;
  private readonly onStart: (err?: Error) => void;

  private constructor(onStart: (err?: Error) => void) {
    this.onStart = onStart;
  }

  /** Send `opts` on `dispatcher`; resolves at the response headers, rejects when the request failed before them. */
  static start(dispatcher: Dispatcher, opts: Dispatcher.DispatchOptions, call?: (c: UpstreamCall) => void) {
    return new Promise<UpstreamCall>((resolve, reject) => {
      const c = new UpstreamCall((err) => (err ? reject(err) : resolve(c)));
      call?.(c);
      dispatcher.dispatch(opts, c);
    });
  }

  /** Cancel the request or its body (the client went away); the pending promise or sink gets the error. */
  abort(reason: Error): void {
    this.abortReason ??= reason;
    this.controller?.abort(reason);
  }

  /** Deliver the body to `sink` (once). */
  pipe(sink: BodySink): void {
    this.sink = sink;
    for (const chunk of this.early) this.deliver(chunk);
    this.early = [];
    if (this.done) {
      if (this.done.err) sink.error(this.done.err);
      else sink.end();
    }
  }

  /** Let a paused body flow again (the sink drained). */
  resume(): void {
    this.controller?.resume();
  }

  /** Read the body to its end and drop it (a 503 that is not forwarded); resolves either way. */
  discard(): Promise<void> {
    return new Promise((resolve) => {
      let bytes = 0;
      this.pipe({
        data: (chunk) => {
          bytes += chunk.length;
          if (bytes > DISCARD_MAX) this.abort(new Error('503 body too long to keep its connection'));
          return true;
        },
        end: resolve,
        error: () => resolve(),
      });
    });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.abortReason) controller.abort(this.abortReason);
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.statusCode = statusCode;
    this.headers = headers;
    this.started = true;
    this.onStart();
  }

  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.sink) this.deliver(chunk);
    else this.early.push(chunk);
  }

  onResponseEnd(): void {
    if (this.sink) this.sink.end();
    else this.done = {};
  }

  onResponseError(_c: Dispatcher.DispatchController | undefined, err: Error): void {
    if (!this.started) return this.onStart(err);
    if (this.sink) this.sink.error(err);
    else this.done = { err };
  }

  private deliver(chunk: Buffer): void {
    if (!this.sink!.data(chunk)) this.controller?.pause();
  }
}
