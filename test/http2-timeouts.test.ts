// The HTTP/2 stream idle bound (Envoy's stream_idle_timeout, as HTTP/1.1 has it), held by one
// sidecar at a time (the other's bound is the default 300 s), so each direction is shown on its
// own: a stream with no byte either way for `streamIdleMs` ends with 504 (gRPC: DEADLINE_EXCEEDED)
// if the app never answered, 408 if the client stopped sending its body (and the client is then
// told to stop), a reset if the response had begun (recorded with its status, bytes and the flag);
// the app's stream is cancelled each time. A stream that is slow but never silent that long is
// not cut.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import {
  type ClientHttp2Session,
  constants,
  createServer,
  type Http2Server,
  type ServerHttp2Stream,
} from "node:http2";
import { after, before, describe, it } from "node:test";
import { clientApiMesh, h2Request, h2Session } from "./harness/h2.js";
import { logLines, type MeshFixture } from "./harness/index.js";
import { eventually } from "./harness/wait.js";

const IDLE_MS = 600;

for (const [side, direction, vip] of [
  ["client", "outbound", { address: "198.19.0.93", port: 8080 }],
  ["server", "inbound", { address: "198.19.0.94", port: 8080 }],
] as const) {
  describe(`HTTP/2 stream idle bound, held by the ${direction} sidecar`, { timeout: 60_000 }, () => {
    let mesh: MeshFixture;
    let app: Http2Server;
    let client: import("../src/proxy/index.js").Sidecar;
    let s: ClientHttp2Session;
    /** The app's streams left hanging, by path, and whether each was closed since. */
    const held: {
      path: string;
      stream: ServerHttp2Stream;
      closed: boolean;
      cleanEnd: boolean;
      /** The RST_STREAM code the app's stream closed with (0: it ended normally). */
      rstCode?: number;
    }[] = [];

    before(async () => {
      app = createServer();
      app.on("stream", (stream, h) => {
        stream.on("error", () => {});
        const path = String(h[":path"]);
        const hold = () => {
          const entry: (typeof held)[number] = { path, stream, closed: false, cleanEnd: false };
          held.push(entry);
          stream.once("close", () => {
            entry.closed = true;
            entry.rstCode = stream.rstCode;
          });
        };
        if (path === "/stall-head") return hold();
        if (path === "/stall-mid") {
          stream.respond({ ":status": 200 });
          stream.write("first part");
          return hold();
        }
        if (path === "/upload") {
          hold();
          stream.resume();
          stream.on("end", () => {
            // Node ends a reset stream's readable side too; an open stream here means END_STREAM.
            if (stream.closed || stream.destroyed) return;
            held.find((h) => h.stream === stream)!.cleanEnd = true;
            stream.respond({ ":status": 200 });
            stream.end("got it");
          });
          return;
        }
        if (path === "/sink") return hold(); // never reads: flow control stops the client
        if (path === "/early") {
          // A complete answer, trailers included, before the request ends; then RST_STREAM NO_ERROR.
          stream.respond({ ":status": 200 }, { waitForTrailers: true });
          stream.once("wantTrailers", () => {
            stream.sendTrailers({ "x-done": "yes" });
            setTimeout(() => stream.close(), 50); // once Node has sent the trailers (an immediate)
          });
          stream.end("early");
          return;
        }
        if (path === "/slow") {
          // A byte every 250 ms for 1.5 s: never silent for IDLE_MS, longer than it in total.
          stream.respond({ ":status": 200 });
          let n = 0;
          const t = setInterval(() => {
            if (++n === 6) {
              clearInterval(t);
              stream.end("done");
            } else stream.write(".");
          }, 250);
          stream.once("close", () => clearInterval(t));
          return;
        }
        stream.respond({ ":status": 404 });
        stream.end();
      });
      await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
      ({ mesh, client } = await clientApiMesh(vip.address, (app.address() as { port: number }).port, {
        [side]: { streamIdleMs: IDLE_MS },
      }));
      s = await h2Session(mesh, client, vip);
    });
    after(async () => {
      s.close();
      await mesh.close();
      for (const h of held) h.stream.destroy();
      app.close();
    });

    /** True once the app's held stream for `path` was closed (cancelled by the proxies); throws after 3 s. */
    const appStreamCancelled = (path: string) =>
      eventually(
        `the app's stream for ${path} is closed`,
        async () => held.find((x) => x.path === path)?.closed === true,
        (closed) => closed,
        3_000,
      );

    /** The access record the bounding sidecar wrote for request `id` (waits up to 3 s for it). */
    const record = (id: string) =>
      eventually(
        `the ${direction} access line of ${id}`,
        async () =>
          logLines.find(
            (l) => l["msg"] === "access" && l["requestId"] === id && l["direction"] === direction,
          ),
        () => true,
        3_000,
      ) as Promise<Record<string, unknown>>;

    it("an app that never answers: 504 UPSTREAM_TIMEOUT after the bound, and the app's stream is cancelled", async () => {
      const id = randomUUID();
      const t0 = Date.now();
      const r = await h2Request(s, { ":method": "GET", ":path": "/stall-head", "x-request-id": id });
      const took = Date.now() - t0;
      assert.equal(r.headers[":status"], 504);
      assert.equal(r.headers["x-zmesh-flag"], "UPSTREAM_TIMEOUT");
      assert.ok(took >= IDLE_MS - 50 && took < IDLE_MS + 2_000, `answered after ${took} ms`);
      assert.ok(await appStreamCancelled("/stall-head"), "the app's stream was closed");
      const rec = await record(id);
      assert.equal(rec["status"], 504);
      assert.equal(rec["flag"], "UPSTREAM_TIMEOUT");
    });

    it("gRPC: the same stall ends in DEADLINE_EXCEEDED", async () => {
      const r = await h2Request(
        s,
        { ":method": "POST", ":path": "/stall-head", "content-type": "application/grpc", te: "trailers" },
        Buffer.from([0, 0, 0, 0, 0]),
      );
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.headers["grpc-status"] ?? r.trailers?.["grpc-status"], "4");
    });

    it("a client that stops sending its body: 408 REQUEST_TIMEOUT, its stream is closed, the app's cancelled", async () => {
      const r = await new Promise<{ status: unknown; flag: unknown; closedAfterMs: number }>(
        (resolve, reject) => {
          const req = s.request({ ":method": "POST", ":path": "/upload" }, { endStream: false });
          req.write("part of a body"); // and nothing more, ever
          let status: unknown;
          let flag: unknown;
          const t0 = Date.now();
          req.on("response", (h) => {
            status = h[":status"];
            flag = h["x-zmesh-flag"];
          });
          req.on("error", () => {});
          req.resume();
          // Closed by the proxy (the client itself never ends its side).
          req.on("close", () => resolve({ status, flag, closedAfterMs: Date.now() - t0 }));
          setTimeout(() => reject(new Error("the client's stream was still open after 5 s")), 5_000).unref();
        },
      );
      assert.equal(r.status, 408);
      assert.equal(r.flag, "REQUEST_TIMEOUT");
      assert.ok(r.closedAfterMs < IDLE_MS + 2_000, `closed after ${r.closedAfterMs} ms`);
      assert.ok(await appStreamCancelled("/upload"), "the app's stream was closed");
      const upload = held.find((h) => h.path === "/upload");
      assert.equal(upload?.cleanEnd, false, "the cut body never ended cleanly at the app");
      // Ended instead of reset, the app would have seen a complete (truncated) body and answered.
      assert.equal(upload?.rstCode, constants.NGHTTP2_CANCEL, "the app's stream was reset with CANCEL");
    });

    it("an app that stops reading an upload: 504 UPSTREAM_TIMEOUT (not 408), its stream cancelled, the stream recorded", async () => {
      const id = randomUUID();
      const r = await new Promise<{ status: unknown; flag: unknown }>((resolve, reject) => {
        const req = s.request(
          { ":method": "POST", ":path": "/sink", "x-request-id": id },
          { endStream: false },
        );
        req.write(Buffer.alloc(3 << 20, "u")); // more than the windows of all three hops
        req.on("response", (h) => resolve({ status: h[":status"], flag: h["x-zmesh-flag"] }));
        req.on("error", () => {});
        setTimeout(() => reject(new Error("no answer in 5 s")), 5_000).unref();
      });
      assert.deepEqual(r, { status: 504, flag: "UPSTREAM_TIMEOUT" });
      assert.ok(await appStreamCancelled("/sink"), "the app's stream was closed");
      assert.equal((await record(id))["flag"], "UPSTREAM_TIMEOUT");
    });

    it("an answer complete before the request ends: the client gets all of it, trailers too, then is told to stop", async () => {
      const r = await new Promise<{
        status: unknown;
        body: string;
        trailers: unknown;
        rst: number | undefined;
      }>((resolve, reject) => {
        const req = s.request({ ":method": "POST", ":path": "/early" }, { endStream: false });
        req.write("a body that never ends");
        let status: unknown;
        let body = "";
        let trailers: unknown;
        req.on("response", (h) => {
          status = h[":status"];
        });
        req.on("data", (c: Buffer) => {
          body += c.toString();
        });
        req.on("trailers", (t) => {
          trailers = t["x-done"];
        });
        req.on("error", () => {});
        req.on("close", () => resolve({ status, body, trailers, rst: req.rstCode }));
        setTimeout(() => reject(new Error("the client's stream was still open after 5 s")), 5_000).unref();
      });
      assert.deepEqual(r, { status: 200, body: "early", trailers: "yes", rst: 0 });
    });

    it("a response that stops half-way: the client's stream is reset; the record keeps status, bytes and the flag", async () => {
      const id = randomUUID();
      const t0 = Date.now();
      const r = await new Promise<{ status: unknown; body: string; rst: number | undefined }>((resolve) => {
        const req = s.request({ ":method": "GET", ":path": "/stall-mid", "x-request-id": id });
        let status: unknown;
        let body = "";
        req.on("response", (h) => {
          status = h[":status"];
        });
        req.on("data", (c: Buffer) => {
          body += c.toString();
        });
        req.on("error", () => {});
        req.on("close", () => resolve({ status, body, rst: req.rstCode }));
      });
      const took = Date.now() - t0;
      assert.equal(r.status, 200);
      assert.equal(r.body, "first part");
      assert.notEqual(r.rst, 0, "reset, not ended as if complete");
      assert.ok(took >= IDLE_MS - 50 && took < IDLE_MS + 2_000, `reset after ${took} ms`);
      assert.ok(await appStreamCancelled("/stall-mid"), "the app's stream was closed");
      const rec = await record(id);
      assert.equal(rec["status"], 200);
      assert.equal(rec["flag"], "UPSTREAM_TIMEOUT");
      assert.equal(rec["responseBytes"], "first part".length);
    });

    it("a slow stream that is never silent for the bound is not cut", async () => {
      const r = await h2Request(s, { ":method": "GET", ":path": "/slow" });
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body.toString(), ".....done");
    });
  });
}
