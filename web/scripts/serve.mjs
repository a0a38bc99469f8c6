// Serves the repository's web/, models/ and tests/data/ on 127.0.0.1 for the demo:
//   npm --prefix web run demo     then open http://127.0.0.1:8000/web/demo/
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from '../test/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const port = Number(process.env.PORT ?? 8000);
const server = await startServer(root, port);
console.log(`wedge demo: ${server.origin}/web/demo/  (ctrl-c to stop)`);
