/**
 * Cron expressions of backup schedules, checked when the config is loaded (`gpuops config validate`, every command)
 * instead of when `gpuops schedules sync` hands them to Temporal. Accepted: what Temporal Schedules read the same way
 * an operator used to crontab does — five fields (minute hour day-of-month month day-of-week) with numbers, `*`,
 * ranges, lists, steps and JAN-DEC / SUN-SAT names, or the macros @hourly, @daily (@midnight), @weekly, @monthly and
 * @yearly (@annually). Field values are checked by croner.
 *
 * Refused, although Temporal would take them, because Temporal reads them differently from most cron dialects:
 * six or seven fields (Temporal's sixth field is the year, not the seconds), `#` (Temporal starts a comment there, so
 * `MON#1` would silently mean every Monday), a day-of-month together with a day-of-week (Temporal runs only on days
 * matching both, crontab on days matching either), `L`, `W` and `?` (not supported by Temporal), and the `@every`
 * and `TZ=` forms (schedule.every and schedule.timezone say the same thing).
 */
import { Cron } from 'croner';

/** Temporal's own expansions of the cron macros it knows. */
const MACROS: Readonly<Record<string, string>> = {
  '@yearly': '0 0 1 1 *',
  '@annually': '0 0 1 1 *',
  '@monthly': '0 0 1 * *',
  '@weekly': '0 0 * * 0',
  '@daily': '0 0 * * *',
  '@midnight': '0 0 * * *',
  '@hourly': '0 * * * *',
};

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

const FIELDS: readonly { name: string; values: string; names?: readonly string[] }[] = [
  { name: 'minute', values: '0-59' },
  { name: 'hour', values: '0-23' },
  { name: 'day-of-month', values: '1-31' },
  { name: 'month', values: '1-12 or JAN-DEC', names: MONTHS },
  { name: 'day-of-week', values: '0-7 or SUN-SAT (0 and 7 are Sunday)', names: DAYS },
];

/** How croner reads a five-field expression as Temporal does: seconds 0, a bare `5/15` allowed, days ANDed. */
const CRONER = { mode: '5-part', sloppyRanges: true, domAndDow: true } as const;

/** One comma-separated part of a field: `*`, a value or a range, with an optional step. */
function partShape(names: readonly string[] | undefined): RegExp {
  const value = names ? `(?:\\d+|${names.join('|')})` : '\\d+';
  return new RegExp(`^(?:\\*|${value}(?:-${value})?)(?:/\\d+)?$`, 'i');
}

/** What is wrong with one field, or null. */
function fieldProblem(index: number, value: string): string | null {
  const f = FIELDS[index];
  if (!f) return null;
  const rule = `must be ${f.values}, *, a range (a-b), a list (a,b) or a step (*/n)`;
  // Names such as JUL and WED hold the letters; what is left once they are taken out must not.
  const bare = f.names ? value.toUpperCase().replace(new RegExp(f.names.join('|'), 'g'), '') : value.toUpperCase();
  if (/[LW?]/.test(bare)) {
    return `${f.name} "${value}": L, W and ? are not supported by Temporal Schedules (${rule})`;
  }
  if (!value.split(',').every((p) => partShape(f.names).test(p))) return `${f.name} "${value}" ${rule}`;
  const probe = FIELDS.map((_, i) => (i === index ? value : '*')).join(' ');
  try {
    new Cron(probe, CRONER);
  } catch {
    return `${f.name} "${value}" ${rule}`;
  }
  return null;
}

/**
 * Everything wrong with a cron expression, one sentence each, naming the field and the rule it broke; [] when
 * Temporal will read it as an operator expects.
 */
export function cronProblems(expression: string): string[] {
  const expr = expression.trim();
  if (expr === '') return ['must be a cron expression such as "0 3 * * *" (03:00 every day)'];
  if (/^@every\b/i.test(expr)) return ['@every is not accepted in cron: set schedule.every instead (e.g. every: 6h)'];
  if (/^(?:CRON_)?TZ=/.test(expr)) return ['a TZ= prefix is not accepted in cron: set schedule.timezone instead'];
  if (expr.includes('#')) {
    return [
      '"#" is not accepted: Temporal reads the rest as a comment (so an nth weekday such as MON#1 is not supported)',
    ];
  }
  let fields: string[];
  if (expr.startsWith('@')) {
    const expanded = MACROS[expr.toLowerCase()];
    if (!expanded) return [`unknown macro "${expr}": use @hourly, @daily, @weekly, @monthly or @yearly`];
    fields = expanded.split(' ');
  } else {
    fields = expr.split(/\s+/);
  }
  if (fields.length !== 5) {
    const why =
      fields.length === 6 || fields.length === 7
        ? ': Temporal reads a sixth field as the year, not as seconds first as some cron dialects do'
        : '';
    return [`must have 5 fields (minute hour day-of-month month day-of-week), got ${fields.length}${why}`];
  }
  const problems = fields.map((v, i) => fieldProblem(i, v)).filter((p): p is string => p !== null);
  if (problems.length > 0) return problems;
  const [, , dom = '*', , dow = '*'] = fields;
  if (dom !== '*' && dow !== '*') {
    return [
      `sets both day-of-month "${dom}" and day-of-week "${dow}": Temporal runs only on days matching both, ` +
        'not on either as crontab does; set one of them to * (or use two plans)',
    ];
  }
  if (new Cron(fields.join(' '), CRONER).nextRun() === null) {
    return ['never runs: no date matches its day-of-month and month (such as 30 February)'];
  }
  return [];
}
