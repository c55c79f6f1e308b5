// What `zmesh proxy` loads: only its own command, and none of the libraries the sidecar does not
// use. Each costs every sidecar memory for the life of its workload (bench/README.md, "Round 4:
// memory"): guards against an import that brings them back (every CLI command, @peculiar/x509,
// the .proto loader, yaml). The same probe on `zmesh --help` must see them, or it proves nothing.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";

const BIN = join(import.meta.dirname ?? ".", "..", "..", "bin", "zmesh.js");

/** Prints, at exit, the npm packages in require's cache (CommonJS, as every library here is). */
const PROBE =
  "data:text/javascript," +
  encodeURIComponent(`
import { createRequire } from "node:module";
process.on("exit", () => {
  const names = new Set();
  for (const f of Object.keys(createRequire("/").cache)) {
    const m = /node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(f);
    if (m) names.add(m[1]);
  }
  process.stderr.write("PACKAGES " + JSON.stringify([...names]) + "\\n");
});`);

function packagesOf(...args: string[]): string[] {
  const r = spawnSync(process.execPath, ["--import", PROBE, BIN, ...args], {
    encoding: "utf8",
    timeout: 30_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stderr.split("\n").find((l) => l.startsWith("PACKAGES "));
  assert.ok(line, `no package list in: ${r.stderr}`);
  return JSON.parse(line.slice("PACKAGES ".length)) as string[];
}

const NOT_IN_PROXY = ["yaml", "@peculiar/x509", "reflect-metadata", "@grpc/proto-loader", "protobufjs"];

describe("zmesh proxy's imports", () => {
  it("loads the sidecar's libraries and none of the others", () => {
    const proxy = packagesOf("proxy", "--help");
    for (const p of ["commander", "@grpc/grpc-js", "pino", "prom-client"]) assert.ok(proxy.includes(p), p);
    for (const p of NOT_IN_PROXY) assert.ok(!proxy.includes(p), `zmesh proxy loads ${p}`);
  });

  it("while the whole CLI (help) does load some of them, so the probe sees them", () => {
    const all = packagesOf("--help");
    assert.ok(all.includes("yaml"), `zmesh --help loads ${all.join(", ")}`);
  });
});
