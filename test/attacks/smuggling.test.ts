// Attack suite, request smuggling: ambiguous framing sent as exact bytes through the caller's
// outbound and straight into the target's inbound (mTLS with a mesh SVID). The target denies
// /admin*; a request hidden behind an ambiguous frame must never reach the app, and afterwards
// other callers, whose requests share the proxies' pooled upstream connections, must each get
// their own response (no desynchronized connection). Black-box on the wire, so these hold for any
// HTTP/1.1 implementation of the proxies.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { call } from "../harness/index.js";
import {
  type AttackMesh,
  attackMesh,
  CATALOG_AUTO_VIP,
  CATALOG_VIP,
  rawInbound,
  rawOutbound,
  statuses,
} from "./lib.js";

const HIDDEN = "GET /admin/hidden HTTP/1.1\r\nhost: catalog\r\n\r\n";

const CASES: [string, string][] = [
  [
    "Content-Length with Transfer-Encoding (CL.TE)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "Transfer-Encoding with Content-Length (TE.CL)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n${(HIDDEN.length + 2).toString(16)}\r\nXX${HIDDEN}\r\n0\r\n\r\n`,
  ],
  [
    "two Content-Length headers",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ncontent-length: 0\r\ncontent-length: ${HIDDEN.length}\r\n\r\n${HIDDEN}`,
  ],
  [
    "a Content-Length list",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ncontent-length: 0, ${HIDDEN.length}\r\n\r\n${HIDDEN}`,
  ],
  [
    "obfuscated Transfer-Encoding (xchunked)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: xchunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obfuscated Transfer-Encoding (space before the colon)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding : chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obfuscated Transfer-Encoding (chunked, identity)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obfuscated Transfer-Encoding (two headers)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obfuscated Transfer-Encoding (vertical tab)",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding:\x0bchunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obs-fold of Transfer-Encoding",
    `POST /items HTTP/1.1\r\nhost: catalog\r\nx-pad: a\r\n transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "obs-fold of a Content-Length value",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ncontent-length:\r\n ${HIDDEN.length}\r\n\r\n${HIDDEN}`,
  ],
  [
    "bare LF line endings",
    `POST /items HTTP/1.1\nhost: catalog\ncontent-length: 5\ntransfer-encoding: chunked\n\n0\n\n${HIDDEN}`,
  ],
  [
    "bare CR inside a header",
    `POST /items HTTP/1.1\r\nhost: catalog\r\nx-a: b\rtransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "a second request hidden in a Content-Length body",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ncontent-length: ${HIDDEN.length}\r\n\r\n${HIDDEN}`,
  ],
  [
    "a second request hidden in a chunked body",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\n\r\n${HIDDEN.length.toString(16)}\r\n${HIDDEN}\r\n0\r\n\r\n`,
  ],
  [
    "a chunk size that overflows",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff5\r\nxxxxx\r\n0\r\n\r\n${HIDDEN}`,
  ],
  [
    "a chunk extension hiding a terminator",
    `POST /items HTTP/1.1\r\nhost: catalog\r\ntransfer-encoding: chunked\r\n\r\n5;x="\r\n0\r\n\r\n"\r\nxxxxx\r\n0\r\n\r\n`,
  ],
  [
    "a GET with a body that frames the hidden request",
    `GET /items HTTP/1.1\r\nhost: catalog\r\ncontent-length: ${HIDDEN.length}\r\n\r\n${HIDDEN}`,
  ],
  ["a request line with HTTP/1.1 twice", `GET /items HTTP/1.1 HTTP/1.1\r\nhost: catalog\r\n\r\n${HIDDEN}`],
  [
    "pipelined: an allowed request, then a denied one",
    `GET /items HTTP/1.1\r\nhost: catalog\r\n\r\n${HIDDEN}`,
  ],
];

describe("attack: HTTP/1.1 request smuggling through both proxies", { timeout: 120_000 }, () => {
  let m: AttackMesh;
  let n = 0;
  before(async () => {
    m = await attackMesh();
  });
  after(() => m.close());

  /** Other callers right after: each of several concurrent requests gets its own response. */
  async function nextCallersUnaffected(what: string) {
    const paths = Array.from({ length: 4 }, () => `/next-${n++}`);
    const replies = await Promise.all(paths.map((path) => call(m.mesh, m.frontend, CATALOG_VIP, { path })));
    replies.forEach((r, i) => {
      assert.equal(r.status, 200, `${what}: next caller got ${r.status}`);
      assert.equal(r.body, `catalog GET ${paths[i]}`, `${what}: next caller got someone else's response`);
    });
  }

  for (const [what, bytes] of CASES) {
    it(`${what}: no hidden request reaches the app, no desync`, async () => {
      for (const via of ["inbound", "outbound"] as const) {
        const from = m.target.seen.length;
        // Sent in one write and again byte-split at the header end, since parsers differ on boundaries.
        const cut = bytes.indexOf("\r\n\r\n") + 2;
        const answers = [];
        for (const chunks of [[bytes], [bytes.slice(0, cut), bytes.slice(cut)]]) {
          answers.push(via === "inbound" ? await rawInbound(m, ...chunks) : await rawOutbound(m, chunks));
        }
        const urls = m.target.seen.slice(from).map((s) => s.url);
        assert.ok(!urls.some((u) => u.startsWith("/admin")), `${via}: the app saw ${urls}`);
        for (const a of answers) {
          // Whatever answers came back, none is a 200 for a request the attacker hid.
          assert.doesNotMatch(a, /catalog GET \/admin/, `${via}: ${a}`);
          assert.ok(statuses(a).length <= 2, `${via}: more responses than requests: ${a}`);
        }
        await nextCallersUnaffected(`${via} ${what}`);
      }
    });
  }

  it("the hidden request of the pipelined case is authorized on its own (403), not skipped", async () => {
    const a = await rawInbound(m, `GET /items HTTP/1.1\r\nhost: catalog\r\n\r\n${HIDDEN}`);
    assert.deepEqual(statuses(a), [200, 403]);
  });
  for (const [what, chunks] of [
    [
      "the first byte alone, so that sniffing sees no method",
      ["G", 150, "ET /admin/tcp HTTP/1.1\r\nhost: catalog\r\n\r\n"],
    ],
    ["a leading CRLF, which HTTP servers skip", ["\r\nGET /admin/tcp HTTP/1.1\r\nhost: catalog\r\n\r\n"]],
    ["a lower-case method", ["get /admin/tcp HTTP/1.1\r\nhost: catalog\r\n\r\n"]],
    ["silence past the sniffing window", [200, "GET /admin/tcp HTTP/1.1\r\nhost: catalog\r\n\r\n"]],
  ] as const) {
    it(`HTTP disguised as opaque TCP on a port of undeclared protocol (${what}) does not reach /admin`, async () => {
      const from = m.target.seen.length;
      const answer = await rawOutbound(m, [...chunks], CATALOG_AUTO_VIP);
      const urls = m.target.seen.slice(from).map((s) => s.url);
      assert.ok(!urls.some((u) => u.startsWith("/admin")), `the app saw ${urls}`);
      assert.doesNotMatch(answer, /catalog GET \/admin/);
    });
  }
  it("why: the disguised bytes travel as opaque TCP, which the DENY rules with HTTP fields close as a whole", async () => {
    const from = m.target.seen.length;
    const tcp = await rawOutbound(
      m,
      ["G", 150, "ET /items HTTP/1.1\r\nhost: catalog\r\n\r\n"],
      CATALOG_AUTO_VIP,
    );
    assert.equal(tcp, "", "a TCP connection the policies deny is closed without an answer");
    assert.deepEqual(m.target.seen.slice(from), []);
    const http = await rawOutbound(
      m,
      ["GET /items HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n"],
      CATALOG_AUTO_VIP,
    );
    assert.equal(statuses(http)[0], 200, "the control: sniffed as HTTP, the same port serves");
  });
});
