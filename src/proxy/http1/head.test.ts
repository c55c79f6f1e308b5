// The HTTP/1.1 head parser and body framer: valid heads round-trip, arbitrary bytes never throw,
// and every request-smuggling shape of issue 7 is refused (each case names the attack it guards).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { Framer } from "./body.js";
import { field, fieldRecord, MAX_HEAD_BYTES, parseRequestHead, parseResponseHead, value } from "./head.js";

const TCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~";
const token = fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 20 });
const reserved = new Set(["content-length", "transfer-encoding", "host", "connection"]);
const fieldName = token.filter((n) => !reserved.has(n.toLowerCase()));
/** A field value: visible ASCII and obs-text, single spaces inside, no leading/trailing blank. */
const fieldValue = fc
  .array(
    fc.integer({ min: 0x21, max: 0xff }).filter((c) => c !== 0x7f),
    { maxLength: 30 },
  )
  .map((cs) => String.fromCharCode(...cs));
const pathChar = fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789-._~/%?=&+".split(""));
const target = fc.string({ unit: pathChar, maxLength: 40 }).map((p) => `/${p}`);

const req = (text: string) => parseRequestHead(Buffer.from(text, "latin1"));
function refused(text: string, why?: RegExp): void {
  const r = req(text);
  assert.ok(r && !r.ok, `expected a refusal for ${JSON.stringify(text)}, got ${JSON.stringify(r)}`);
  if (why && r && !r.ok) assert.match(r.reason, why);
}

describe("parseRequestHead", () => {
  it("round-trips generated valid heads (method, target, fields in order, framing)", () => {
    fc.assert(
      fc.property(
        token,
        target,
        fc.array(fc.tuple(fieldName, fieldValue), { maxLength: 12 }),
        fc.option(fc.nat({ max: 1e9 }), { nil: undefined }),
        fc.boolean(),
        (method, path, fields, length, chunked) => {
          const lines = [`${method} ${path} HTTP/1.1`, "Host: svc.example"];
          for (const [n, v] of fields) lines.push(`${n}: ${v}`);
          if (chunked) lines.push("Transfer-Encoding: chunked");
          else if (length !== undefined) lines.push(`Content-Length: ${length}`);
          const text = `${lines.join("\r\n")}\r\n\r\n`;
          const r = parseRequestHead(Buffer.from(`${text}trailing body bytes`, "latin1"));
          assert.ok(r?.ok, JSON.stringify(r));
          const h = r.head;
          assert.equal(h.method, method);
          assert.equal(h.target, path);
          assert.equal(h.size, Buffer.byteLength(text, "latin1"));
          assert.deepEqual(
            fields.map((_, i) => value(h, i + 1)),
            fields.map(([, v]) => v),
          );
          // Each field's line is where the parser says: its bytes are what is forwarded as is.
          assert.deepEqual(
            fields.map((_, i) => h.buf.toString("latin1", h.at[(i + 1) * 4], h.at[(i + 1) * 4 + 3])),
            fields.map(([n, v]) => `${n}: ${v}\r\n`),
          );
          assert.deepEqual(
            h.names.slice(1, 1 + fields.length),
            fields.map(([n]) => n.toLowerCase()),
          );
          assert.equal(h.chunked, chunked);
          assert.equal(h.contentLength, !chunked && length !== undefined ? length : -1);
        },
      ),
      { numRuns: 500 },
    );
  });

  it("never throws on arbitrary bytes, and refuses or waits on them", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
        const b = Buffer.from(bytes);
        const r = parseRequestHead(b);
        if (r?.ok) assert.ok(r.head.size <= b.length);
        parseResponseHead(b);
      }),
      { numRuns: 2000 },
    );
  });

  it("never throws on valid heads with random bytes spliced in", () => {
    fc.assert(
      fc.property(fc.nat(60), fc.uint8Array({ minLength: 1, maxLength: 8 }), (at, bytes) => {
        const base = Buffer.from("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        const b = Buffer.concat([base.subarray(0, at), Buffer.from(bytes), base.subarray(at)]);
        parseRequestHead(b);
      }),
      { numRuns: 2000 },
    );
  });

  it("waits for an incomplete head, refuses one over the limit", () => {
    assert.equal(req("GET / HTTP/1.1\r\nHost: x\r\n"), undefined);
    refused(`GET / HTTP/1.1\r\nHost: x\r\nX: ${"a".repeat(MAX_HEAD_BYTES)}`, /longer than/);
  });

  // Smuggling: a front end and a back end that frame the same bytes differently.
  it("refuses Content-Length together with Transfer-Encoding (CL.TE / TE.CL)", () => {
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", /both/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", /both/);
  });
  it("refuses two Content-Lengths, equal or not, and lists", () => {
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", /more than one/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", /more than one/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\n", /decimal/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n", /decimal/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", /decimal/);
  });
  it("refuses obfuscated Transfer-Encoding (TE.TE)", () => {
    for (const te of [
      "xchunked",
      "chunked, identity",
      "chunked, chunked",
      "identity",
      "chunked\x0b",
      '"chunked"',
    ])
      refused(`POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ${te}\r\n\r\n`);
    refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", /name/);
    refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n");
    refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", /HTTP\/1.0/);
    const ok = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
    assert.ok(ok?.ok && ok.head.chunked);
  });
  it("refuses obs-fold, bare LF, bare CR and control characters", () => {
    refused("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", /obs-fold/);
    refused("GET / HTTP/1.1\r\nHost: x\r\n\tX: 1\r\n\r\n", /obs-fold/);
    refused("GET / HTTP/1.1\nHost: x\n\n", /bare LF/);
    refused("GET / HTTP/1.1\r\nHost: x\nX: 1\r\n\r\n");
    refused("GET / HTTP/1.1\r\nHost: x\rX: 1\r\n\r\n");
    refused("GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n");
    refused("GET / HTTP/1.1\r\nHost: x\r\nX\x01: a\r\n\r\n", /name/);
  });
  it("reads absolute-form as its origin-form path, the authority replacing Host (RFC 9112 3.2.2)", () => {
    const r = req("GET http://catalog:8080/a/b?q=1 HTTP/1.1\r\nHost: decoy\r\nX: y\r\n\r\n");
    assert.ok(r?.ok);
    assert.equal(r.head.target, "/a/b?q=1");
    assert.deepEqual(r.head.names, ["host", "x"], "Host is not doubled");
    assert.equal(value(r.head, 0), "catalog:8080", "the received Host is ignored");
    assert.deepEqual(fieldRecord(r.head), { host: "catalog:8080", x: "y" });
    const bare = req("GET HTTPS://svc HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.ok(bare?.ok && bare.head.target === "/" && field(bare.head, "host") === "svc");
    const query = req("GET http://svc?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.ok(query?.ok && query.head.target === "/?x=1");
    const old = req("GET http://svc/p HTTP/1.0\r\n\r\n");
    assert.ok(old?.ok, "HTTP/1.0 needs no Host: the authority becomes it");
    assert.equal(field(old.head, "host"), "svc");
    assert.deepEqual(fieldRecord(old.head), { host: "svc" });
  });
  it("property: an absolute-form request reads exactly as its origin-form with Host = the authority", () => {
    const host = fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{1,5})?$/);
    fc.assert(
      fc.property(token, target, host, fieldValue, (method, path, authority, decoy) => {
        fc.pre(method !== "CONNECT");
        const abs = req(`${method} http://${authority}${path} HTTP/1.1\r\nHost: ${decoy}\r\n\r\n`);
        const origin = req(`${method} ${path} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
        assert.ok(abs?.ok && origin?.ok);
        assert.equal(abs.head.target, origin.head.target);
        assert.deepEqual(fieldRecord(abs.head), fieldRecord(origin.head));
      }),
    );
  });
  it("refuses absolute-form targets that could be read two ways: userinfo, fragments, odd hosts, other schemes", () => {
    refused("GET http://catalog@evil/ HTTP/1.1\r\nHost: x\r\n\r\n", /userinfo/);
    refused("GET http://@evil/ HTTP/1.1\r\nHost: x\r\n\r\n", /userinfo/);
    refused("GET http:///admin HTTP/1.1\r\nHost: x\r\n\r\n", /host/);
    refused("GET http://ev%69l/ HTTP/1.1\r\nHost: x\r\n\r\n", /host/);
    refused("GET http://evil:/ HTTP/1.1\r\nHost: x\r\n\r\n", /host/);
    refused("GET http://evil:80x/ HTTP/1.1\r\nHost: x\r\n\r\n", /host/);
    refused("GET http://evil/a#frag HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET http:/evil/ HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET file:///etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET ftp://evil/ HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET admin HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET http://evil/ HTTP/1.1\r\n\r\n", /Host/);
  });
  it("takes `OPTIONS *` (and * for OPTIONS only); parses CONNECT host:port for the engine to refuse", () => {
    const star = req("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert.ok(star?.ok && star.head.target === "*");
    refused("GET * HTTP/1.1\r\nHost: x\r\n\r\n", /OPTIONS/);
    const connect = req("CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n");
    assert.ok(connect?.ok && connect.head.method === "CONNECT" && connect.head.target === "evil:443");
    refused("CONNECT evil HTTP/1.1\r\nHost: x\r\n\r\n", /host:port/);
  });
  it("refuses bad request lines", () => {
    refused("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET  / HTTP/1.1\r\nHost: x\r\n\r\n");
    refused("GET / HTTP/2.0\r\nHost: x\r\n\r\n", /version/);
    refused("G(T / HTTP/1.1\r\nHost: x\r\n\r\n", /method/);
    refused("GET /\x80 HTTP/1.1\r\nHost: x\r\n\r\n");
  });
  it("requires exactly one Host in HTTP/1.1", () => {
    refused("GET / HTTP/1.1\r\n\r\n", /Host/);
    refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", /Host/);
  });
});

describe("parseResponseHead", () => {
  it("reads status, reason and framing; tolerates an empty reason", () => {
    const r = parseResponseHead(Buffer.from("HTTP/1.1 204 No Content\r\nX: y\r\n\r\n"));
    assert.ok(r?.ok);
    assert.equal(r.head.status, 204);
    assert.equal(r.head.reason, "No Content");
    const e = parseResponseHead(Buffer.from("HTTP/1.1 200\r\nContent-Length: 3\r\n\r\nabc"));
    assert.ok(e?.ok && e.head.contentLength === 3 && e.head.reason === "");
  });
  it("refuses the same smuggling shapes in responses", () => {
    for (const t of [
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
      "HTTP/1.1 200 OK\nX: 1\n\n",
      "HTTP/1.1 999 Nope\r\n\r\n",
    ]) {
      const r = parseResponseHead(Buffer.from(t));
      assert.ok(r && !r.ok, t);
    }
  });
});

describe("Framer", () => {
  const frame = (length: number, parts: string[]) => {
    const f = new Framer(length);
    let taken = "";
    for (const p of parts) {
      const b = Buffer.from(p, "latin1");
      const n = f.feed(b, 0);
      if (n < 0) return { f, taken, error: f.error };
      taken += p.slice(0, n);
      if (f.done) break;
    }
    return { f, taken, error: undefined };
  };
  it("counts Content-Length and stops at its end (a second request stays outside)", () => {
    const { f, taken } = frame(5, ["hel", "loGET /admin HTTP/1.1\r\n"]);
    assert.ok(f.done);
    assert.equal(taken, "hello");
  });
  it("follows chunked framing split at every byte, with extensions and trailers", () => {
    const msg = "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
    const parts = [...msg, "NEXT"];
    const { f, taken, error } = frame(-1, parts);
    assert.equal(error, undefined);
    assert.ok(f.done);
    assert.equal(taken, msg);
    assert.equal(f.payload, 31);
  });
  it("refuses malformed chunked framing (bare LF, bad sizes, missing CRLF)", () => {
    for (const bad of [
      "5\nhello\r\n0\r\n\r\n",
      "g\r\n",
      "5\r\nhelloX\r\n",
      "-1\r\n",
      "1111111111111\r\n",
      "0\r\n\n",
    ]) {
      const { error } = frame(-1, [bad]);
      assert.ok(error, bad);
    }
  });
  it("never throws and never takes more than it is given", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 10 }), (chunks) => {
        const f = new Framer(-1);
        for (const c of chunks) {
          const b = Buffer.from(c);
          const n = f.feed(b, 0);
          if (n < 0) break;
          assert.ok(n <= b.length);
          if (f.done) break;
        }
      }),
      { numRuns: 1000 },
    );
  });
});
