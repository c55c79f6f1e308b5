// Runs every compiled test file (unit tests beside the code, harness and namespace tests
// under test/) with Node's built-in runner. Tests are compiled by tsc into dist/ first.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith(".test.js")) out.push(p);
  }
  return out;
}
const filter = process.argv[2];
const files = [...find("dist/src"), ...find("dist/test")].filter((f) => !filter || f.includes(filter)).sort();
// With no file, `node --test` would look for tests itself (namespaced ones included): refuse instead.
if (files.length === 0) {
  console.error(`no compiled test file matches "${filter}": build first (npx tsc), or check the filter`);
  process.exit(2);
}
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=1", "--enable-source-maps", ...files], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
