/**
 * The few HTML helpers the report pages need. Every string that comes from a record (model names, findings, reasons,
 * who did what) goes through `esc`, in text and in attribute values alike: a record is data, never markup.
 */

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escape text for HTML (and SVG) text and double- or single-quoted attribute values. */
export function esc(value: string | number | boolean | null | undefined): string {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
}

/** A table: escaped header cells, and rows of cells that are already HTML (build them with esc). */
export function table(head: string[], rows: string[][], cls = ''): string {
  const th = head.map((h) => `<th>${esc(h)}</th>`).join('');
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('\n');
  return `<table${cls ? ` class="${esc(cls)}"` : ''}><thead><tr>${th}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

/** A number for people: at most `digits` decimals, no trailing zeros. */
export function num(x: number, digits = 1): string {
  return String(Math.round(x * 10 ** digits) / 10 ** digits);
}

/** Milliseconds as a short duration: 850 ms, 12.3 s, 4 m 05 s, 2 h 10 m. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${num(ms / 1000)} s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)} m ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} m`;
}
