// lowerBackgroundThreads: in a fresh process, every thread but the main one ends at nice 19 (V8's
// workers and libuv's threadpool, which is started for the purpose), and the main thread keeps
// the priority it had.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";

const MODULE = pathToFileURL(join(import.meta.dirname ?? ".", "threads.js")).href;

const PROBE = `
import { readdirSync, readFileSync } from "node:fs";
import { lowerBackgroundThreads } from ${JSON.stringify(MODULE)};
const nice = (tid) => Number(readFileSync("/proc/self/task/" + tid + "/stat", "utf8").split(") ")[1].split(" ")[16]);
const mainBefore = nice(process.pid);
const lowered = await lowerBackgroundThreads();
const threads = readdirSync("/proc/self/task").map((t) => ({ tid: Number(t), nice: nice(t) }));
process.stdout.write(JSON.stringify({ pid: process.pid, mainBefore, lowered, threads }));
`;

describe("lowerBackgroundThreads", {
  skip: process.platform !== "linux" && "per-thread priorities are Linux only",
}, () => {
  it("lowers every thread but the main one to nice 19, the threadpool included", () => {
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", PROBE], {
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      pid: number;
      mainBefore: number;
      lowered: number;
      threads: { tid: number; nice: number }[];
    };
    const main = out.threads.find((t) => t.tid === out.pid)!;
    const others = out.threads.filter((t) => t.tid !== out.pid);
    assert.equal(main.nice, out.mainBefore, "the main thread keeps its priority");
    // V8's platform workers (4 by default) and libuv's threadpool (4 by default), at least.
    assert.ok(others.length >= 8, `expected V8 and libuv threads, saw ${others.length}`);
    assert.deepEqual(
      others.filter((t) => t.nice !== 19),
      [],
      "every background thread is at nice 19",
    );
    assert.equal(out.lowered, others.length);
  });
});
