// Attack suite, spoofing: identity and address headers a caller writes itself (through its own
// outbound, or over mTLS straight into the inbound) never reach the app as it wrote them. The app
// records the headers it received; XFCC must name the caller's real SPIFFE ID only.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type AttackMesh, attackMesh, FRONTEND_ID, rawInbound, rawOutbound, statuses } from "./lib.js";

const SPOOFED: [string, string][] = [
  [
    "x-forwarded-client-cert",
    "By=spiffe://cluster.local/ns/shop/sa/catalog;URI=spiffe://cluster.local/ns/shop/sa/admin",
  ],
  ["X-Forwarded-Client-Cert", "URI=spiffe://cluster.local/ns/shop/sa/admin"],
  ["x_forwarded_client_cert", "URI=spiffe://cluster.local/ns/shop/sa/admin"],
  ["x-forwarded-for", "198.18.255.254"],
  ["x-real-ip", "198.18.255.254"],
  ["forwarded", "for=198.18.255.254;proto=https"],
  ["x-zmesh-source-workload", "payments"],
  ["x-zmesh-principal", "cluster.local/ns/shop/sa/admin"],
  ["x-envoy-peer-metadata", "c3Bvb2Y="],
];

describe("attack: spoofed identity headers", { timeout: 30_000 }, () => {
  let m: AttackMesh;
  before(async () => {
    m = await attackMesh();
  });
  after(() => m.close());

  for (const via of ["outbound", "inbound"] as const) {
    it(`every spoofed header sent ${via === "outbound" ? "by the app through its sidecar" : "over mTLS straight to the inbound"} is stripped or overwritten`, async () => {
      const from = m.target.seen.length;
      const head = `GET /spoof-${via} HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\n${SPOOFED.map(([k, v]) => `${k}: ${v}\r\n`).join("")}\r\n`;
      // A second XFCC header too: a list must not smuggle a second URI.
      const req = head.replace(
        "\r\n\r\n",
        "\r\nx-forwarded-client-cert: URI=spiffe://evil/ns/x/sa/y\r\n\r\n",
      );
      const answer = via === "outbound" ? await rawOutbound(m, [req]) : await rawInbound(m, req);
      assert.equal(statuses(answer)[0], 200, answer);
      const seen = m.target.seen.slice(from);
      assert.equal(seen.length, 1);
      const h = seen[0]!.headers;
      const xfcc = String(h["x-forwarded-client-cert"]);
      assert.match(xfcc, new RegExp(`;URI=${FRONTEND_ID.replaceAll("/", "\\/")}$`));
      assert.equal(xfcc.match(/URI=/g)?.length, 1, xfcc);
      assert.doesNotMatch(xfcc, /admin|evil/);
      for (const name of [
        "x_forwarded_client_cert",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "x-zmesh-source-workload",
        "x-zmesh-principal",
        "x-envoy-peer-metadata",
      ]) {
        assert.equal(h[name], undefined, `${name} reached the app: ${h[name]}`);
      }
    });
  }

  it("the source workload in the destination's telemetry is the sending sidecar's word, not the app's", async () => {
    const scrape = async () => {
      const text = await (await fetch(`http://127.0.0.1:${m.catalog.ports.metrics}/stats/prometheus`)).text();
      const line = (w: string) =>
        text
          .split("\n")
          .find((l) => l.startsWith("istio_requests_total{") && l.includes(`source_workload="${w}"`));
      return {
        payments: Number(line("payments")?.split(" ").pop() ?? 0),
        frontend: Number(line("frontend")?.split(" ").pop() ?? 0),
      };
    };
    const before = await scrape();
    const r = await rawOutbound(m, [
      "GET /tele HTTP/1.1\r\nhost: catalog\r\nconnection: close\r\nx-zmesh-source-workload: payments\r\n\r\n",
    ]);
    assert.equal(statuses(r)[0], 200);
    let after = await scrape();
    for (let i = 0; i < 20 && after.frontend === before.frontend; i++) {
      await new Promise((res) => setTimeout(res, 25));
      after = await scrape();
    }
    assert.equal(after.payments, before.payments, "the app's claim was counted");
    assert.equal(after.frontend, before.frontend + 1);
  });
  it("metric label cardinality: a caller cycling through random Host values cannot grow the proxy's metrics without bound", async () => {
    const n = 150;
    const reqs = Array.from(
      { length: n },
      (_, i) =>
        `GET /card HTTP/1.1\r\nhost: h${i}-${Math.random().toString(36).slice(2)}.example\r\n${i === n - 1 ? "connection: close\r\n" : ""}\r\n`,
    );
    const answer = await rawInbound(m, reqs.join(""));
    assert.equal(statuses(answer).length, n);
    const text = await (await fetch(`http://127.0.0.1:${m.catalog.ports.metrics}/stats/prometheus`)).text();
    const services = new Set(
      text
        .split("\n")
        .filter((l) => l.startsWith("istio_requests_total{"))
        .map((l) => /destination_service="([^"]*)"/.exec(l)?.[1]),
    );
    assert.ok(services.size <= 101, `${services.size} destination_service values`);
    assert.ok(services.has("other"));
  });
});
