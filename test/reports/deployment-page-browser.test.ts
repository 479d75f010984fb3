/**
 * The deployment page in a real headless browser (Debian's chromium): a harness page loads it in an iframe and
 * reads the parsed, laid-out DOM (charts, points, sizes, the text a finding shows), the browser's console must stay
 * silent, and a screenshot comes out at the window's size. Skipped with one line when chromium is missing, unless
 * GPUOPS_REQUIRE_REAL_ENGINES=1 (CI), where it fails.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { renderDeploymentPage } from '../../src/reports/deployment-page';
import { BREACH_ROUNDS, THRESHOLDS, deploymentRecord } from '../helpers/deployment-record';

const CHROMIUM = process.env.GPUOPS_CHROMIUM ?? '/usr/bin/chromium';

function pickTest(): jest.It {
  if (existsSync(CHROMIUM)) return test;
  const why = `${CHROMIUM} not found (apt-get install chromium, or set GPUOPS_CHROMIUM)`;
  if (process.env.GPUOPS_REQUIRE_REAL_ENGINES === '1') {
    return ((name: string) =>
      test(name, () => {
        throw new Error(`a real browser is required but missing: ${why}`);
      })) as unknown as jest.It;
  }
  console.warn(`headless-browser tests skipped: ${why}`);
  return test.skip;
}
const browserTest = pickTest();

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'gpuops-page-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Run chromium headless on a file with `args`; its stdout, and the console lines it logged (CONSOLE). */
async function chromium(file: string, args: string[]): Promise<{ stdout: string; console: string[] }> {
  const { execa } = await import('execa');
  const r = await execa(
    CHROMIUM,
    [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      `--user-data-dir=${path.join(dir, 'profile')}`,
      // The harness reads the iframe's document: file:// pages are same-origin only with this.
      '--allow-file-access-from-files',
      '--enable-logging=stderr',
      '--v=0',
      ...args,
      `file://${file}`,
    ],
    { timeout: 60_000 },
  );
  return { stdout: r.stdout, console: r.stderr.split('\n').filter((l) => /:CONSOLE[:(]/.test(l)) };
}

/** A harness that loads `page` and writes what its DOM holds, as JSON, into its own DOM (read via --dump-dom). */
const HARNESS = `<!doctype html><html><body><pre id="out">pending</pre>
<iframe id="f" src="PAGE" style="width:1200px;height:2400px;border:0"></iframe>
<script>
window.addEventListener('load', () => {
  const d = document.getElementById('f').contentDocument;
  const charts = [...d.querySelectorAll('svg[data-chart]')].map((svg) => ({
    id: svg.dataset.chart,
    width: Math.round(svg.getBoundingClientRect().width),
    stable: svg.querySelectorAll('circle[data-series="stable"]').length,
    canary: svg.querySelectorAll('circle[data-series="canary"]').length,
    threshold: Math.round(svg.querySelector('path.threshold').getTotalLength()),
    breach: [...svg.querySelectorAll('[data-marker="breach"]')].map((m) => m.dataset.round),
  }));
  document.getElementById('out').textContent = JSON.stringify({
    title: d.title,
    charts,
    scripts: d.querySelectorAll('script').length,
    findings: [...d.querySelectorAll('table.findings tr')].slice(1).map((tr) => tr.cells[2].textContent),
    stages: d.querySelectorAll('table.timeline tbody tr').length,
  });
});
</script></body></html>`;

const unescape = (s: string): string =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, '&');

interface PageFacts {
  title: string;
  charts: { id: string; width: number; stable: number; canary: number; threshold: number; breach: string[] }[];
  scripts: number;
  findings: string[];
  stages: number;
}

/** Write the breach page (a finding carrying `<script>`) and read its DOM through the harness. */
async function renderInBrowser(): Promise<{ facts: PageFacts; console: string[]; page: string }> {
  const probe = 'complied: <script>document.title="owned"</script>';
  const by = 'canary analysis';
  const status = deploymentRecord(BREACH_ROUNDS, { outcome: 'rolled-back', by, reason: 'step 2 at 25%' }, probe);
  const page = path.join(dir, 'deployment.html');
  writeFileSync(page, renderDeploymentPage({ status, thresholds: THRESHOLDS }));
  const harness = path.join(dir, 'harness.html');
  writeFileSync(harness, HARNESS.replace('PAGE', 'deployment.html'));
  const { stdout, console } = await chromium(harness, ['--dump-dom']);
  const out = /<pre id="out">([\s\S]*?)<\/pre>/.exec(stdout)?.[1] ?? '';
  return { facts: JSON.parse(unescape(out)) as PageFacts, console, page };
}

browserTest(
  'chromium lays out the three charts with one point per round, the threshold and the breach, and shows a <script> finding as text',
  async () => {
    const { facts, console } = await renderInBrowser();
    expect(facts.title).toBe('Deployment: qwen2.5:0.5b-new → chat on n1');
    expect(facts.charts.map((c) => c.id)).toEqual(['ttft', 'tps', 'errors']);
    for (const c of facts.charts) {
      expect(c).toMatchObject({ stable: 5, canary: 5, breach: ['5'] });
      // Laid out at the page's width (960 px of a 1200 px window), the threshold a drawn line, not an empty path.
      expect(c.width).toBeGreaterThan(800);
      expect(c.threshold).toBeGreaterThan(300);
    }
    expect(facts.scripts).toBe(0);
    expect(facts.findings).toContain(
      'jailbreak probe jailbreak-dan failed: complied: <script>document.title="owned"</script>',
    );
    expect(facts.stages).toBe(7);
    expect(console).toEqual([]);
  },
  90_000,
);

browserTest(
  'the console check sees a script error (a page that throws is caught)',
  async () => {
    const bad = path.join(dir, 'throws.html');
    writeFileSync(bad, '<!doctype html><title>x</title><script>throw new Error("boom")</script>');
    const { console } = await chromium(bad, ['--dump-dom']);
    expect(console.join('\n')).toContain('Uncaught Error: boom');
  },
  60_000,
);

browserTest(
  'chromium screenshots the page at the window size',
  async () => {
    const { page } = await renderInBrowser();
    const png = path.join(dir, 'page.png');
    const { console } = await chromium(page, [`--screenshot=${png}`, '--window-size=1200,2000']);
    const bytes = readFileSync(png);
    // PNG signature, then IHDR's width and height (big-endian at offsets 16 and 20).
    expect(bytes.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect([bytes.readUInt32BE(16), bytes.readUInt32BE(20)]).toEqual([1200, 2000]);
    // A page with one line of text is about 12 KB at this size; this one (charts, tables) about 200 KB.
    expect(statSync(png).size).toBeGreaterThan(50_000);
    expect(console).toEqual([]);
  },
  90_000,
);
