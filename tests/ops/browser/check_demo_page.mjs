// Opens the demo's page in Debian's Chromium (headless, a fresh profile) and uses it as a person
// would: every chart drawn, the trace explorer's traces switchable, a click on a span showing
// its attributes. Prints what it saw as one JSON object on stdout; tests/ops/test_demo_page.py
// judges it. Usage: node check_demo_page.mjs URL SCREENSHOT.png
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node check_demo_page.mjs URL SCREENSHOT.png');
  process.exit(2);
}

const CHARTS = [
  'p1-hit-rate', 'p1-ttft', 'p1-per-pod', 'p1-matched',
  'p2-breakdown', 'p2-overhead', 'p2-nixl-time', 'p2-nixl-size',
];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // As root on a machine with no network but the registries: no sandbox, nothing in the
  // background (each would be a refused connection).
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = { url, consoleErrors: [], pageErrors: [], requests: [], charts: {}, traces: [], clicked: {} };
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  page.on('request', (r) => result.requests.push(r.url()));
  await page.goto(url, { waitUntil: 'load' });

  for (const id of CHARTS) {
    const chart = page.locator(`svg#${id}`);
    if ((await chart.count()) === 0) { result.charts[id] = null; continue; }
    const box = await chart.boundingBox();
    result.charts[id] = {
      width: box ? box.width : 0,
      height: box ? box.height : 0,
      visible: await chart.isVisible(),
      // Marks drawn from data (bars, lines, points), not the frame's.
      marks: await chart.locator('rect[fill]:not([fill="transparent"]), polyline, circle').count(),
      title: await chart.locator('text.title').textContent(),
    };
  }

  const buttons = page.locator('#trace-picker button');
  for (let i = 0; i < (await buttons.count()); i++) {
    const b = buttons.nth(i);
    await b.click();
    const shown = page.locator('div.trace:not([hidden])');
    const spans = shown.locator('g.span');
    const names = [];
    for (let j = 0; j < (await spans.count()); j++) names.push(await spans.nth(j).getAttribute('aria-label'));
    result.traces.push({
      label: (await b.textContent()).trim(),
      visibleTraces: await shown.count(),
      spans: names,
    });
  }

  // Click a span and read the attribute panel as a person reads it: a table of name → value.
  async function click(traceLabel, spanName, nth = 0) {
    await page.locator('#trace-picker button', { hasText: traceLabel }).first().click();
    const span = page.locator('div.trace:not([hidden]) g.span', { has: page.locator(`text.name:text-is("${spanName}")`) }).nth(nth);
    await span.click();
    const rows = page.locator('aside#attrs table.attrs tr');
    await rows.first().waitFor({ timeout: 5000 });
    const attrs = {};
    for (let i = 0; i < (await rows.count()); i++) {
      const k = (await rows.nth(i).locator('th').textContent()).trim();
      attrs[k] = (await rows.nth(i).locator('td').first().textContent()).trim();
    }
    return {
      heading: (await page.locator('aside#attrs h3').textContent()).trim(),
      selected: await span.evaluate((el) => el.classList.contains('sel')),
      attrs,
    };
  }
  const labels = result.traces.map((t) => t.label);
  const slowest = labels.find((l) => l.startsWith('slowest P/D'));
  const decodeOnly = labels.find((l) => l.includes('decode-only'));
  if (decodeOnly) result.clicked.decodeOnlyPick = await click(decodeOnly, 'llm_d.epp.profile_handler.pick');
  if (slowest) {
    result.clicked.proxy = await click(slowest, 'llm_d.pd_proxy.request');
    // The second llm_request of a P/D trace is the decode engine's (the prefill leg comes first).
    result.clicked.decodeEngine = await click(slowest, 'llm_request', 1);
    result.clicked.pick = await click(slowest, 'llm_d.epp.profile_handler.pick');
  }
  await page.screenshot({ path: screenshot, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
