// HTTP/2 facts the proxy decides on untrusted input: the connection preface that routes a
// connection to HTTP/2, the h2c upgrade the inbound refuses, and the headers passed on (what is
// dropped, what identity headers can never come from a caller).
import assert from "node:assert/strict";
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  constants,
  createServer,
  type Http2Session,
  connect as h2connect,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import { createServer as createNetServer } from "node:net";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  h2RequestHeaders,
  h2ResponseHeaders,
  isGrpc,
  isH2cUpgrade,
  relayStream,
  SessionPool,
  type StreamResult,
  whenConnected,
} from "./h2.js";
import { looksLikeH2, looksLikeHttp } from "./sniff.js";

const PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

describe("looksLikeH2", () => {
  it("takes the preface, whole or cut after at least 4 bytes, with frames after it", () => {
    assert.ok(looksLikeH2(Buffer.from(PREFACE)));
    assert.ok(looksLikeH2(Buffer.from(`${PREFACE}\x00\x00\x12\x04\x00`, "latin1")));
    assert.ok(looksLikeH2(Buffer.from("PRI ")));
    assert.ok(!looksLikeH2(Buffer.from("PRI")), "3 bytes say too little");
    assert.ok(!looksLikeH2(Buffer.from("PRI * HTTP/1.1\r\n")));
    assert.ok(!looksLikeH2(Buffer.from("GET / HTTP/1.1\r\n")));
  });

  it("property: true exactly for prefixes of the preface of length >= 4 (and anything after a whole one)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const b = Buffer.from(bytes);
        const n = Math.min(b.length, PREFACE.length);
        const expected = n >= 4 && b.subarray(0, n).toString("latin1") === PREFACE.slice(0, n);
        assert.equal(looksLikeH2(b), expected);
      }),
    );
  });

  it("property: HTTP/1.1 request heads are never HTTP/2 and the preface is never HTTP/1.1", () => {
    const method = fc.constantFrom(
      "GET",
      "HEAD",
      "POST",
      "PUT",
      "DELETE",
      "OPTIONS",
      "PATCH",
      "TRACE",
      "CONNECT",
    );
    fc.assert(
      fc.property(method, fc.string({ maxLength: 40 }), (m, rest) => {
        const head = Buffer.from(`${m} /${rest} HTTP/1.1\r\n`, "latin1");
        assert.ok(looksLikeHttp(head));
        assert.ok(!looksLikeH2(head));
      }),
    );
    assert.ok(!looksLikeHttp(Buffer.from(PREFACE)));
  });
});

describe("HTTP/2 headers", () => {
  it("drops connection-specific headers and a te other than trailers, keeps pseudo-headers", () => {
    const out = h2RequestHeaders(
      {
        ":method": "POST",
        ":path": "/pkg.Svc/M",
        ":authority": "api:9090",
        ":scheme": "http",
        connection: "keep-alive",
        "keep-alive": "timeout=5",
        "transfer-encoding": "chunked",
        upgrade: "h2c",
        "http2-settings": "AAMAAABk",
        te: "trailers",
        "content-type": "application/grpc",
      },
      false,
    );
    assert.deepEqual(out, {
      ":method": "POST",
      ":path": "/pkg.Svc/M",
      ":authority": "api:9090",
      ":scheme": "http",
      te: "trailers",
      "content-type": "application/grpc",
    });
    assert.equal(h2RequestHeaders({ te: "gzip" }, false)["te"], undefined);
  });

  it("property: with stripping on, no caller-supplied identity header survives", () => {
    const name = fc.constantFrom(
      "x-forwarded-client-cert",
      "x-zmesh-source-workload",
      "x-other",
      "traceparent",
    );
    fc.assert(
      fc.property(fc.dictionary(name, fc.string()), (h) => {
        const out = h2RequestHeaders(h, true);
        assert.equal(out["x-forwarded-client-cert"], undefined);
        assert.equal(out["x-zmesh-source-workload"], undefined);
        if (h["traceparent"] !== undefined) assert.equal(out["traceparent"], h["traceparent"]);
      }),
    );
  });

  it("response headers keep :status and trailers such as grpc-status, drop connection-specific ones", () => {
    assert.deepEqual(
      h2ResponseHeaders({ ":status": 200, connection: "close", "grpc-status": "0" } as never),
      {
        ":status": 200,
        "grpc-status": "0",
      },
    );
  });

  it("tells gRPC by its content-type and an h2c upgrade among others", () => {
    assert.ok(isGrpc({ "content-type": "application/grpc" }));
    assert.ok(isGrpc({ "content-type": "application/grpc+proto" }));
    assert.ok(!isGrpc({ "content-type": "application/json" }));
    assert.ok(!isGrpc({}));
    assert.ok(isH2cUpgrade("h2c"));
    assert.ok(isH2cUpgrade("websocket, H2C"));
    assert.ok(!isH2cUpgrade("websocket"));
    assert.ok(!isH2cUpgrade("h2cx"));
    assert.ok(!isH2cUpgrade(undefined));
  });
});

/** The body of a client stream as text, once it ends. */
function textOf(req: ClientHttp2Stream): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let text = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => {
      text += c;
    });
    req.on("end", () => resolve(text));
    req.on("error", reject);
  });
}

/** An h2c server answering "now" at once, and "late" on `/slow` only when `release()` is called. */
async function slowServer() {
  let ready: () => void = () => {};
  const up = await h2cServer((s, h) => {
    s.respond({ ":status": 200 });
    if (h[":path"] === "/slow") ready = () => s.end("late");
    else s.end("now");
  });
  return { up, release: () => ready() };
}

/** An h2c server on loopback whose streams go to `onStream`; resolves with its port. */
async function h2cServer(onStream: (s: ServerHttp2Stream, h: IncomingHttpHeaders) => void) {
  const server = createServer();
  server.on("stream", onStream);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as { port: number }).port };
}

describe("SessionPool", () => {
  it("hands out a new session once the pooled one got GOAWAY (idle: no stream needed to notice)", async () => {
    const up = await h2cServer((s) => {
      s.respond({ ":status": 200 });
      s.end();
    });
    const served: Http2Session[] = [];
    up.server.on("session", (s) => served.push(s));
    const pool = new SessionPool();
    let opened = 0;
    const open = () => {
      opened++;
      return whenConnected(h2connect(`http://127.0.0.1:${up.port}`));
    };
    try {
      const first = await pool.get("k", open);
      assert.equal(await pool.get("k", open), first, "reused while healthy");
      const gone = new Promise((r) => first.once("goaway", r));
      for (const s of served) s.goaway(constants.NGHTTP2_NO_ERROR, 0);
      await gone;
      const second = await pool.get("k", open);
      assert.notEqual(second, first);
      assert.equal(opened, 2);
    } finally {
      pool.close();
      for (const s of served) s.destroy();
      up.server.close();
    }
  });

  it("retire: the session takes no new stream, its open stream finishes, then it closes; the next get opens a new one", async () => {
    const { up, release } = await slowServer();
    const pool = new SessionPool();
    let opened = 0;
    const open = () => {
      opened++;
      return whenConnected(h2connect(`http://127.0.0.1:${up.port}`));
    };
    const body = (s: ClientHttp2Session, path: string) => textOf(s.request({ ":path": path }));
    try {
      const first = await pool.get("k", open);
      const slow = body(first, "/slow");
      await new Promise((r) => setTimeout(r, 50)); // the stream is open at the upstream
      const closed = new Promise((r) => first.once("close", r));
      pool.retire("k");
      const second = await pool.get("k", open);
      assert.notEqual(second, first, "a retired session is not handed out again");
      assert.equal(opened, 2);
      assert.equal(await body(second, "/"), "now");
      assert.deepEqual([first.closed, first.destroyed], [true, false], "closing gracefully (no new stream)");
      release();
      assert.equal(await slow, "late", "the open stream finished");
      await closed;

      // A stream handed the session in the same tick as the retire is sent, not refused.
      const current = pool.get("k", open); // the second session, pooled
      assert.equal(await current, second);
      const same = current.then((s) => body(s, "/"));
      pool.retire("k");
      assert.equal(await same, "now");

      // Retired while still opening: a stream already waiting (as the outbound waits: a `then` on
      // the session) gets it, then it closes.
      const waiting = pool
        .get("k", open)
        .then((s) => ({ s, answer: body(s, "/"), gone: new Promise((r) => s.once("close", r)) }));
      pool.retire("k");
      const { s: third, answer, gone } = await waiting;
      assert.equal(await answer, "now");
      await gone;
      assert.notEqual(await pool.get("k", open), third);
      assert.equal(opened, 4);
    } finally {
      pool.close();
      up.server.close();
    }
  });

  it("prune: sessions of keys gone from the config retire (an open stream finishes), the others stay pooled", async () => {
    const { up, release } = await slowServer();
    const pool = new SessionPool();
    const open = () => whenConnected(h2connect(`http://127.0.0.1:${up.port}`));
    try {
      const kept = await pool.get("live", open);
      const idle = await pool.get("gone-idle", open);
      const busy = await pool.get("gone-busy", open);
      const slow = textOf(busy.request({ ":path": "/slow" }));
      await new Promise((r) => setTimeout(r, 50)); // the stream is open at the upstream
      assert.equal(pool.size, 3);
      const idleGone = new Promise((r) => idle.once("close", r));
      const busyGone = new Promise((r) => busy.once("close", r));
      pool.prune(new Set(["live"]));
      assert.equal(pool.size, 1, "only the live key is held");
      assert.equal(await pool.get("live", open), kept, "the live session is still pooled");
      await idleGone;
      assert.deepEqual([busy.closed, busy.destroyed], [true, false], "closing gracefully (no new stream)");
      release();
      assert.equal(await slow, "late", "the open stream finished");
      await busyGone;
      assert.equal(kept.closed, false);
    } finally {
      pool.close();
      up.server.close();
    }
  });
});

describe("relayStream", () => {
  it("hands back a stream refused above a GOAWAY's last stream id with its body, to send again on another session", async () => {
    // The refusing upstream speaks raw frames (node:http2 will not send a last stream id below
    // the streams it took): SETTINGS, then on the first stream's frames GOAWAY(last stream id 0).
    const refusing = createNetServer((sock) => {
      sock.on("error", () => {});
      sock.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
      let seen = 0;
      sock.on("data", (d: Buffer) => {
        const before = seen;
        seen += d.length;
        if (before <= 24 + 9 && seen > 24 + 9)
          sock.write(
            Buffer.from([0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
          );
      });
    });
    await new Promise<void>((r) => refusing.listen(0, "127.0.0.1", r));
    const refusingPort = (refusing.address() as { port: number }).port;
    const bodies: string[] = [];
    const good = await h2cServer((s, h) => {
      const chunks: Buffer[] = [];
      s.on("data", (c: Buffer) => chunks.push(c));
      s.on("end", () => {
        bodies.push(Buffer.concat(chunks).toString());
        s.respond({ ":status": 200 });
        s.end(`${h[":method"]} ${Buffer.concat(chunks).toString()}`);
      });
    });
    const results: StreamResult[] = [];
    const front = await h2cServer((down, h) => {
      const headers = h2RequestHeaders(h, true);
      void whenConnected(h2connect(`http://127.0.0.1:${refusingPort}`)).then((first) =>
        relayStream(down, first, headers, (r) => {
          results.push(r);
          first.destroy();
          if (!r.refused) return;
          void whenConnected(h2connect(`http://127.0.0.1:${good.port}`)).then((second) =>
            relayStream(
              down,
              second,
              headers,
              (r2) => {
                results.push(r2);
                second.close();
              },
              r.refused,
            ),
          );
        }),
      );
    });
    const client = await whenConnected(h2connect(`http://127.0.0.1:${front.port}`));
    try {
      const req = client.request({ ":method": "PUT", ":path": "/x" });
      req.end("the body");
      const answer = await textOf(req);
      assert.equal(answer, "PUT the body");
      assert.deepEqual(bodies, ["the body"]);
      assert.equal(results.length, 2);
      assert.ok(results[0]!.refused, "the first try was refused, not failed");
      assert.equal(results[0]!.status, 0);
      assert.equal(results[1]!.status, 200);
      assert.equal(results[1]!.requestBytes, "the body".length);
    } finally {
      client.close();
      refusing.close();
      for (const s of [good, front]) s.server.close();
    }
  });
});
