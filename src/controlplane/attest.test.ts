// The token-file attestor: a token proves the instance its digest is bound to, nothing else
// does, and a change to the file (rewritten in place or replaced by rename) is seen at once.

import assert from "node:assert/strict";
import { mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { TokenFileAttestor, tokenDigest } from "./attest.js";

const A = "a-token-of-enough-length-0001";
const B = "b-token-of-enough-length-0002";

describe("TokenFileAttestor", () => {
  let dir: string;
  let file: string;
  const write = (t: Record<string, { namespace: string; entry: string }>) =>
    writeFile(
      file,
      JSON.stringify(Object.fromEntries(Object.entries(t).map(([k, v]) => [tokenDigest(k), v]))),
    );

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmesh-attest-"));
    file = join(dir, "tokens.json");
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("maps a token (bare or Bearer) to its instance and refuses others", async () => {
    await write({ [A]: { namespace: "team", entry: "a" } });
    const at = new TokenFileAttestor(file);
    assert.deepEqual(await at.attest(`Bearer ${A}`), { namespace: "team", entry: "a" });
    assert.deepEqual(await at.attest(A), { namespace: "team", entry: "a" });
    assert.equal(await at.attest(`Bearer ${B}`), undefined);
    assert.equal(await at.attest("short"), undefined);
    assert.equal(await at.attest(tokenDigest(A)), undefined, "the digest itself is no credential");
  });

  it("sees a token added in place and one removed by a rename-replace", async () => {
    await write({ [A]: { namespace: "team", entry: "a" } });
    const at = new TokenFileAttestor(file);
    assert.equal(await at.attest(B), undefined);
    await write({ [A]: { namespace: "team", entry: "a" }, [B]: { namespace: "team", entry: "b" } });
    assert.deepEqual(await at.attest(B), { namespace: "team", entry: "b" });
    await writeFile(`${file}.tmp`, JSON.stringify({ [tokenDigest(B)]: { namespace: "team", entry: "b" } }));
    await rename(`${file}.tmp`, file);
    assert.equal(await at.attest(A), undefined, "a revoked token stops working");
    assert.deepEqual(await at.attest(B), { namespace: "team", entry: "b" });
  });

  it("fails closed when the file is missing or not JSON", async () => {
    await write({ [A]: { namespace: "team", entry: "a" } });
    const at = new TokenFileAttestor(file);
    assert.ok(await at.attest(A));
    await writeFile(file, "{not json");
    assert.equal(await at.attest(A), undefined);
    await rm(file);
    assert.equal(await at.attest(A), undefined);
  });

  it("answers a storm of 2,000 concurrent calls, each with its own instance", async () => {
    const table: Record<string, { namespace: string; entry: string }> = {};
    const tokens: string[] = [];
    for (let i = 0; i < 2000; i++) {
      const t = `storm-token-${String(i).padStart(8, "0")}`;
      tokens.push(t);
      table[t] = { namespace: "ns", entry: `e${i}` };
    }
    await write(table);
    const at = new TokenFileAttestor(file);
    const got = await Promise.all(tokens.map((t) => at.attest(t)));
    assert.deepEqual(
      got.map((g) => g?.entry),
      tokens.map((_t, i) => `e${i}`),
    );
  });
});
