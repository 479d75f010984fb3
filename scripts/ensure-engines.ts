/**
 * `npm run engines`: build or install the real inference engines (llama-server, Ollama), an OCI registry, the tiny
 * test models and, when a Docker engine is reachable, the engine images, into the tool cache outside the repo
 * (src/sandbox/engine-supply.ts). Reuses what is there: the first run took 21 minutes on 2 cores, a
 * run with everything in place takes about a second.
 *
 *   --require        exit 1 when anything is still missing (CI)
 *   --no-images      do not build the Docker images
 *   --large-mb N     size of the large test model in MiB (0: do not make it)
 *   --jobs N         parallel build jobs (default: the number of CPUs)
 */
import { DEFAULT_LARGE_MODEL_MB, EngineSupplyError, ensureEngines, toolsDir } from '../src/sandbox/engine-supply';

const USAGE = 'usage: npm run engines -- [--require] [--no-images] [--large-mb N] [--jobs N]';

interface Args {
  require: boolean;
  images: boolean;
  largeModelMb: number;
  jobs?: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { require: false, images: true, largeModelMb: DEFAULT_LARGE_MODEL_MB };
  const number = (flag: string, value: string | undefined): number => {
    const n = Number(value);
    if (value === undefined || !Number.isFinite(n) || n < 0) throw new Error(`${flag} needs a number\n${USAGE}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--require') args.require = true;
    else if (a === '--no-images') args.images = false;
    else if (a === '--large-mb') args.largeModelMb = number(a, argv[++i]);
    else if (a === '--jobs') args.jobs = Math.max(1, number(a, argv[++i]));
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  return args;
}

async function main(): Promise<void> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error((err as Error).message);
    process.exitCode = 2;
    return;
  }
  const started = Date.now();
  console.log(`engines: tool cache ${toolsDir()}`);
  try {
    const tools = await ensureEngines({
      require: args.require,
      images: args.images,
      largeModelMb: args.largeModelMb,
      jobs: args.jobs,
    });
    const secs = Math.round((Date.now() - started) / 1000);
    for (const line of tools.missing) console.log(`engines: missing ${line}`);
    console.log(`engines: done in ${secs} s${tools.missing.length ? `, ${tools.missing.length} missing` : ''}`);
  } catch (err) {
    if (err instanceof EngineSupplyError) {
      for (const line of err.problems) console.error(`engines: ${line}`);
    } else {
      console.error(`engines: ${(err as Error).message.split('\n')[0]}`);
    }
    // Without --require nothing fails the caller: tests skip what is missing, with the reasons above.
    if (args.require) process.exitCode = 1;
  }
}

void main();
