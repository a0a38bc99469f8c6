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
