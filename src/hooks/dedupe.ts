/**
 * The alert keys the receiver has already acted on, persisted so that a receiver restart does not start a recovery
 * again for an alert Alertmanager keeps re-sending (it repeats firing alerts every repeat_interval, and retries a
 * delivery it thinks failed). Bounded twice: entries expire after a TTL, and at most `maxEntries` are kept.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/** What a seen key led to, kept for the response body and for an operator reading the file. */
export interface SeenEntry {
  /** When the key was first acted on (ms since the epoch). */
  at: number;
  node: string;
  workflowId: string;
  runId: string;
}

const FileSchema = z.object({
  version: z.literal(1),
  entries: z.record(
    z.string(),
    z.object({ at: z.number(), node: z.string(), workflowId: z.string(), runId: z.string() }),
  ),
});

export interface DedupeStoreOptions {
  file: string;
  /** How long a key is remembered: longer than Alertmanager's repeat_interval (4 h unless configured). */
  ttlMs: number;
  maxEntries?: number;
  now?: () => number;
  /** Where a problem with the file is reported (it never stops the receiver). */
  warn?: (line: string) => void;
}

export class DedupeStore {
  private readonly entries = new Map<string, SeenEntry>();
  private readonly maxEntries: number;
  private readonly now: () => number;

  private constructor(private readonly opts: DedupeStoreOptions) {
    this.maxEntries = opts.maxEntries ?? 10_000;
    this.now = opts.now ?? Date.now;
  }

  /**
   * Open the store, reading what an earlier receiver wrote. An unreadable file is set aside (renamed *.corrupt) and
   * the store starts empty: losing dedupe memory costs at most a recovery that the workflow-ID policy then attaches
   * to a running one, while refusing to start would lose every alert.
   */
  static open(opts: DedupeStoreOptions): DedupeStore {
    const store = new DedupeStore(opts);
    if (existsSync(opts.file)) {
      try {
        const data = FileSchema.parse(JSON.parse(readFileSync(opts.file, 'utf8')));
        // Oldest first, so Map insertion order stays the eviction order.
        const sorted = Object.entries(data.entries).sort(([, a], [, b]) => a.at - b.at);
        for (const [key, entry] of sorted) store.entries.set(key, entry);
      } catch (err) {
        const aside = `${opts.file}.corrupt`;
        renameSync(opts.file, aside);
        opts.warn?.(`hooks: dedupe state ${opts.file} unreadable (${(err as Error).message}); moved to ${aside}`);
      }
    }
    store.prune();
    return store;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The entry for a key, unless it expired. */
  get(key: string): SeenEntry | undefined {
    const e = this.entries.get(key);
    if (e && this.now() - e.at >= this.opts.ttlMs) {
      this.entries.delete(key);
      return undefined;
    }
    return e;
  }

  /** Remember a key (in memory; call save() to persist). */
  record(key: string, entry: Omit<SeenEntry, 'at'>): SeenEntry {
    const full = { at: this.now(), ...entry };
    this.entries.delete(key);
    this.entries.set(key, full);
    this.prune();
    return full;
  }

  /** Drop expired entries, then the oldest beyond maxEntries. */
  private prune(): void {
    const cutoff = this.now() - this.opts.ttlMs;
    for (const [key, e] of this.entries) if (e.at <= cutoff) this.entries.delete(key);
    for (const key of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break;
      this.entries.delete(key);
    }
  }

  /**
   * Write the store atomically: a temp file in the same directory, then rename over the old one, so a crash mid-write
   * leaves the previous state rather than half a JSON document.
   */
  save(): void {
    this.prune();
    mkdirSync(path.dirname(this.opts.file), { recursive: true });
    const tmp = `${this.opts.file}.${process.pid}.tmp`;
    const data = { version: 1, entries: Object.fromEntries(this.entries) };
    writeFileSync(tmp, `${JSON.stringify(data, null, 1)}\n`);
    renameSync(tmp, this.opts.file);
  }
}
