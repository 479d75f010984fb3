/**
 * The record payloads of a SQLite database file that do not lie in one piece in the file: SQLite keeps the start of
 * a large record (a Temporal history blob, a mutable-state row) on its b-tree page and the rest on a chain of
 * overflow pages, each starting with the next page's number, so a value that crosses a page boundary is not one run
 * of bytes. This reads the file format (https://www.sqlite.org/fileformat2.html) and yields each spilled payload
 * joined up, for the secret scan; a payload that fits its page is already contiguous in the file's raw bytes.
 * Pages in a `-wal` file (frames of a 24-byte header and a page image) override the main file's, the latest frame
 * winning, as a reader after recovery would see them.
 */

export interface SpilledPayload {
  page: number;
  cell: number;
  payload: Buffer;
}

const HEADER = Buffer.from('SQLite format 3\0', 'latin1');

export function isSqlite(head: Buffer): boolean {
  return head.length >= HEADER.length && head.subarray(0, HEADER.length).equals(HEADER);
}

function varint(buf: Buffer, at: number): [value: number, next: number] {
  let v = 0;
  for (let i = 0; i < 9; i++) {
    const b = buf[at + i] ?? 0;
    if (i === 8) return [v * 256 + b, at + 9];
    v = v * 128 + (b & 0x7f);
    if (b < 0x80) return [v, at + i + 1];
  }
  return [v, at + 9];
}

/** The pages of `db` (1-based), overridden by the frames of `wal` when given. */
function pagesOf(db: Buffer, wal?: Buffer): { pages: Map<number, Buffer>; usable: number } {
  const raw = db.readUInt16BE(16);
  const size = raw === 1 ? 65536 : raw;
  const usable = size - (db[20] ?? 0);
  const pages = new Map<number, Buffer>();
  for (let p = 0; (p + 1) * size <= db.length; p++) pages.set(p + 1, db.subarray(p * size, (p + 1) * size));
  if (wal && wal.length >= 32 && wal.readUInt32BE(8) === size) {
    for (let at = 32; at + 24 + size <= wal.length; at += 24 + size) {
      pages.set(wal.readUInt32BE(at), wal.subarray(at + 24, at + 24 + size));
    }
  }
  return { pages, usable };
}

/** Every payload that spills onto overflow pages, joined up. A page that does not parse as a b-tree page is skipped. */
export function* spilledPayloads(db: Buffer, wal?: Buffer): Generator<SpilledPayload> {
  if (!isSqlite(db) || db.length < 100) return;
  const { pages, usable } = pagesOf(db, wal);
  for (const [no, page] of pages) {
    const h = no === 1 ? 100 : 0; // page 1 carries the 100-byte file header first
    const type = page[h];
    if (type !== 2 && type !== 5 && type !== 10 && type !== 13) continue;
    if (type === 5) continue; // interior table cells hold only a child pointer and a rowid
    const table = type === 13;
    const cells = page.readUInt16BE(h + 3);
    const ptrs = h + (type === 2 ? 12 : 8);
    // Local payload limits of the file format (section 1.6): X for the largest that stays local, M the least kept.
    const maxLocal = table ? usable - 35 : Math.floor(((usable - 12) * 64) / 255) - 23;
    const minLocal = Math.floor(((usable - 12) * 32) / 255) - 23;
    for (let c = 0; c < cells && ptrs + 2 * c + 2 <= page.length; c++) {
      let at = page.readUInt16BE(ptrs + 2 * c);
      if (at < ptrs || at >= page.length) continue;
      if (type === 2) at += 4; // left child page number
      const [size, afterSize] = varint(page, at);
      at = table ? varint(page, afterSize)[1] : afterSize; // table leaves carry the rowid next
      if (size <= maxLocal) continue;
      const k = minLocal + ((size - minLocal) % (usable - 4));
      const local = k <= maxLocal ? k : minLocal;
      const joined = joinChain(pages, usable, page, at, local, size);
      if (joined) yield { page: no, cell: c, payload: joined };
    }
  }
}

function joinChain(
  pages: Map<number, Buffer>,
  usable: number,
  page: Buffer,
  at: number,
  local: number,
  size: number,
): Buffer | null {
  if (at + local + 4 > page.length) return null;
  const parts = [page.subarray(at, at + local)];
  let have = local;
  let next = page.readUInt32BE(at + local);
  const seen = new Set<number>();
  while (have < size && next !== 0 && !seen.has(next)) {
    seen.add(next);
    const ov = pages.get(next);
    if (!ov) return null;
    const take = Math.min(usable - 4, size - have);
    parts.push(ov.subarray(4, 4 + take));
    have += take;
    next = ov.readUInt32BE(0);
  }
  return Buffer.concat(parts);
}
