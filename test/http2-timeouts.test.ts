// The HTTP/2 stream idle bound (Envoy's stream_idle_timeout, as HTTP/1.1 has it): a stream with no
// byte either way for `streamIdleMs` ends, with 504 (gRPC: DEADLINE_EXCEEDED) if the app never
// answered, 408 if the client stopped sending its body, a reset if the response had begun; the
// app's stream is cancelled too. A stream that is slow but never silent that long is not cut.
import assert from "node:assert/strict";
import { type ClientHttp2Session, createServer, type Http2Server, type ServerHttp2Stream } from "node:http2";
import { after, before, describe, it } from "node:test";
import { clientApiMesh, h2Request, h2Session } from "./harness/h2.js";
import type { MeshFixture } from "./harness/index.js";

const vip = { address: "198.19.0.93", port: 8080 };
const IDLE_MS = 600;

describe("HTTP/2 stream idle bound", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let app: Http2Server;
  let client: import("../src/proxy/index.js").Sidecar;
  let s: ClientHttp2Session;
  /** The app's streams left hanging, by path, and whether each was closed since. */
  const held: { path: string; stream: ServerHttp2Stream; closed: boolean }[] = [];

  before(async () => {
    app = createServer();
    app.on("stream", (stream, h) => {
      stream.on("error", () => {});
      const path = String(h[":path"]);
      const hold = () => {
        const entry = { path, stream, closed: false };
        held.push(entry);
        stream.once("close", () => {
          entry.closed = true;
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
          stream.respond({ ":status": 200 });
          stream.end("got it");
        });
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
      streamIdleMs: IDLE_MS,
    }));
    s = await h2Session(mesh, client, vip);
  });
  after(async () => {
    s.close();
    await mesh.close();
    for (const h of held) h.stream.destroy();
    app.close();
  });

  /** Waits until the app's held stream for `path` was closed (the proxies cancelled it), up to 3 s. */
  async function appStreamCancelled(path: string): Promise<boolean> {
    for (let i = 0; i < 30; i++) {
      const h = held.find((x) => x.path === path);
      if (h?.closed) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  it("an app that never answers: 504 UPSTREAM_TIMEOUT after the bound, and the app's stream is cancelled", async () => {
    const t0 = Date.now();
    const r = await h2Request(s, { ":method": "GET", ":path": "/stall-head" });
    const took = Date.now() - t0;
    assert.equal(r.headers[":status"], 504);
    assert.equal(r.headers["x-zmesh-flag"], "UPSTREAM_TIMEOUT");
    assert.ok(took >= IDLE_MS - 50 && took < IDLE_MS + 2_000, `answered after ${took} ms`);
    assert.ok(await appStreamCancelled("/stall-head"), "the app's stream was closed");
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

  it("a client that stops sending its body: 408 REQUEST_TIMEOUT", async () => {
    const r = await new Promise<{ status: unknown; flag: unknown }>((resolve, reject) => {
      const req = s.request({ ":method": "POST", ":path": "/upload" }, { endStream: false });
      req.write("part of a body"); // and nothing more
      req.on("response", (h) => resolve({ status: h[":status"], flag: h["x-zmesh-flag"] }));
      req.on("error", reject);
      setTimeout(() => reject(new Error("no answer in 5 s")), 5_000).unref();
    });
    assert.deepEqual(r, { status: 408, flag: "REQUEST_TIMEOUT" });
    assert.ok(await appStreamCancelled("/upload"), "the app's stream was closed");
  });

  it("a response that stops half-way: the client's stream is reset", async () => {
    const t0 = Date.now();
    const r = await new Promise<{ status: unknown; body: string; rst: number | undefined }>((resolve) => {
      const req = s.request({ ":method": "GET", ":path": "/stall-mid" });
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
    assert.equal(r.status, 200);
    assert.equal(r.body, "first part");
    assert.notEqual(r.rst, 0, "reset, not ended as if complete");
    const took = Date.now() - t0;
    assert.ok(took >= IDLE_MS - 50 && took < IDLE_MS + 2_000, `reset after ${took} ms`);
    assert.ok(await appStreamCancelled("/stall-mid"), "the app's stream was closed");
  });

  it("a slow stream that is never silent for the bound is not cut", async () => {
    const r = await h2Request(s, { ":method": "GET", ":path": "/slow" });
    assert.equal(r.headers[":status"], 200);
    assert.equal(r.body.toString(), ".....done");
  });
});
