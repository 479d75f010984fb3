/**
 * Tools gpuops finds on PATH or installs for itself under .gpuops/tools/bin (no root, nothing global touched): the
 * Temporal CLI (src/temporal/cli.ts, from PyPI) and restic (from the Go module proxy, for the sandbox's backups).
 */
import { accessSync, constants, existsSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../config/load';
import { loadExeca } from './exec';

export const LOCAL_TOOLS_DIR = path.join(PROJECT_ROOT, '.gpuops', 'tools');
export const LOCAL_BIN_DIR = path.join(LOCAL_TOOLS_DIR, 'bin');

export function isExecutable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `name` on PATH, else gpuops's own install in .gpuops/tools/bin, else null. */
export function findTool(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  const local = path.join(LOCAL_BIN_DIR, name);
  return existsSync(local) && isExecutable(local) ? local : null;
}

/** The restic release installed when none is found (a Go module: github.com/restic/restic). */
export const RESTIC_VERSION = 'v0.17.3';

export const RESTIC_HELP = [
  'gpuops backups need restic. Install one of:',
  '  apt-get install restic            # Debian / Ubuntu',
  '  brew install restic               # macOS / Linuxbrew',
  `  go install github.com/restic/restic/cmd/restic@${RESTIC_VERSION}   # with Go, from the module proxy`,
].join('\n');

/**
 * restic, installing it with `go install` into .gpuops/tools/bin when it is missing and Go is there. Returns null
 * (after saying why) when it cannot be had: backups then fail with restic's own "not found", nothing else does.
 */
export async function ensureRestic(log: (line: string) => void = console.log): Promise<string | null> {
  const found = findTool('restic');
  if (found) return found;
  const { execa } = await loadExeca();
  log(`restic not found; installing ${RESTIC_VERSION} with go install into ${LOCAL_BIN_DIR} (Go module proxy)…`);
  const r = await execa('go', ['install', `github.com/restic/restic/cmd/restic@${RESTIC_VERSION}`], {
    reject: false,
    env: { GOBIN: LOCAL_BIN_DIR, GOFLAGS: '-mod=mod' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.exitCode === 0) return findTool('restic');
  log((r as { code?: string }).code === 'ENOENT' ? `no Go toolchain to build restic.\n${RESTIC_HELP}` : RESTIC_HELP);
  return null;
}
