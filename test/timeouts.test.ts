// Time bounds of the HTTP/1.1 engine, in both directions (the app's outbound, a peer's mTLS into
// the inbound): a head trickled a byte at a time (slowloris) gets 408 and close; a request body
// that stalls gets 408; an upstream that never answers gets 504; one that stops mid-body is cut
// and the client's connection closed; idle keep-alive connections close. Bounds are shortened
// here (PROXY_TIMEOUTS holds the real ones); a steady slow body and a busy connection are kept.
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { connect as tlsConnect } from "node:tls";
import type { Sidecar } from "../src/proxy/index.js";
import { clientServerMesh, type MeshFixture, scrapeMetrics } from "./harness/index.js";

const TIMEOUTS = { requestHeadersMs: 400, idleMs: 700, streamIdleMs: 600 };
const vip = { address: "198.19.0.90", port: 80 };

interface Seen {
  data: string;
  /** The proxy closed the connection (false: still open when the test stopped waiting). */
  closed: boolean;
  ms: number;
}

/** A step: bytes to write, or a pause in ms. Writes stop once the connection is closed. */
type Step = string | number;

function exchange(sock: Socket, ready: "connect" | "secureConnect", steps: Step[], waitMs: number) {
  return new Promise<Seen>((resolve) => {
    let data = "";
    let closed = false;
    const start = Date.now();
    const timer = setTimeout(() => sock.destroy(), waitMs);
    sock.on("data", (d: Buffer) => {
      data += d.toString("latin1");
    });
    sock.on("error", () => {});
    sock.once("end", () => {
      closed = true;
    });
    sock.once("close", (hadError) => {
      clearTimeout(timer);
      resolve({ data, closed: closed || hadError || Date.now() - start < waitMs, ms: Date.now() - start });
    });
    sock.once(ready, async () => {
      for (const s of steps) {
        if (sock.destroyed || closed) break;
        if (typeof s === "number") await new Promise((r) => setTimeout(r, s));
        else sock.write(s);
      }
    });
  });
}

/** A trickle: `n` one-byte writes of a header value, `every` ms apart (a head that never ends). */
const trickle = (n: number, every: number): Step[] =>
  Array.from({ length: n }, (_, i) => (i % 2 === 0 ? every : "a"));

describe("HTTP/1.1 time bounds", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let web: Sidecar;
  let app: Server;
  let inbound: number;
  let creds: { key: string; cert: string; ca: string };
  const held: import("node:http").ServerResponse[] = [];

  before(async () => {
    app = createServer((req, res) => {
      if (req.url === "/upload") {
        let n = 0;
        req.on("data", (c: Buffer) => {
          n += c.length;
        });
        req.on("end", () => res.end(`got ${n}`));
      } else if (req.url === "/stall-mid") {
        res.writeHead(200, { "content-length": 100 });
        res.write("0123456789");
        held.push(res); // the other 90 bytes never come
      } else if (req.url === "/stall-head") {
        held.push(res); // no answer at all
      } else res.end("ok");
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    ({
      mesh,
      client,
      server: web,
      inbound,
    } = await clientServerMesh({
      server: "web",
      vip: vip.address,
      appPort: (app.address() as { port: number }).port,
      timeouts: { client: TIMEOUTS, server: TIMEOUTS },
    }));
    const { keyPem, svid } = await mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/client");
    creds = { key: keyPem, cert: svid.chainPem.join(""), ca: mesh.cp.ca.trustBundlePem() };
  });
  after(async () => {
    for (const r of held) r.destroy();
    await mesh.close();
    app.closeAllConnections();
    app.close();
  });

  /** Raw bytes through the client's outbound, as if its app had dialled the service. */
  const viaOutbound = (steps: Step[], waitMs = 4_000) => {
    const localPort = 20_000 + Math.floor(Math.random() * 40_000);
    mesh.intents.set(localPort, vip);
    return exchange(
      connect({ host: "127.0.0.1", port: client.ports.outbound, localPort }),
      "connect",
      steps,
      waitMs,
    );
  };
  /** Raw bytes over mutual TLS (the client's SVID) straight into the web sidecar's inbound. */
  const viaInbound = (steps: Step[], waitMs = 4_000) =>
    exchange(
      tlsConnect({
        host: "127.0.0.1",
        port: inbound,
        ...creds,
        checkServerIdentity: () => undefined,
        ALPNProtocols: ["http/1.1"],
      }),
      "secureConnect",
      steps,
      waitMs,
    );
  const directions = [
    ["outbound", viaOutbound, () => client],
    ["inbound", viaInbound, () => web],
  ] as const;

  for (const [name, via, sidecar] of directions) {
    it(`${name}: a head trickled a byte at a time gets 408 and close after requestHeadersMs`, async () => {
      const r = await via(["GET / HTTP/1.1\r\nhost: web\r\nx-slow: ", ...trickle(80, 50)]);
      assert.match(r.data, /^HTTP\/1\.1 408 Request Timeout\r\n/);
      assert.match(r.data, /x-zmesh-flag: REQUEST_TIMEOUT/);
      assert.match(r.data, /connection: close/);
      assert.ok(r.closed, "the connection is closed");
      assert.ok(r.ms >= 250 && r.ms < 2_500, `closed after ${r.ms} ms`);
    });

    it(`${name}: a request body that stalls gets 408 and close after streamIdleMs`, async () => {
      const r = await via([
        "POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\n0123456789",
        3_000,
        "more",
      ]);
      assert.match(r.data, /^HTTP\/1\.1 408 /);
      assert.match(r.data, /REQUEST_TIMEOUT/);
      assert.ok(r.closed, "the connection is closed");
      assert.ok(r.ms >= 450 && r.ms < 2_500, `answered after ${r.ms} ms`);
    });

    it(`${name}: an upstream that never answers gets 504`, async () => {
      // This sidecar's own report, counted before and after (the other direction's run also
      // passes through the inbound sidecar and may have left a 504 there).
      const reporter = name === "outbound" ? 'reporter="source"' : 'reporter="destination"';
      const count = async () => {
        let n = 0;
        for (const l of (await scrapeMetrics(sidecar())).split("\n"))
          if (
            l.startsWith("istio_requests_total{") &&
            l.includes(reporter) &&
            l.includes('response_code="504"')
          )
            n += Number(l.slice(l.lastIndexOf(" ") + 1));
        return n;
      };
      const before = await count();
      const r = await via(["GET /stall-head HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n"]);
      assert.match(r.data, /^HTTP\/1\.1 504 Gateway Timeout\r\n/);
      assert.match(r.data, /UPSTREAM_TIMEOUT/);
      assert.ok(r.ms >= 450 && r.ms < 2_500, `answered after ${r.ms} ms`);
      assert.equal(await count(), before + 1, "the 504 is in the sidecar's metrics");
    });

    it(`${name}: an upstream that stops mid-body is cut and the client's connection closed`, async () => {
      const r = await via(["GET /stall-mid HTTP/1.1\r\nhost: web\r\n\r\n"]);
      assert.match(r.data, /^HTTP\/1\.1 200 OK\r\n/);
      assert.ok(r.data.endsWith("\r\n\r\n0123456789"), "the 10 bytes sent, nothing made up");
      assert.ok(r.closed, "the connection is closed, not left hanging");
      assert.ok(r.ms >= 450 && r.ms < 2_500, `closed after ${r.ms} ms`);
    });

    it(`${name}: an idle keep-alive connection closes after idleMs; a busy one stays`, async () => {
      const req = "GET / HTTP/1.1\r\nhost: web\r\n\r\n";
      // Busy: a request every 250 ms for 2 s (well past idleMs), then it goes quiet.
      const steps: Step[] = [];
      for (let i = 0; i < 8; i++) steps.push(req, 250);
      const r = await via(steps);
      assert.equal((r.data.match(/HTTP\/1\.1 200 OK/g) ?? []).length, 8, `every request answered: ${r.data}`);
      assert.ok(r.closed, "closed once idle");
      // The last request left at 1,750 ms.
      assert.ok(r.ms >= 1_750 + 500 && r.ms < 1_750 + 2_000, `closed after ${r.ms} ms`);
    });

    it(`${name}: a slow but steady body is not cut (the bound is on silence, not on length)`, async () => {
      const steps: Step[] = [
        "POST /upload HTTP/1.1\r\nhost: web\r\ncontent-length: 10\r\nconnection: close\r\n\r\n",
      ];
      for (let i = 0; i < 10; i++) steps.push(250, "x");
      const r = await via(steps);
      assert.match(r.data, /^HTTP\/1\.1 200 OK\r\n/);
      assert.ok(r.data.endsWith("got 10"), r.data);
    });
  }
});
