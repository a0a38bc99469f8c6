// The peer engines of the browser benchmarks (wllama, onnxruntime-web), pinned by
// web/bench/peers/package-lock.json and installed there on first use: the package and its tests
// do not need them.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function ensurePeers() {
  const dir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'bench', 'peers');
  if (!existsSync(join(dir, 'node_modules', 'onnxruntime-web')) || !existsSync(join(dir, 'node_modules', '@wllama', 'wllama'))) {
    console.error('installing the peer engines (npm ci in web/bench/peers)');
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
  }
}
