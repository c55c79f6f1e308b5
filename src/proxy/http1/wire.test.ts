// Heads rewritten for the next hop: what is dropped (hop-by-hop, named by Connection, identity
// fields a caller could spoof, the listener's own drop set), what goes on byte for byte, and what
// the mesh adds; for responses, the status line and the close/keep-alive/de-chunk cases.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseRequestHead, parseResponseHead, type RequestHead, type ResponseHead } from "./head.js";
import { interimHeadFor, requestHeadFor, responseHeadFor } from "./wire.js";

function request(text: string): RequestHead {
  const r = parseRequestHead(Buffer.from(text, "latin1"));
  assert.ok(r?.ok, JSON.stringify(r));
  return r.head;
}
function response(text: string): ResponseHead {
  const r = parseResponseHead(Buffer.from(text, "latin1"));
  assert.ok(r?.ok, JSON.stringify(r));
  return r.head;
}

describe("requestHeadFor", () => {
  it("keeps end-to-end fields as sent, drops hop-by-hop, Connection-named, spoofable and dropped ones, adds extra", () => {
    const h = request(
      "GET /a?b HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n" +
        "X-Forwarded-Client-Cert: By=spiffe://evil\r\nx_forwarded_client_cert: u\r\nX-Forwarded-For: 1.2.3.4\r\n" +
        "X-Zmesh-Anything: s\r\nX-Drop-Me: d\r\nAccept:  text/plain  \r\nTE: trailers\r\n\r\n",
    );
    const out = requestHeadFor(h, "/normalized?b", new Set(["x-drop-me"]), [
      "x-request-id",
      "r1",
      "x-extra",
      "e",
    ]);
    assert.equal(
      out.toString("latin1"),
      "GET /normalized?b HTTP/1.1\r\nHost: svc\r\nAccept:  text/plain  \r\nx-request-id: r1\r\nx-extra: e\r\n\r\n",
    );
  });

  it("an HTTP/1.0 request goes on as HTTP/1.1, with its bytes intact (obs-text included)", () => {
    const h = request("POST /p HTTP/1.0\r\nContent-Length: 3\r\nX-Latin: caf\xe9\r\n\r\n");
    assert.equal(
      requestHeadFor(h, "/p", new Set(), []).toString("latin1"),
      "POST /p HTTP/1.1\r\nContent-Length: 3\r\nX-Latin: caf\xe9\r\n\r\n",
    );
  });
});

describe("responseHeadFor", () => {
  const text =
    "HTTP/1.1 200 OK\r\nContent-Type: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n";

  it("copies an HTTP/1.1 status line and end-to-end fields, drops hop-by-hop ones", () => {
    assert.equal(
      responseHeadFor(response(text), false, false).toString("latin1"),
      "HTTP/1.1 200 OK\r\nContent-Type: a\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n",
    );
  });

  it("asks the client to close, or keeps an HTTP/1.0 client alive, when told", () => {
    assert.match(
      responseHeadFor(response(text), true, false).toString("latin1"),
      /\r\nconnection: close\r\n\r\n$/,
    );
    assert.match(
      responseHeadFor(response(text), false, true).toString("latin1"),
      /\r\nconnection: keep-alive\r\n\r\n$/,
    );
  });

  it("de-chunked: Transfer-Encoding and Trailer go, the close says where the body ends", () => {
    assert.equal(
      responseHeadFor(response(text), true, false, true).toString("latin1"),
      "HTTP/1.1 200 OK\r\nContent-Type: a\r\nconnection: close\r\n\r\n",
    );
  });

  it("answers an HTTP/1.0 status line as HTTP/1.1", () => {
    assert.equal(
      responseHeadFor(response("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"), false, false).toString(
        "latin1",
      ),
      "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    assert.equal(
      interimHeadFor(response("HTTP/1.1 100 Continue\r\n\r\n")).toString("latin1"),
      "HTTP/1.1 100 Continue\r\n\r\n",
    );
  });
});

describe("requestHeadFor, absolute-form", () => {
  it("forwards the target's authority as the only Host, never the one the caller sent", () => {
    const h = request("GET http://catalog:8080/a?q HTTP/1.1\r\nHost: decoy\r\nX: y\r\n\r\n");
    assert.equal(
      requestHeadFor(h, "/a?q", new Set(), []).toString("latin1"),
      "GET /a?q HTTP/1.1\r\nX: y\r\nhost: catalog:8080\r\n\r\n",
    );
    const old = request("GET http://svc/p HTTP/1.0\r\n\r\n");
    assert.equal(
      requestHeadFor(old, "/p", new Set(), []).toString("latin1"),
      "GET /p HTTP/1.1\r\nhost: svc\r\n\r\n",
    );
  });
});
