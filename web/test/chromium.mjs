// Launches Debian's headless Chromium through playwright-core with the flags of the shared
// BROWSER.md: `webgpu` adds --enable-unsafe-webgpu (SwiftShader where there is no GPU); without
// it the page has no WebGPU adapter. CHROMIUM=/path picks another binary.
import { chromium } from 'playwright-core';

const BASE_ARGS = ['--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic'];

export function launchChromium({ webgpu }) {
  const args = webgpu ? ['--enable-unsafe-webgpu', ...BASE_ARGS] : BASE_ARGS;
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', headless: true, args });
}

/** A new browser (kept in `browsers` for the caller to close) on the test page that exposes
 *  the package as `window.wedge`. */
export async function openTestPage(browsers, origin, webgpu) {
  const browser = await launchChromium({ webgpu });
  browsers.push(browser);
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${origin}/web/test/pages/embed.html`);
  await page.waitForFunction(() => window.wedgeReady === true);
  return page;
}

/** Opens `url` in a fresh browser, waits (without limit) for the page to set `window[name]`,
 *  and returns it: how the benchmark scripts read their pages. With `profile`, V8's sampling
 *  profiler runs through the page's life and its self time per function is printed (the top
 *  `profile` functions; names need a package built with `--names`). */
export async function pageResult(url, name, { webgpu = false, profile = 0 } = {}) {
  const browser = await launchChromium({ webgpu });
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => console.error('page error:', e.message));
    const cdp = profile ? await page.context().newCDPSession(page) : null;
    if (cdp) {
      await cdp.send('Profiler.enable');
      await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
      await cdp.send('Profiler.start');
    }
    await page.goto(url);
    await page.waitForFunction((n) => window[n] !== undefined, name, { timeout: 0, polling: 500 });
    if (cdp) printProfile((await cdp.send('Profiler.stop')).profile, profile);
    return await page.evaluate((n) => window[n], name);
  } finally {
    await browser.close();
  }
}

/** The `top` functions of a CDP CPU profile by self time, with their share of the samples. */
function printProfile(profile, top) {
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const frame = nodes.get(id).callFrame;
    const fn = frame.functionName || `(${frame.url.split('/').pop() || 'anonymous'})`;
    const dt = profile.timeDeltas[i] ?? 0;
    self.set(fn, (self.get(fn) ?? 0) + dt);
    total += dt;
  });
  console.log('| self % | self ms | function |');
  console.log('|---|---|---|');
  for (const [fn, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    // (Rust's symbol hash is noise here)
    console.log(`| ${(100 * us / total).toFixed(1)} | ${(us / 1000).toFixed(0)} | ${fn.replace(/::h[0-9a-f]{16}$/, '')} |`);
  }
}
