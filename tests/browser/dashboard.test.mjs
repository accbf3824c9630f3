// End-to-end test of the kodomasu dashboard in headless Chromium (Debian's `chromium`, driven
// by playwright-core). Run it through scripts/browser-test.sh, which installs what is missing
// and builds the binary.
//
// It starts a real `kodomasu dev` (embedded SQLite in a temporary directory, simulators, a
// bootstrap token) on a free port, then in the browser: signs in through the form, watches a
// demo.chain started over the API complete in the list (updated from the live stream), pauses
// and resumes (then cancels) another one from its page, opens the finished one's timeline,
// filters the list, opens a paid job's payment, and visits the workers and flows pages. Screenshots go to target/screenshots/ (or SCREENSHOT_DIR).
//
// Environment: KODOMASU_BIN (default target/debug/kodomasu), CHROMIUM (default: chromium on
// PATH), SCREENSHOT_DIR, KEEP_DATA=1 (keep the temporary data directory).

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const BIN = process.env.KODOMASU_BIN || path.join(ROOT, 'target/debug/kodomasu');
const SHOTS = path.resolve(process.env.SCREENSHOT_DIR || path.join(ROOT, 'target/screenshots'));
const TOKEN = `kdm_${randomBytes(32).toString('base64url')}`;
const WAIT = 60_000;

function log(...args) {
  console.log('[browser-test]', ...args);
}

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']) {
    try {
      return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim();
    } catch {
      // try the next name
    }
  }
  throw new Error('no Chromium found: install Debian\'s `chromium` package or set CHROMIUM');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `kodomasu dev` with none of the caller's kodomasu variables, a bootstrap token, no rate limit. */
async function startDev(dataDir, port, logFile) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(KODOMASU_|MASUMI_|KODOSUMI_)/.test(key) || key === 'DATABASE_URL') continue;
    env[key] = value;
  }
  Object.assign(env, {
    KODOMASU_BOOTSTRAP_TOKEN: TOKEN,
    KODOMASU_RATE_LIMIT_PER_MINUTE: '0',
    RUST_LOG: 'info,sqlx=warn,tower_http=warn',
  });
  const out = fs.openSync(logFile, 'w');
  const child = spawn(BIN, ['dev', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`, '--poll-interval', '300ms'], {
    env,
    stdio: ['ignore', out, out],
  });
  const base = `http://127.0.0.1:${port}`;
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`kodomasu dev exited with ${child.exitCode}; see ${logFile}`);
    try {
      const res = await fetch(`${base}/health`);
      if (res.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() - started > WAIT) throw new Error(`kodomasu dev did not answer /health within ${WAIT} ms; see ${logFile}`);
    await sleep(200);
  }
  return { child, base };
}

async function apiCall(base, method, urlPath, body) {
  const res = await fetch(`${base}/api/v1${urlPath}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!res.ok) throw new Error(`${method} ${urlPath}: ${res.status} ${text}`);
  return data;
}

async function startChain(base, key, steps, sleepMs) {
  const body = await apiCall(base, 'POST', '/workflows', { type: 'demo.chain', key, input: { steps, sleep_ms: sleepMs } });
  return body.id;
}

async function main() {
  if (!fs.existsSync(BIN)) throw new Error(`${BIN} is missing: build it with \`cargo build -p api --bin kodomasu\``);
  const chromiumPath = findChromium();
  fs.mkdirSync(SHOTS, { recursive: true });
  for (const f of fs.readdirSync(SHOTS)) if (f.endsWith('.png')) fs.rmSync(path.join(SHOTS, f));
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kodomasu-browser-'));
  const logFile = path.join(SHOTS, 'kodomasu-dev.log');
  const port = await freePort();
  log(`chromium: ${chromiumPath}; kodomasu: ${BIN}; data: ${dataDir}; port ${port}`);

  const { child, base } = await startDev(dataDir, port, logFile);
  let browser = null;
  let page = null;
  const pageErrors = [];
  const foreignRequests = [];
  try {
    // What the server offers decides a few expectations (the dashboard degrades without them).
    const authRequired = (await fetch(`${base}/api/v1/workflows`)).status === 401;
    const sse = await (async () => {
      const ac = new AbortController();
      try {
        const res = await fetch(`${base}/api/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ac.signal });
        return res.ok && (res.headers.get('content-type') || '').startsWith('text/event-stream');
      } finally {
        ac.abort();
      }
    })().catch(() => false);
    // A missing route answers 404 "no route for …"; the timeline of an unknown id another 404.
    const noRoute = async (p) => {
      const res = await fetch(`${base}${p}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      const body = await res.json().catch(() => ({}));
      return res.status === 404 && String(body.message || '').startsWith('no route');
    };
    const timelineEndpoint = !(await noRoute('/api/v1/workflows/00000000-0000-0000-0000-000000000000/timeline'));
    log(`server: auth ${authRequired ? 'required' : 'NOT required'}, live stream ${sse ? 'available' : 'NOT available'}, timeline endpoint ${timelineEndpoint ? 'available' : 'not available'}`);

    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
    const context = await browser.newContext({ viewport: { width: 1440, height: 960 }, colorScheme: 'light' });
    page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith(base) && !url.startsWith('data:')) foreignRequests.push(url);
    });

    // 1. `/` leads to the dashboard; sign in through the form.
    await page.goto(`${base}/`);
    if (!page.url().startsWith(`${base}/dashboard`)) throw new Error(`/ did not redirect to /dashboard: ${page.url()}`);
    if (authRequired) {
      await page.waitForSelector('#login-form', { state: 'visible' });
      await page.fill('#login-token', 'kdm_wrong-token');
      await page.click('#login-submit');
      await page.waitForFunction(() => document.querySelector('#login-error').textContent.length > 0);
      log(`wrong token refused: "${await page.textContent('#login-error')}"`);
      await page.screenshot({ path: path.join(SHOTS, '00-login.png') });
      await page.fill('#login-token', TOKEN);
      await page.click('#login-submit');
      await page.waitForSelector('#login', { state: 'hidden' });
      log('signed in through the form');
    } else {
      throw new Error('the admin API answered without a token: access control is off');
    }
    await page.waitForSelector('#workflows-table');

    if (!sse) throw new Error('the server has no live stream (/api/v1/events)');
    if (!timelineEndpoint) throw new Error('the server has no /timeline endpoint');
    await page.waitForSelector('#live-status[data-state="live"]');

    // 2. A job started over the API shows up and completes in the list.
    const stamp = Date.now().toString(36);
    const doneId = await startChain(base, `browser-done-${stamp}`, 4, 300);
    log(`started ${doneId} (4 steps)`);
    const doneRow = `[data-testid="workflow-row"][data-id="${doneId}"]`;
    await page.waitForSelector(doneRow);
    await page.waitForSelector(`${doneRow}[data-status="completed"]`);
    log('it completed in the list');
    const events = Number(await page.getAttribute('#live-status', 'data-events'));
    if (!(events > 0)) throw new Error('the page received no transition from /api/v1/events');
    log(`the page received ${events} transitions from the live stream`);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="count-completed"]')?.dataset.count) >= 1);

    // 3. Another, long enough to pause: pause, resume, cancel from its page.
    const longId = await startChain(base, `browser-pause-${stamp}`, 60, 400);
    log(`started ${longId} (60 steps of 400 ms)`);
    const longRow = `[data-testid="workflow-row"][data-id="${longId}"]`;
    await page.waitForSelector(`${longRow}[data-status="running"]`);
    await page.waitForFunction(() => Number(document.querySelector('[data-testid="count-running"]')?.dataset.count) >= 1);
    await page.screenshot({ path: path.join(SHOTS, '01-workflows-list.png'), fullPage: true });
    log('screenshot: workflows list');

    await page.click(`${longRow} a`);
    await page.waitForSelector(`#workflow-view[data-id="${longId}"]`);
    await page.waitForSelector('#wf-status[data-status="running"]');
    await page.waitForSelector('#btn-pause:not([disabled])');
    await page.click('#btn-pause');
    await page.waitForSelector('#wf-status[data-status="paused"]');
    await page.waitForSelector('[data-testid="timeline-entry"][data-kind="paused"]');
    await page.waitForSelector('#wf-waiting[data-kind="paused"]');
    const paused = await apiCall(base, 'GET', `/workflows/${longId}`);
    if (paused.status !== 'paused') throw new Error(`the API says ${paused.status}, not paused`);
    await page.waitForSelector('[data-testid="attempt-row"]');
    await page.waitForSelector('#toast', { state: 'hidden' });
    await page.screenshot({ path: path.join(SHOTS, '02-workflow-paused.png'), fullPage: true });
    log('paused; screenshot: paused workflow');

    await page.click('#btn-resume');
    await page.waitForSelector('#wf-status[data-status="running"]');
    await page.waitForSelector('[data-testid="timeline-entry"][data-kind="resumed"]');
    log('resumed');
    await page.click('#btn-cancel');
    await page.waitForSelector('#btn-cancel.armed');
    await page.click('#btn-cancel');
    await page.waitForSelector('#wf-status[data-status="cancelled"]');
    await page.waitForSelector('#btn-pause[disabled]');
    log('cancelled');

    // 4. The finished workflow's page: timeline, attempts, journal.
    await page.click('a.back');
    await page.waitForSelector(`${doneRow} a`);
    await page.click(`${doneRow} a`);
    await page.waitForSelector(`#workflow-view[data-id="${doneId}"]`);
    await page.waitForSelector('#wf-status[data-status="completed"]');
    await page.waitForSelector('[data-testid="timeline-entry"][data-kind="completed"]');
    const counts = await page.evaluate(() => ({
      timeline: document.querySelectorAll('[data-testid="timeline-entry"]').length,
      attempts: document.querySelectorAll('[data-testid="attempt-row"]').length,
      journal: document.querySelectorAll('[data-testid="journal-row"]').length,
      path: [...document.querySelectorAll('[data-testid="path-segment"]')].map((s) => s.dataset.status),
      source: document.querySelector('#wf-timeline').dataset.source,
    }));
    log(`finished workflow: ${counts.timeline} timeline entries (from ${counts.source}), ${counts.attempts} attempts, ${counts.journal} journal rows, path ${counts.path.join(' → ')}`);
    if (counts.attempts < 4 || counts.journal < 6 || counts.timeline < 6) throw new Error(`too little on the page: ${JSON.stringify(counts)}`);
    if (counts.path[counts.path.length - 1] !== 'completed') throw new Error(`the path does not end completed: ${counts.path}`);
    if (timelineEndpoint && counts.source !== 'timeline') throw new Error('the timeline endpoint exists but the page used the history');
    await page.waitForSelector('#toast', { state: 'hidden' });
    await page.screenshot({ path: path.join(SHOTS, '03-workflow-timeline.png'), fullPage: true });
    log('screenshot: finished workflow timeline');

    // 5. Filters: status, then a key search.
    await page.click('#nav-workflows');
    await page.waitForSelector('#filter-status');
    await page.selectOption('#filter-status', 'cancelled');
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('[data-testid="workflow-row"]')];
      return rows.length > 0 && rows.every((r) => r.dataset.status === 'cancelled') && rows.some((r) => r.dataset.id === id);
    }, longId);
    if (!page.url().includes('status=cancelled')) throw new Error(`the filter is not in the URL: ${page.url()}`);
    await page.selectOption('#filter-status', '');
    await page.fill('#filter-search', `browser-done-${stamp}`);
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('[data-testid="workflow-row"]')];
      return rows.length === 1 && rows[0].dataset.id === id;
    }, doneId);
    log('filters work (status, search)');

    // 6. A paid job (simulated Masumi and Kodosumi of `kodomasu dev`): its page shows the payment.
    const flows = await apiCall(base, 'GET', '/flows');
    const flow = (flows.flows || []).find((f) => f.available);
    if (!flow) throw new Error(`no available flow: ${JSON.stringify(flows)}`);
    const purchaser = randomBytes(8).toString('hex');
    const startRes = await fetch(`${base}/${flow.uid}/start_job`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ identifier_from_purchaser: purchaser, input_data: { name: 'Alice' } }),
    });
    const started = await startRes.json();
    if (!startRes.ok) throw new Error(`start_job: ${startRes.status} ${JSON.stringify(started)}`);
    await page.goto(`${base}/dashboard#/workflows/${encodeURIComponent(started.id)}`);
    await page.waitForSelector(`#workflow-view[data-id="${started.id}"]`);
    await page.waitForSelector('#wf-status[data-status="completed"]');
    await page.waitForSelector('#wf-payment:not([hidden]) #payment-fields');
    await page.waitForSelector('#toast', { state: 'hidden' });
    await page.screenshot({ path: path.join(SHOTS, '06-paid-job.png'), fullPage: true });
    log(`paid job ${started.id} on flow "${flow.summary}" completed; its page shows the payment`);

    // 7. Workers and flows.
    await page.click('#nav-workers');
    await page.waitForSelector('[data-testid="worker-row"][data-alive="true"]');
    await page.screenshot({ path: path.join(SHOTS, '04-workers.png'), fullPage: true });
    await page.click('#nav-flows');
    await page.waitForSelector('[data-testid="flow-row"]');
    await page.screenshot({ path: path.join(SHOTS, '05-flows.png'), fullPage: true });
    log('workers and flows pages show their rows');
    // A flow's jobs: the list filtered by that flow shows the paid job.
    await page.click(`[data-testid="flow-row"][data-uid="${flow.uid}"] a.flow-jobs`);
    await page.waitForSelector('#filter-flow');
    await page.waitForFunction((id) => {
      const rows = [...document.querySelectorAll('[data-testid="workflow-row"]')];
      return rows.length > 0 && rows.some((r) => r.dataset.id === id);
    }, started.id);
    const types = await page.$$eval('[data-testid="workflow-row"] td:nth-child(3)', (cells) => cells.map((c) => c.textContent));
    if (types.some((t) => t !== 'paid_job')) throw new Error(`the flow's list shows other types: ${types}`);
    log('the flow\'s jobs link lists its paid job');

    // 8. Live updates: still following the stream.
    const live = await page.getAttribute('#live-status', 'data-state');
    log(`live status: ${live}`);
    if (live !== 'live') throw new Error(`the page is "${live}", not following the live stream`);

    if (pageErrors.length) throw new Error(`JavaScript errors on the page:\n${pageErrors.join('\n')}`);
    if (foreignRequests.length) throw new Error(`requests outside the server:\n${foreignRequests.join('\n')}`);
    log(`passed; screenshots in ${SHOTS}`);
  } catch (e) {
    if (page) {
      await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
      log(`failure screenshot: ${path.join(SHOTS, 'failure.png')}`);
    }
    if (pageErrors.length) log(`page errors:\n${pageErrors.join('\n')}`);
    const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');
    log(`last lines of ${logFile}:\n${tail}`);
    throw e;
  } finally {
    if (browser) await browser.close().catch(() => {});
    child.kill('SIGTERM');
    await new Promise((r) => {
      if (child.exitCode !== null) return r();
      const t = setTimeout(() => { child.kill('SIGKILL'); r(); }, 10_000);
      child.once('exit', () => { clearTimeout(t); r(); });
    });
    if (!process.env.KEEP_DATA) fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(`[browser-test] FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
