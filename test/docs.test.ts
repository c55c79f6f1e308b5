// The documentation tables and the code they describe must agree: error codes
// (docs/errors.md vs src/errors) and environment variables (docs/configuration.md vs settings).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { ENV, PROXY_TIMEOUTS } from "../src/config/index.js";
import { ErrorCodes } from "../src/errors/index.js";
import { FLAGS } from "../src/proxy/index.js";

const root = join(import.meta.dirname ?? ".", "..", "..");
const doc = (f: string) => readFileSync(join(root, "docs", f), "utf8");
const firstCells = (text: string, re: RegExp) => [...text.matchAll(re)].map((m) => m[1]!);

it("docs/errors.md lists exactly the error codes in src/errors, with the same causes", () => {
  const text = doc("errors.md");
  const rows = [...text.matchAll(/^\| (ZMESH_[A-Z_]+)\s*\| ([^|]+?)\s*\|/gm)];
  assert.deepEqual(rows.map((r) => r[1]).sort(), Object.keys(ErrorCodes).sort());
  for (const r of rows) assert.equal(r[2]!, ErrorCodes[r[1] as keyof typeof ErrorCodes], r[1]);
});

it("docs/errors.md lists exactly the proxy response flags, with their statuses", () => {
  const rows = [...doc("errors.md").matchAll(/^\| ([A-Z_]+)\s*\| (\d{3})\s*\|/gm)];
  assert.deepEqual(rows.map((r) => r[1]).sort(), Object.keys(FLAGS).sort());
  for (const r of rows) assert.equal(Number(r[2]), FLAGS[r[1] as keyof typeof FLAGS].status, r[1]);
});

it("docs/errors.md gives each proxy response flag the gRPC status it answers with", () => {
  const rows = [...doc("errors.md").matchAll(/^\| ([A-Z_]+)\s*\| \d{3}\s*\| (\d+) [A-Z_]+\s*\|/gm)];
  assert.deepEqual(rows.map((r) => r[1]).sort(), Object.keys(FLAGS).sort());
  for (const r of rows) assert.equal(Number(r[2]), FLAGS[r[1] as keyof typeof FLAGS].grpc, r[1]);
});

it("docs/configuration.md lists exactly the environment variables zmesh reads", () => {
  const documented = firstCells(doc("configuration.md"), /^\| (ZMESH_[A-Z_]+)\s*\|/gm);
  assert.deepEqual(documented.sort(), Object.values(ENV).sort());
});

it("docs/configuration.md lists exactly the proxy timeouts, with their defaults", () => {
  const rows = [...doc("configuration.md").matchAll(/^\| ([a-z][A-Za-z]+Ms)\s*\| (\d+)\s*\|/gm)];
  assert.deepEqual(Object.fromEntries(rows.map((r) => [r[1], Number(r[2])])), { ...PROXY_TIMEOUTS });
});
