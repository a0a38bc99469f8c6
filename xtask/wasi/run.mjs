// cargo's runner for wasm32-wasip1 binaries (`cargo xtask test` sets it): runs a test binary
// under Node's WASI, with the file system's root preopened and the environment passed on, so the
// wasm builds of the CPU kernels (the browser's wasm simd128 code) are tested as native ones are.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv, env, exit } from 'node:process';

const [file, ...args] = argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env, preopens: { '/': '/' }, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
