// Attack suite, request targets other than a path (RFC 9112 section 3.2). Absolute-form is taken,
// read as its origin-form with the authority as Host, so it must not slip past `DENY paths:
// ["/admin*"]` or `DENY hosts: ["secret.shop"]` by putting one value in the target and another in
// Host; the app must see what the policy saw. `OPTIONS *` reaches policies as the path `*` (no
// path rule but `*` allows it); CONNECT is refused (501) before any policy or app. Each case goes
// straight into the inbound (mTLS with a mesh SVID) and through the caller's outbound.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type AttackMesh, attackMesh, rawInbound, rawOutbound, statuses } from "./lib.js";

const ALLOW_ITEMS_ONLY = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: items-only, namespace: shop }
spec:
  selector: { matchLabels: { app: catalog } }
  rules:
    - to: [{ operation: { paths: ["/items*"] } }]
`;

const head = (line: string, host = "catalog") => `${line}\r\nhost: ${host}\r\nconnection: close\r\n\r\n`;

function ways(m: () => AttackMesh) {
  return [
    ["inbound", (text: string) => rawInbound(m(), text)],
    ["outbound", (text: string) => rawOutbound(m(), [text])],
  ] as const;
}

describe("attack: request targets other than a path", { timeout: 60_000 }, () => {
  let m: AttackMesh;
  before(async () => {
    m = await attackMesh();
  });
  after(() => m.close());

  for (const [via, send] of ways(() => m)) {
    it(`${via}: absolute-form to a denied path is denied, however the path is spelled`, async () => {
      for (const target of [
        "http://catalog/admin",
        "HTTP://catalog/admin",
        "https://catalog/admin/x",
        "http://catalog/x/../admin",
        "http://catalog//admin",
        "http://catalog/%61dmin",
        "http://catalog/./admin?x=1",
      ]) {
        const from = m.target.seen.length;
        const answer = await send(head(`GET ${target} HTTP/1.1`, "catalog"));
        assert.equal(statuses(answer)[0], 403, `${via} ${target}: ${answer.slice(0, 80)}`);
        assert.deepEqual(m.target.seen.slice(from), [], `${via} ${target} reached the app`);
      }
    });

    it(`${via}: the authority, not Host, is the host policies see (and the app gets)`, async () => {
      let from = m.target.seen.length;
      const denied = await send(head("GET http://secret.shop/items HTTP/1.1", "catalog"));
      assert.equal(statuses(denied)[0], 403, "a denied authority behind an allowed Host");
      const upper = await send(head("GET http://SECRET.shop./items HTTP/1.1", "catalog"));
      assert.equal(statuses(upper)[0], 403, "upper case and a trailing dot in the authority");
      assert.deepEqual(m.target.seen.slice(from), []);
      from = m.target.seen.length;
      const allowed = await send(head("GET http://catalog/items?x=1 HTTP/1.1", "secret.shop"));
      assert.equal(statuses(allowed)[0], 200, "an allowed authority behind a denied Host");
      const seen = m.target.seen.slice(from);
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.url, "/items?x=1", "forwarded in origin-form");
      assert.equal(seen[0]!.headers.host, "catalog", "the app sees the host the policy saw");
    });

    it(`${via}: absolute-form with userinfo, a fragment or an odd host is refused (400)`, async () => {
      const from = m.target.seen.length;
      for (const target of [
        "http://catalog@secret.shop/items",
        "http://secret.shop@catalog/items",
        "http://catalog/items#/../admin",
        "http:///admin",
        "http://cat%61log/items",
        "file:///etc/passwd",
      ]) {
        const answer = await send(head(`GET ${target} HTTP/1.1`));
        assert.equal(statuses(answer)[0], 400, `${via} ${target}: ${answer.slice(0, 80)}`);
      }
      assert.deepEqual(m.target.seen.slice(from), []);
    });

    it(`${via}: OPTIONS * reaches the app as is when policies allow the path *`, async () => {
      const from = m.target.seen.length;
      const answer = await send(head("OPTIONS * HTTP/1.1"));
      assert.equal(statuses(answer)[0], 200, answer.slice(0, 80));
      assert.deepEqual(
        m.target.seen.slice(from).map((s) => `${s.method} ${s.url}`),
        ["OPTIONS *"],
      );
    });

    it(`${via}: CONNECT is refused with 501 and says why; nothing reaches the app`, async () => {
      const from = m.target.seen.length;
      for (const line of [
        "CONNECT secret.shop:443 HTTP/1.1",
        "CONNECT catalog:80 HTTP/1.1",
        "CONNECT /admin HTTP/1.1",
      ]) {
        const answer = await send(head(line, "catalog:80"));
        assert.equal(statuses(answer)[0], 501, `${via} ${line}: ${answer.slice(0, 80)}`);
        assert.match(answer, /x-zmesh-flag: CONNECT_REFUSED/);
        assert.match(answer, /CONNECT is not proxied/);
      }
      assert.deepEqual(m.target.seen.slice(from), []);
    });
  }
});

describe("attack: request targets against an ALLOW of /items* only", { timeout: 60_000 }, () => {
  let m: AttackMesh;
  before(async () => {
    m = await attackMesh("", ALLOW_ITEMS_ONLY);
  });
  after(() => m.close());

  for (const [via, send] of ways(() => m)) {
    it(`${via}: OPTIONS * and absolute-form outside /items are denied; /items in absolute-form is allowed`, async () => {
      const from = m.target.seen.length;
      assert.equal(statuses(await send(head("OPTIONS * HTTP/1.1")))[0], 403, "the path * is not /items*");
      assert.equal(statuses(await send(head("GET http://catalog/admin HTTP/1.1")))[0], 403);
      assert.equal(statuses(await send(head("GET http://catalog/items/../admin HTTP/1.1")))[0], 403);
      assert.equal(statuses(await send(head("GET http://catalog/items/1 HTTP/1.1")))[0], 200);
      assert.deepEqual(
        m.target.seen.slice(from).map((s) => s.url),
        ["/items/1"],
      );
    });
  }
});
