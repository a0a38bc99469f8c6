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
 *  and returns it: how the benchmark scripts read their pages. */
export async function pageResult(url, name, { webgpu = false } = {}) {
  const browser = await launchChromium({ webgpu });
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => console.error('page error:', e.message));
    await page.goto(url);
    await page.waitForFunction((n) => window[n] !== undefined, name, { timeout: 0, polling: 500 });
    return await page.evaluate((n) => window[n], name);
  } finally {
    await browser.close();
  }
}
