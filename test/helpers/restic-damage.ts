/** Damaging a test's restic repository the way a failing disk would, for tests of `restic check`. */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Overwrite the head of every data pack of the local repository at `repo`. (Deleting packs instead makes restic
 * 0.14 retry the missing files for minutes rather than report them.)
 */
export function damageDataPacks(repo: string): void {
  const dataDir = path.join(repo, 'data');
  for (const sub of readdirSync(dataDir)) {
    for (const f of readdirSync(path.join(dataDir, sub))) {
      const file = path.join(dataDir, sub, f);
      const b = readFileSync(file);
      b.fill(0x42, 0, Math.min(64, b.length));
      writeFileSync(file, b);
    }
  }
}
