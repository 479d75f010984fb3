// npm prestart / pretest hook, so that `npm start` and `npm test` are each one command on a fresh clone:
// install npm dependencies when they are missing or stale, make sure a Temporal CLI is available, and build the
// sandbox node's shims (TypeScript bundled into .gpuops/sandbox-bin/) when a source changed.
// Plain Node with no dependencies, because it runs before node_modules exists.
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};

const installed = path.join(root, 'node_modules', '.package-lock.json');
const lock = path.join(root, 'package-lock.json');
if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(lock).mtimeMs) {
  // Exactly the committed lockfile (it records every platform's optional binaries, so `npm ci` works anywhere and
  // leaves the clone clean; .ci/run fails when a fresh resolution would change it).
  console.log('gpuops: installing npm dependencies (npm ci, from package-lock.json)…');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}
const tsx = path.join(root, 'node_modules', '.bin', 'tsx');
run(tsx, [path.join(root, 'scripts', 'ensure-temporal.ts')]);
run(tsx, [path.join(root, 'scripts', 'build-sandbox-shims.ts')]);
