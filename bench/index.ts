/**
 * `npm run bench`: every registered benchmark, one after another (they measure latency, so never in parallel).
 * A bench module exports `run(): Promise<void>` and prints its own results; add it to BENCHES.
 */
const BENCHES: [name: string, load: () => Promise<{ run: () => Promise<void> }>][] = [
  ['router', () => import('./router.js')],
  ['backup', () => import('./backup.js')],
  ['recovery', () => import('./recovery.js')],
  ['lifecycle', () => import('./lifecycle.js')],
  ['history', () => import('./history.js')],
  ['fleet', () => import('./fleet.js')],
];

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  for (const [name, load] of BENCHES) {
    if (only.length > 0 && !only.includes(name)) continue;
    console.log(`=== bench: ${name}`);
    await (await load()).run();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
