// HTTP/1.1 conformance through both sidecars (outbound, mTLS, inbound, app): bodies in both
// framings and of several MiB both ways, 100-continue, keep-alive with pooled upstreams,
// pipelining, bodiless responses, responses framed by close, chunked responses de-chunked for
// HTTP/1.0 clients, and the request-smuggling shapes of issue 7 refused on the wire before
// anything reaches the app.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, request, type Server } from "node:http";
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import {
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  openTcp,
  proxy,
  type SeenRequest,
  serviceYaml,
} from "./harness/index.js";

const BIG = 5 * 1024 * 1024 + 123;
const bigBody = randomBytes(BIG);
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("HTTP/1.1 conformance through the mesh", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let app: Server;
  let raw: NetServer;
  let appConnections = 0;
  const seen: SeenRequest[] = [];
  const vip = { address: "198.19.0.60", port: 80 };
  const rawVip = { address: "198.19.0.61", port: 80 };

  before(async () => {
    app = createServer((req, res) => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
      const url = req.url ?? "/";
      if (url.startsWith("/echo")) {
        // No content-length: Node answers chunked, streaming the request body back.
        res.writeHead(200, { "x-request-te": req.headers["transfer-encoding"] ?? "none" });
        req.pipe(res);
      } else if (url === "/chunks") {
        // Several writes without a length: chunked to an HTTP/1.1 request, in three chunks.
        res.writeHead(200, { "content-type": "text/plain" });
        res.write("one ");
        setImmediate(() => {
          res.write("two ");
          setImmediate(() => res.end("three"));
        });
      } else if (url === "/big") {
        res.writeHead(200, { "content-length": BIG });
        res.end(bigBody);
      } else if (url.startsWith("/status/")) {
        res.writeHead(Number(url.slice(8)));
        res.end();
      } else {
        req.resume();
        req.on("end", () => res.end(`app ${req.method} ${url}`));
      }
    });
    app.on("connection", () => appConnections++);
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    // An app that frames its response by closing the connection (no length, no chunking).
    raw = createNetServer((s) => {
      s.once("data", () => s.end("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"));
      s.on("error", () => {});
    });
    await new Promise<void>((r) => raw.listen(0, "127.0.0.1", r));
    const inbound = await freePort();
    const rawInbound = await freePort();
    mesh = await controlPlane(
      entryYaml("client") +
        entryYaml("web") +
        entryYaml("old") +
        serviceYaml("web", vip.address, [[80, inbound]]) +
        serviceYaml("old", rawVip.address, [[80, rawInbound]]),
      [
        { namespace: "shop", name: "client" },
        { namespace: "shop", name: "web" },
        { namespace: "shop", name: "old" },
      ],
    );
    client = await proxy(mesh, "shop/client", { inboundPort: await freePort() });
    await proxy(mesh, "shop/web", {
      inboundPort: inbound,
      appPort: (app.address() as { port: number }).port,
    });
    await proxy(mesh, "shop/old", {
      inboundPort: rawInbound,
      appPort: (raw.address() as { port: number }).port,
    });
  });
  after(async () => {
    await mesh.close();
    app.close();
    raw.close();
  });

  /** A socket to the client's outbound port that the proxy will treat as dialled to `dst`. */
  function dial(dst: { address: string; port: number }): Socket {
    // Below Linux's ephemeral range (32768+), so the port is not taken by another connection.
    const localPort = 20_000 + Math.floor(Math.random() * 12_000);
    mesh.intents.set(localPort, dst);
    return connect({ host: "127.0.0.1", port: client.ports.outbound, localPort });
  }

  /** openTcp, again when the randomly chosen local port was taken (EADDRINUSE), as `call` does. */
  async function open(dst: { address: string; port: number }) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await openTcp(mesh, client, dst);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 5) throw e;
      }
    }
  }

  /** A request with Node's own client, through the mesh. */
  function send(
    opts: {
      method?: string;
      path: string;
      headers?: Record<string, string>;
      body?: Buffer;
      chunked?: boolean;
    },
    onRequest?: (r: ReturnType<typeof request>) => void,
  ): Promise<{ res: IncomingMessage; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const req = request(
        {
          method: opts.method ?? "GET",
          path: opts.path,
          headers: { host: "web", ...opts.headers },
          createConnection: () => dial(vip),
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on("data", (d: Buffer) => parts.push(d));
          res.on("end", () => resolve({ res, body: Buffer.concat(parts) }));
          res.on("error", reject);
        },
      );
      req.on("error", reject);
      if (onRequest) return onRequest(req);
      if (opts.body && opts.chunked) {
        // Several writes without a length: Node sends Transfer-Encoding: chunked.
        for (let i = 0; i < opts.body.length; i += 100_000) req.write(opts.body.subarray(i, i + 100_000));
        req.end();
      } else req.end(opts.body);
    });
  }

  it("relays a chunked request body and a chunked response (framing kept)", async () => {
    const body = Buffer.from("a".repeat(300_000));
    const { res, body: got } = await send({ method: "POST", path: "/echo", body, chunked: true });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers["x-request-te"], "chunked");
    assert.equal(res.headers["transfer-encoding"], "chunked");
    assert.equal(got.toString(), body.toString());
  });

  it("relays bodies over 5 MiB both ways, byte for byte", async () => {
    const up = await send({
      method: "POST",
      path: "/echo",
      body: bigBody,
      headers: { "content-length": String(BIG) },
    });
    assert.equal(up.res.statusCode, 200);
    assert.equal(up.body.length, BIG);
    assert.equal(sha(up.body), sha(bigBody));
    const down = await send({ path: "/big" });
    assert.equal(down.res.headers["content-length"], String(BIG));
    assert.equal(sha(down.body), sha(bigBody));
  });

  it("passes Expect: 100-continue and its interim response, then the body", async () => {
    let continued = false;
    const body = Buffer.from("sent after 100 Continue");
    const { res, body: got } = await send(
      {
        method: "POST",
        path: "/echo",
        headers: { expect: "100-continue", "content-length": String(body.length) },
      },
      (req) => {
        req.on("continue", () => {
          continued = true;
          req.end(body);
        });
      },
    );
    assert.ok(continued, "the client saw 100 Continue");
    assert.equal(res.statusCode, 200);
    assert.equal(got.toString(), body.toString());
  });

  it("keeps a client connection alive for several requests over one pooled upstream", async () => {
    const before = appConnections;
    const c = await open(vip);
    for (let i = 0; i < 5; i++) {
      c.write(`GET /ka/${i} HTTP/1.1\r\nhost: web\r\n\r\n`);
      const r = await c.read(new RegExp(`app GET /ka/${i}`));
      assert.match(r, /^HTTP\/1.1 200 /);
      assert.doesNotMatch(r, /connection: close/i);
    }
    c.close();
    // Five requests one after the other reuse one upstream connection to the app.
    assert.ok(appConnections - before <= 1, `app saw ${appConnections - before} new connections`);
  });

  it("answers pipelined requests in order", async () => {
    const c = await open(vip);
    c.write(
      "GET /p/1 HTTP/1.1\r\nhost: web\r\n\r\n" +
        "POST /p/2 HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\n\r\nabc" +
        "GET /p/3 HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    );
    const all = await c.closed;
    const order = [...all.matchAll(/app (GET|POST) \/p\/(\d)/g)].map((m) => m[2]);
    assert.deepEqual(order, ["1", "2", "3"]);
    assert.equal(all.match(/HTTP\/1.1 200 /g)?.length, 3);
  });

  it("relays HEAD, 204 and 304 without bodies and keeps the connection usable", async () => {
    const c = await open(vip);
    c.write("HEAD /big HTTP/1.1\r\nhost: web\r\n\r\n");
    const head = await c.read(/\r\n\r\n/);
    assert.match(head, new RegExp(`content-length: ${BIG}`, "i"));
    c.write("GET /status/204 HTTP/1.1\r\nhost: web\r\n\r\n");
    assert.match(await c.read(/\r\n\r\n/), /^HTTP\/1.1 204 /);
    c.write("GET /status/304 HTTP/1.1\r\nhost: web\r\n\r\n");
    assert.match(await c.read(/\r\n\r\n/), /^HTTP\/1.1 304 /);
    c.write("GET /after HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    const rest = await c.closed;
    // Nothing was left between the bodiless responses and this one.
    assert.match(rest, /^HTTP\/1.1 200 [\s\S]*app GET \/after$/);
  });

  it("relays a response framed by the close of the connection, then closes", async () => {
    const c = await open(rawVip);
    c.write("GET / HTTP/1.1\r\nhost: old\r\n\r\n");
    const all = await c.closed;
    assert.match(all, /^HTTP\/1.1 200 /);
    assert.match(all, /connection: close/i);
    assert.match(all, /\r\n\r\nuntil the end$/);
  });

  it("gives an HTTP/1.0 client a chunked response de-chunked and ended by the close", async () => {
    const c = await open(vip);
    c.write("GET /chunks HTTP/1.0\r\nhost: web\r\n\r\n");
    const all = await c.closed;
    const [head, body] = all.split("\r\n\r\n", 2) as [string, string];
    assert.match(head, /^HTTP\/1.1 200 /);
    assert.doesNotMatch(head, /transfer-encoding/i);
    assert.match(head, /connection: close/i);
    assert.equal(body, "one two three");
    assert.equal(all.indexOf("\r\n\r\n"), all.lastIndexOf("\r\n\r\n"), "no chunk framing left");
  });

  it("still gives an HTTP/1.1 client the chunked framing", async () => {
    const c = await open(vip);
    c.write("GET /chunks HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    const all = await c.closed;
    assert.match(all, /transfer-encoding: chunked/i);
    assert.match(all, /\r\n0\r\n\r\n$/);
  });

  it("takes absolute-form (RFC 9112 3.2.2): forwarded in origin-form, the authority as Host", async () => {
    const n = seen.length;
    const c = await open(vip);
    c.write("GET http://web:80/abs?q=1 HTTP/1.1\r\nhost: stale\r\nconnection: close\r\n\r\n");
    const all = await c.closed;
    assert.match(all, /^HTTP\/1.1 200 /);
    assert.deepEqual(
      seen.slice(n).map((s) => [s.url, s.headers.host]),
      [["/abs?q=1", "web:80"]],
    );
  });

  describe("refuses request smuggling on the wire (400, connection closed, app never asked)", () => {
    const shapes: [string, string][] = [
      [
        "CL.TE",
        "POST /s HTTP/1.1\r\nhost: web\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nX",
      ],
      [
        "two Content-Lengths",
        "POST /s HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\ncontent-length: 40\r\n\r\nabc",
      ],
      ["obfuscated TE", "POST /s HTTP/1.1\r\nhost: web\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n"],
      [
        "TE with a space before the colon",
        "POST /s HTTP/1.1\r\nhost: web\r\ntransfer-encoding : chunked\r\n\r\n",
      ],
      ["obs-fold", "GET /s HTTP/1.1\r\nhost: web\r\nx-a: 1\r\n transfer-encoding: chunked\r\n\r\n"],
      ["bare LF", "GET /s HTTP/1.1\nhost: web\n\n"],
      ["absolute-form target with userinfo", "GET http://web@other/s HTTP/1.1\r\nhost: web\r\n\r\n"],
    ];
    for (const [name, bytes] of shapes) {
      it(name, async () => {
        const n = seen.length;
        const c = await open(vip);
        c.write(bytes);
        const all = await c.closed;
        assert.match(all, /^HTTP\/1.1 400 /);
        assert.match(all, /x-zmesh-flag: BAD_REQUEST/);
        assert.doesNotMatch(all, /still open/);
        assert.equal(seen.length, n, "nothing reached the app");
      });
    }

    it("a request hidden in a body reaches the app only as body bytes", async () => {
      const hidden = "GET /admin HTTP/1.1\r\nhost: web\r\n\r\n";
      const n = seen.length;
      const c = await open(vip);
      c.write(
        `POST /echo HTTP/1.1\r\nhost: web\r\ncontent-length: ${hidden.length}\r\nconnection: close\r\n\r\n${hidden}`,
      );
      const all = await c.closed;
      assert.match(all, /^HTTP\/1.1 200 /);
      assert.ok(all.includes("GET /admin HTTP/1.1"), "echoed as body");
      assert.deepEqual(
        seen.slice(n).map((s) => s.url),
        ["/echo"],
      );
    });
  });
});
