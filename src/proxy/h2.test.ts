// HTTP/2 facts the proxy decides on untrusted input: the connection preface that routes a
// connection to HTTP/2, the h2c upgrade the inbound refuses, and the headers passed on (what is
// dropped, what identity headers can never come from a caller).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { h2RequestHeaders, h2ResponseHeaders, isGrpc, isH2cUpgrade } from "./h2.js";
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
