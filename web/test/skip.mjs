// A check that cannot run in this browser says so: on stderr, and as a line of the file that
// WEDGE_SKIP_LOG names, from which `cargo xtask test` lists every skipped check (the same log
// the Rust tests write through wedge-testkit).
import { appendFileSync } from 'node:fs';

export function skip(check, reason) {
  process.stderr.write(`wedge skip: ${check}: ${reason}\n`);
  const log = process.env.WEDGE_SKIP_LOG;
  const line = (s) => String(s).replace(/[\t\r\n]/g, ' ');
  if (log) appendFileSync(log, `${line(check)}\t${line(reason)}\n`);
}
