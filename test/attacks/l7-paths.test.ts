// Attack suite, L7: request targets, methods and Host values crafted to slip past
// `DENY paths: ["/admin*"]`, `DENY methods: ["DELETE"]` and `DENY hosts: ["secret.shop"]` on a real
// inbound proxy, sent as exact bytes both straight into the inbound (mTLS with a mesh SVID) and
// through the caller's outbound. Each must be refused (400/403/5xx) or reach the app only as the
// normalized path, which the policy saw and which is not under /admin.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { normalizePath } from "../../src/policy/index.js";
import { type AttackMesh, attackMesh, rawInbound, rawOutbound, statuses } from "./lib.js";

const TARGETS = [
  "/admin",
  "//admin",
  "///admin/",
  "/./admin",
  "/x/../admin",
  "/x/..//admin",
  "/%61dmin",
  "/%2e%2e/admin",
  "/.%2e/admin",
  "/admin%2F",
  "/admin%2f",
  "/admin%2Fx",
  "\\admin",
  "/\\admin",
  "/admin#x",
  "/#/../admin",
  "/admin?x",
  "/admin;x",
  "/admin%00",
  "/%00/../admin",
  "/%zz/admin",
  "/x/%2561dmin",
  "http://catalog/admin",
  "*",
  "admin",
];

describe("attack: L7 path, method and Host tricks against DENY rules", { timeout: 60_000 }, () => {
  let m: AttackMesh;
  before(async () => {
    m = await attackMesh();
  });
  after(() => m.close());

  /** Refused, or the app saw exactly the normalized form, which is not an admin path. */
  function assertStopped(target: string, answer: string, from: number, via: string) {
    const code = statuses(answer)[0] ?? 0;
    const seen = m.target.seen.slice(from);
    if (code === 200) {
      assert.equal(seen.length, 1, `${via} ${target}: one request reached the app`);
      const got = seen[0]!.url;
      const norm = normalizePath(target);
      assert.ok(norm.ok, `${via} ${target}: reached the app though the normalizer refuses it`);
      const want = norm.query ? `${norm.path}?${norm.query}` : norm.path;
      assert.equal(got, want, `${via} ${target}: the app saw another path than the policy`);
      assert.doesNotMatch(got, /^\/admin/, `${via} ${target}: an admin path reached the app`);
    } else {
      assert.ok([400, 403, 502, 503].includes(code) || code === 0, `${via} ${target}: got ${code}`);
      assert.deepEqual(
        seen.map((s) => s.url),
        [],
        `${via} ${target}: refused (${code}) but the app saw it`,
      );
    }
  }

  it("the control: an ordinary path gets through, /admin does not", async () => {
    const from = m.target.seen.length;
    const ok = await rawInbound(m, "GET /items HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n");
    assert.equal(statuses(ok)[0], 200);
    const no = await rawInbound(m, "GET /admin HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n");
    assert.equal(statuses(no)[0], 403);
    assert.deepEqual(
      m.target.seen.slice(from).map((s) => s.url),
      ["/items"],
    );
  });

  for (const target of TARGETS) {
    it(`path ${JSON.stringify(target)} straight into the inbound and through the outbound`, async () => {
      const req = `GET ${target} HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n\r\n`;
      let from = m.target.seen.length;
      assertStopped(target, await rawInbound(m, req), from, "inbound");
      from = m.target.seen.length;
      assertStopped(target, await rawOutbound(m, [req]), from, "outbound");
    });
  }

  it("encoded slashes under each decode setting: kept encoded (default) still matches /admin*, decoded matches too", () => {
    // The proxy runs the normalizer with its defaults; both settings keep the DENY effective.
    for (const decodeSlashes of [false, true]) {
      for (const t of ["/admin%2F", "/admin%2f", "/admin%5C"]) {
        const n = normalizePath(t, { decodeSlashes });
        assert.ok(
          n.ok && n.path.startsWith("/admin"),
          `${t} decodeSlashes=${decodeSlashes}: ${JSON.stringify(n)}`,
        );
      }
    }
  });

  for (const line of [
    "delete /items",
    "Delete /items",
    "DELETE  /items",
    "DELETE\t/items",
    " DELETE /items",
    "DELETE /items HTTP/1.0\r\nx: y",
    "DELET /items",
    "DELETEX /items",
  ]) {
    it(`method ${JSON.stringify(line.split(" /")[0])}: a DELETE never reaches the app`, async () => {
      const req = `${line}${line.includes("HTTP/1.0") ? "" : " HTTP/1.1"}\r\nhost: catalog\r\nconnection: close\r\n\r\n`;
      for (const via of ["inbound", "outbound"] as const) {
        const from = m.target.seen.length;
        const answer = via === "inbound" ? await rawInbound(m, req) : await rawOutbound(m, [req]);
        const code = statuses(answer)[0] ?? 0;
        const methods = m.target.seen.slice(from).map((s) => s.method.toUpperCase());
        assert.ok(!methods.some((x) => x.startsWith("DELETE")), `${via} ${line}: app saw ${methods}`);
        assert.notEqual(code, 200, `${via} ${line}`);
      }
    });
  }

  for (const host of [
    "secret.shop",
    "SECRET.SHOP",
    "secret.shop:80",
    "secret.shop:8080",
    "secret.shop.",
    "Secret.Shop.:80",
    "catalog\r\nhost: secret.shop",
    "secret.shop\r\nhost: catalog",
  ]) {
    it(`Host ${JSON.stringify(host)} does not get past DENY hosts ["secret.shop"]`, async () => {
      const req = `GET /items HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\n\r\n`;
      for (const via of ["inbound", "outbound"] as const) {
        const from = m.target.seen.length;
        const answer = via === "inbound" ? await rawInbound(m, req) : await rawOutbound(m, [req]);
        const code = statuses(answer)[0] ?? 0;
        const hosts = m.target.seen.slice(from).map((s) => String(s.headers.host).toLowerCase());
        assert.ok(
          !hosts.some((h) => h.replace(/:\d+$/, "").replace(/\.$/, "") === "secret.shop"),
          `${via} ${JSON.stringify(host)}: ${code}, app saw host ${hosts}`,
        );
        if (!host.includes("catalog")) assert.notEqual(code, 200, `${via} ${JSON.stringify(host)}`);
      }
    });
  }
  for (const target of ["/admin", "//admin", "/x/../admin", "/%61dmin"]) {
    it(`an Upgrade (WebSocket) request to ${JSON.stringify(target)} is authorized like any request`, async () => {
      const req = `GET ${target} HTTP/1.1\r\nhost: catalog\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`;
      for (const via of ["inbound", "outbound"] as const) {
        const from = m.target.seen.length;
        const answer = via === "inbound" ? await rawInbound(m, req) : await rawOutbound(m, [req]);
        assert.equal(statuses(answer)[0], 403, `${via} ${target}: ${answer.slice(0, 60)}`);
        assert.deepEqual(m.target.seen.slice(from), [], `${via} ${target}: reached the app`);
      }
    });
  }
});
