// LineSink: lines reach the descriptor whole, in order and byte for byte (UTF-8 included), in
// blocks once 4 KiB are pending or at a flush; a line larger than the buffer goes out at once; a
// descriptor that cannot be written loses its block and counts it, and never throws at the caller;
// a full pipe is waited on once (1 s), then blocks are dropped at once until a write succeeds.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { LineSink } from "./linesink.js";

describe("LineSink", () => {
  const dir = mkdtempSync(join(tmpdir(), "zmesh-linesink-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const open = () => {
    const file = join(dir, `out-${n++}`);
    return { file, fd: openSync(file, "w") };
  };

  it("holds lines until a block is full or a flush, then writes them whole and in order", () => {
    const { file, fd } = open();
    const sink = new LineSink(fd, 4_096, 60_000, 16 * 1024);
    sink.write('{"a":1}\n');
    sink.write('{"b":"é 漢 😀"}\n');
    assert.equal(readFileSync(file, "utf8"), "", "nothing written below a block");
    sink.flushSync();
    assert.equal(readFileSync(file, "utf8"), '{"a":1}\n{"b":"é 漢 😀"}\n');
    const line = `${"x".repeat(99)}\n`;
    for (let i = 0; i < 40; i++) sink.write(line); // 4,000 bytes: under a block
    assert.equal(readFileSync(file, "utf8"), '{"a":1}\n{"b":"é 漢 😀"}\n');
    sink.write(line); // 4,100 bytes: a block, written
    assert.equal(readFileSync(file, "utf8"), `{"a":1}\n{"b":"é 漢 😀"}\n${line.repeat(41)}`);
    closeSync(fd);
  });

  it("writes a line larger than its buffer at once, after what was pending", () => {
    const { file, fd } = open();
    const sink = new LineSink(fd, 4_096, 60_000, 1_024);
    sink.write("first\n");
    const big = `${"y".repeat(5_000)}\n`;
    sink.write(big);
    assert.equal(readFileSync(file, "utf8"), `first\n${big}`);
    closeSync(fd);
  });

  it("counts what it could not write to a closed descriptor instead of throwing", () => {
    const { fd } = open();
    closeSync(fd);
    const sink = new LineSink(fd, 4_096, 60_000, 1_024);
    sink.write("lost\n");
    assert.doesNotThrow(() => sink.flushSync());
    assert.equal(sink.dropped, 5);
  });

  it("waits on a full pipe once, then drops without waiting until the pipe drains", () => {
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
    const fill = Buffer.alloc(65_536, 120);
    try {
      for (;;) writeSync(fd, fill); // until EAGAIN: nobody reads
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, "EAGAIN");
    }
    const sink = new LineSink(fd, 4_096, 60_000, 16 * 1024);
    sink.write("one\n");
    let t = Date.now();
    sink.flushSync();
    assert.ok(Date.now() - t >= 900, "the first full pipe is waited on");
    assert.equal(sink.dropped, 4);
    sink.write("two\n");
    t = Date.now();
    sink.flushSync();
    assert.ok(Date.now() - t < 200, "then no more waiting");
    assert.equal(sink.dropped, 8);
    closeSync(fd);
    closeSync(reader);
  });
});
