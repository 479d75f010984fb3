'use strict';
/** Helpers shared by the shims: locating the node's state file and a tiny Go-template evaluator for --format. */
const core = require('./core');

/** The node's state file: $GPUOPS_SANDBOX_STATE (set by the supervisor for the node worker). */
function stateFile(tool) {
  const file = process.env.GPUOPS_SANDBOX_STATE;
  if (!file) {
    process.stderr.write(`${tool} (gpuops sandbox shim): GPUOPS_SANDBOX_STATE is not set\n`);
    process.exit(127);
  }
  return file;
}

function loadState(tool) {
  const file = stateFile(tool);
  const state = core.tryReadState(file);
  if (!state) {
    process.stderr.write(`${tool} (gpuops sandbox shim): no sandbox state at ${file}\n`);
    process.exit(127);
  }
  return { file, state };
}

function lookupPath(value, pathText) {
  if (pathText === '.' || pathText === '') return value;
  let v = value;
  for (const part of pathText.replace(/^\./, '').split('.')) {
    if (v === null || v === undefined || typeof v !== 'object') return undefined;
    v = v[part];
  }
  return v;
}

/** How Go's text/template prints a value without `json`: maps and slices in Go syntax, nil as <nil>. */
function goPrint(v) {
  if (v === null || v === undefined) return '<no value>';
  if (Array.isArray(v)) return `[${v.map(goPrint).join(' ')}]`;
  if (typeof v === 'object') {
    const keys = Object.keys(v).sort();
    return `map[${keys.map((k) => `${k}:${goPrint(v[k])}`).join(' ')}]`;
  }
  return String(v);
}

/**
 * Render the subset of Go templates gpuops and operators use with docker: `{{json .Path}}`, `{{.Path}}`,
 * `{{json .}}` and literal text. Anything else is a template error, as docker would report one.
 */
function renderTemplate(template, value) {
  let out = '';
  let rest = template;
  for (;;) {
    const open = rest.indexOf('{{');
    if (open < 0) {
      out += rest;
      break;
    }
    out += rest.slice(0, open);
    const close = rest.indexOf('}}', open);
    if (close < 0) throw new Error(`template parsing error: template: :1: unclosed action`);
    const expr = rest
      .slice(open + 2, close)
      .replace(/^-?\s*/, '')
      .replace(/\s*-?$/, '');
    let m;
    if ((m = /^json\s+(\.[\w.]*)$/.exec(expr))) out += JSON.stringify(lookupPath(value, m[1]) ?? null);
    else if ((m = /^(\.[\w.]*)$/.exec(expr))) out += goPrint(lookupPath(value, m[1]));
    else throw new Error(`template parsing error: template: :1: function "${expr.split(/\s+/)[0]}" not defined`);
    rest = rest.slice(close + 2);
  }
  return out.replace(/\\n/g, '\n').replace(/\\t/g, '\t');
}

/** Parse "10m", "1h30m", "45s", an RFC 3339 time or a unix timestamp, as docker logs --since/--until do. */
function parseSince(text, now) {
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const rel = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/.exec(text);
  if (rel && text !== '') {
    const [, h, mi, s, ms] = rel;
    return now - ((Number(h || 0) * 60 + Number(mi || 0)) * 60 + Number(s || 0)) * 1000 - Number(ms || 0);
  }
  const t = Date.parse(text.replace(/(\.\d{3})\d+/, '$1'));
  if (Number.isNaN(t))
    throw new Error(`invalid value for "since": failed to parse value as time or duration: "${text}"`);
  return t;
}

/** Split argv into flags (with values for the flags that take one) and positionals, like docker's cobra parser. */
function parseArgs(argv, valueFlags) {
  const flags = {};
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (eq > 0) flags[name] = a.slice(eq + 1);
      else if (valueFlags.has(name)) flags[name] = argv[++i];
      else flags[name] = true;
    } else if (a.startsWith('-') && a.length > 1) {
      const name = a.slice(1, 2);
      if (valueFlags.has(name)) flags[name] = a.length > 2 ? a.slice(2).replace(/^=/, '') : argv[++i];
      else for (const ch of a.slice(1)) flags[ch] = true;
    } else {
      positional.push(a);
    }
  }
  return { flags, positional };
}

module.exports = { stateFile, loadState, renderTemplate, parseSince, parseArgs, goPrint };
