/**
 * `dmesg` for the sandbox node: the simulated kernel ring buffer since the last boot, in the classic
 * `[  uptime.micros] msg` form, `-T`/`--ctime`, `--time-format iso|ctime|reltime|notime|raw`, `-t`, `-x` and
 * `-l/--level`, as util-linux prints them ($GPUOPS_SANDBOX_STATE).
 */
import type { KernelLine } from '../state';
import { err, loadState, out } from './lib/shim';

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const TIME_FORMATS = ['iso', 'ctime', 'reltime', 'delta', 'notime', 'raw'];
/** Options util-linux dmesg has that change nothing here. */
const ACCEPTED = ['-k', '--kernel', '-H', '--human', '-L', '--color', '--nopager', '-P'];

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

function micros(line: KernelLine): string {
  // Deterministic sub-millisecond digits: stable across calls, distinct per line.
  return pad(Math.round(line.up * 1_000_000) % 1_000_000, 6);
}

/** util-linux iso format: local time, comma before microseconds, numeric zone with a colon. */
function iso(line: KernelLine): string {
  const d = new Date(line.t);
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const zone = `${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())},${micros(line)}${zone}`;
}

function ctime(line: KernelLine): string {
  const d = new Date(line.t);
  return `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${d.getFullYear()}`;
}

function uptime(line: KernelLine): string {
  const s = Math.floor(line.up);
  return `${String(s).padStart(5, ' ')}.${micros(line)}`;
}

function main(argv: string[]): number {
  let format = 'raw-uptime';
  let decode = false;
  let levels: Set<string> | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq >= 0 ? a.slice(0, eq) : a;
    const val = (): string | undefined => (eq >= 0 ? a.slice(eq + 1) : argv[++i]);
    if (name === '--time-format') {
      const f = val();
      if (f === undefined || !TIME_FORMATS.includes(f)) {
        err(`dmesg: unknown time format: ${f}\n`);
        return 1;
      }
      format = f === 'raw' ? 'raw-uptime' : f;
    } else if (name === '-T' || name === '--ctime') format = 'ctime';
    else if (name === '-t' || name === '--notime') format = 'notime';
    else if (name === '-x' || name === '--decode') decode = true;
    else if (name === '-l' || name === '--level') levels = new Set(String(val()).split(','));
    else if (name === '-w' || name === '--follow') {
      err('dmesg: --follow is not supported by the gpuops sandbox shim\n');
      return 1;
    } else if (!ACCEPTED.includes(name) && !name.startsWith('--color')) {
      err(`dmesg: unrecognized option '${a}'\nTry 'dmesg --help' for more information.\n`);
      return 1;
    }
  }
  const { state } = loadState('dmesg');
  let prev: number | null = null;
  let text = '';
  for (const line of state.kernelLog) {
    const level = line.level === 'err' ? 'err' : line.level === 'warn' ? 'warn' : 'info';
    if (levels && !levels.has(level)) continue;
    const fac = decode ? `kern  :${level.padEnd(6)}: ` : '';
    let prefix: string;
    switch (format) {
      case 'iso':
        prefix = `${iso(line)} `;
        break;
      case 'ctime':
        prefix = `[${ctime(line)}] `;
        break;
      case 'notime':
        prefix = '';
        break;
      case 'reltime':
      case 'delta': {
        const delta = prev === null ? 0 : line.up - prev;
        prefix = `[<${String(delta.toFixed(6)).padStart(12, ' ')}>] `;
        break;
      }
      default:
        prefix = `[${uptime(line)}] `;
    }
    prev = line.up;
    text += `${fac}${prefix}${line.m}\n`;
  }
  out(text);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
