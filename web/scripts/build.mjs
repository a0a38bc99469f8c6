// Builds the browser package into web/dist/:
//   1. cargo builds crates/wedge-web for wasm32-unknown-unknown (release, no debug info);
//   2. wasm-bindgen (the CLI at exactly the wasm-bindgen crate's version in Cargo.lock) writes
//      the JS glue for `--target web`;
//   3. wasm-opt -Oz from the npm `binaryen` package shrinks the module (Debian's is broken here);
//   4. src/ (the loader and its TypeScript declarations) is copied next to it.
// Prints the wasm size, raw and gzipped. `--names` keeps the functions' names in the module (a
// larger download) so that a CPU profile names them: the bench scripts' `--profile`.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const root = resolve(web, '..');
const dist = join(web, 'dist');
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });

function lockedVersion(name) {
  const lock = readFileSync(join(root, 'Cargo.lock'), 'utf8');
  const m = lock.match(new RegExp(`name = "${name}"\\nversion = "([^"]+)"`));
  if (!m) throw new Error(`${name} is not in Cargo.lock`);
  return m[1];
}

const want = lockedVersion('wasm-bindgen');
let have = '';
try {
  have = execFileSync('wasm-bindgen', ['--version'], { encoding: 'utf8' }).trim().split(' ')[1];
} catch {
  have = '';
}
if (have !== want) {
  console.error(`wasm-bindgen-cli ${want} is needed (found ${have || 'none'}):\n` +
    `  cargo install wasm-bindgen-cli --version ${want}`);
  process.exit(1);
}

const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(root, 'target');
// Size over speed for everything but the kernels: the CPU backend (and pulp, which it runs on)
// stays at opt-level 3, the rest (tokenizers, the chat template, wgpu's glue) is built for size.
const sizeFlags = ['--config', 'profile.release.opt-level="z"', '--config', 'profile.release.package.wedge-cpu.opt-level=3',
  '--config', 'profile.release.package.pulp.opt-level=3', '--config', 'profile.release.package.wedge-core.opt-level=3'];
run('cargo', ['build', '--release', '--target', 'wasm32-unknown-unknown', '-p', 'wedge-web', ...sizeFlags], {
  env: { ...process.env, CARGO_PROFILE_RELEASE_DEBUG: 'false' },
});
const wasm = join(targetDir, 'wasm32-unknown-unknown', 'release', 'wedge_web.wasm');

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, 'pkg'), { recursive: true });
run('wasm-bindgen', ['--target', 'web', '--no-typescript', '--out-dir', join(dist, 'pkg'), wasm]);
const out = join(dist, 'pkg', 'wedge_web_bg.wasm');
const before = statSync(out).size;
const wasmOpt = join(web, 'node_modules', '.bin', 'wasm-opt');
if (!existsSync(wasmOpt)) {
  console.error('wasm-opt is missing: run `npm --prefix web install` first');
  process.exit(1);
}
const names = process.argv.includes('--names') ? ['--debuginfo'] : [];
run(wasmOpt, ['-Oz', ...names, '--enable-bulk-memory', '--enable-nontrapping-float-to-int', '--enable-sign-ext',
  '--enable-mutable-globals', '--enable-simd', out, '-o', out]);
cpSync(join(web, 'src'), dist, { recursive: true });

const bytes = readFileSync(out);
const gz = gzipSync(bytes, { level: 9 }).length;
const mb = (n) => (n / 1048576).toFixed(2);
const sizes = { wasm_bytes: bytes.length, wasm_gzip_bytes: gz, before_wasm_opt_bytes: before };
writeFileSync(join(dist, 'sizes.json'), JSON.stringify(sizes, null, 2) + '\n');
console.log(`wedge_web_bg.wasm: ${mb(bytes.length)} MB raw, ${mb(gz)} MB gzipped ` +
  `(${mb(before)} MB before wasm-opt)`);
