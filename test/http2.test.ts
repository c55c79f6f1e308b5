// HTTP/2 through the mesh, in process, with Node's own http2 client and server: the app speaks
// h2c with prior knowledge to its outbound sidecar, sidecars speak h2 over mutual TLS, the
// inbound speaks h2c to the app. Large bodies both ways, interleaved streaming, trailers, resets
// passed on, policy per stream (403), identity headers, metrics, and PeerAuthentication modes.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  type ClientHttp2Session,
  constants,
  createServer,
  type Http2Server,
  connect as h2connect,
  type IncomingHttpHeaders,
} from "node:http2";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { h2Request, h2Session, sha256 } from "./harness/h2.js";
import {
  call,
  controlPlane,
  entryYaml,
  freePort,
  type MeshFixture,
  proxy,
  requestsTotal,
  scrapeMetrics,
  serviceYaml,
} from "./harness/index.js";

const BIG = 5 * 1024 * 1024;

interface H2App {
  server: Http2Server;
  port: number;
  seen: IncomingHttpHeaders[];
  /** RST_STREAM codes of streams the app saw closed before it finished them. */
  resets: number[];
  /** HTTP/2 connections the app accepted. */
  sessions: number;
}

/**
 * An h2c app: GET /big sends 5 MiB; POST /echo streams the body back as it arrives and ends with
 * a trailer holding the body's SHA-256; GET /slow answers headers and one chunk, then waits.
 */
async function h2App(): Promise<H2App> {
  const seen: IncomingHttpHeaders[] = [];
  const resets: number[] = [];
  const big = Buffer.alloc(BIG, "z");
  const server = createServer();
  const app = { server, port: 0, seen, resets, sessions: 0 };
  server.on("session", () => app.sessions++);
  server.on("stream", (s, h) => {
    seen.push(h);
    s.on("error", () => {});
    s.on("close", () => {
      if (s.rstCode !== constants.NGHTTP2_NO_ERROR) resets.push(s.rstCode);
    });
    const path = h[":path"];
    if (path === "/big") {
      s.respond({ ":status": 200, "content-type": "application/octet-stream" });
      s.end(big);
    } else if (path === "/echo") {
      s.respond({ ":status": 200, "x-app": "echo" }, { waitForTrailers: true });
      const hash = sha256Stream();
      s.on("data", (c: Buffer) => {
        hash.update(c);
        s.write(c);
      });
      s.on("end", () => s.end());
      s.on("wantTrailers", () => s.sendTrailers({ "x-body-sha256": hash.digest() }));
    } else if (path === "/bye") {
      // Answers, then ends its connection gracefully (GOAWAY): the sidecar must open a new one.
      s.respond({ ":status": 200 });
      s.end("bye");
      s.session?.close();
    } else if (path === "/reset") {
      // Starts an answer, then resets the stream: the caller must see a reset, not a clean end.
      s.respond({ ":status": 200 });
      s.write("partial");
      setTimeout(() => s.destroy(new Error("the app breaks off")), 50);
    } else if (path === "/slow") {
      s.respond({ ":status": 200 });
      s.write("first");
    } else {
      s.respond({ ":status": 200 });
      s.end(`api ${h[":method"]} ${path}`);
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  app.port = (server.address() as { port: number }).port;
  return app;
}

function sha256Stream() {
  const chunks: Buffer[] = [];
  return { update: (c: Buffer) => chunks.push(c), digest: () => sha256(Buffer.concat(chunks)) };
}

const until = async (what: string, ok: () => boolean) => {
  for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(ok(), `timed out waiting for ${what}`);
};

describe("HTTP/2 (h2c from the app, h2 between sidecars) through the mesh", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let web: Sidecar;
  let apiProxy: Sidecar;
  let api: H2App;
  let apiInbound: number;
  let session: ClientHttp2Session;
  const named = { address: "198.19.0.40", port: 8080 };
  const sniffed = { address: "198.19.0.40", port: 8081 };

  before(async () => {
    api = await h2App();
    apiInbound = await freePort();
    const yaml = `${entryYaml("web")}${entryYaml("api")}${serviceYaml("api", named.address, [
      [8080, apiInbound, "http2-api"],
      [8081, apiInbound, "web"],
    ])}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  mtls: { mode: STRICT }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: api-allow, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/web"] } }]
      to: [{ operation: { paths: ["/big", "/echo", "/slow", "/hello", "/bye", "/reset"] } }]
`;
    mesh = await controlPlane(yaml, [
      { namespace: "shop", name: "web" },
      { namespace: "shop", name: "api" },
    ]);
    web = await proxy(mesh, "shop/web", { inboundPort: await freePort() });
    apiProxy = await proxy(mesh, "shop/api", { inboundPort: apiInbound, appPort: api.port });
    session = await h2Session(mesh, web, named);
  });
  after(async () => {
    session?.destroy();
    await mesh.close();
    api.server.close();
  });

  it("GET of 5 MiB arrives whole, with the mesh's identity headers set and spoofed ones stripped", async () => {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const r = await h2Request(session, {
      ":path": "/big",
      "x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/shop/sa/admin",
      "x-zmesh-source-workload": "admin",
      traceparent,
    });
    assert.equal(r.headers[":status"], 200);
    assert.equal(r.body.length, BIG);
    assert.equal(sha256(r.body), sha256(Buffer.alloc(BIG, "z")));
    const seen = api.seen.at(-1)!;
    assert.equal(
      seen["x-forwarded-client-cert"],
      `By=spiffe://cluster.local/ns/shop/sa/api;Hash=${seen["x-forwarded-client-cert"]?.toString().match(/Hash=([0-9a-f]{64})/)?.[1]};Subject="";URI=spiffe://cluster.local/ns/shop/sa/web`,
    );
    assert.match(String(seen["x-request-id"]), /^[0-9a-f-]{36}$/);
    assert.equal(seen.traceparent, traceparent);
    assert.equal(
      seen["x-zmesh-source-workload"],
      undefined,
      "the mesh's own telemetry header does not reach the app",
    );
  });

  it("POST of 5 MiB streams back whole, and the app's trailers arrive", async () => {
    const body = randomBytes(BIG);
    const r = await h2Request(session, { ":method": "POST", ":path": "/echo" }, body);
    assert.equal(r.headers[":status"], 200);
    assert.equal(r.headers["x-app"], "echo");
    assert.equal(r.body.length, BIG);
    assert.ok(r.body.equals(body));
    assert.equal(r.trailers?.["x-body-sha256"], sha256(body));
  });

  it("request trailers reach the app, without caller-supplied identity headers", async () => {
    const req = session.request({ ":method": "POST", ":path": "/echo" }, { waitForTrailers: true });
    req.on("wantTrailers", () =>
      req.sendTrailers({
        "x-checksum": "abc",
        "x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/shop/sa/admin",
      }),
    );
    const trailers = new Promise<IncomingHttpHeaders>((r) =>
      api.server.once("stream", (s) => s.once("trailers", r)),
    );
    req.on("data", () => {});
    req.end("body");
    const t = await trailers;
    assert.equal(t["x-checksum"], "abc");
    assert.equal(t["x-forwarded-client-cert"], undefined);
    await new Promise<void>((r) => req.once("close", () => r()));
  });

  it("streams both ways: each chunk comes back before the next is sent", async () => {
    const req = session.request({ ":method": "POST", ":path": "/echo" });
    const got: string[] = [];
    let waiting: (() => void) | undefined;
    req.on("data", (c: Buffer) => {
      got.push(c.toString());
      waiting?.();
    });
    for (let i = 0; i < 5; i++) {
      const echoed = new Promise<void>((r) => {
        waiting = r;
      });
      req.write(`chunk-${i};`);
      await Promise.race([
        echoed,
        new Promise((_, rej) => setTimeout(() => rej(new Error(`chunk ${i} not echoed`)), 3_000)),
      ]);
    }
    const trailers = new Promise<IncomingHttpHeaders>((r) => req.once("trailers", r));
    req.end();
    assert.equal(got.join(""), "chunk-0;chunk-1;chunk-2;chunk-3;chunk-4;");
    assert.equal((await trailers)["x-body-sha256"], sha256(got.join("")));
  });

  it("a client reset reaches the app as a reset of its stream", async () => {
    const before = api.resets.length;
    const req = session.request({ ":path": "/slow" });
    req.on("error", () => {});
    await new Promise<void>((r) => req.once("data", () => r()));
    req.close(constants.NGHTTP2_CANCEL);
    await until("the app's stream to be reset", () => api.resets.length > before);
    assert.equal(api.resets.at(-1), constants.NGHTTP2_CANCEL);
  });

  it("an app that closes its connection after each answer (GOAWAY) gets a new one for the next request", async () => {
    const before = api.sessions;
    for (let i = 0; i < 10; i++) {
      const r = await h2Request(session, { ":path": "/bye" });
      assert.equal(r.headers[":status"], 200, `request ${i}`);
      assert.equal(r.body.toString(), "bye");
    }
    assert.ok(api.sessions - before >= 9, `the app saw ${api.sessions - before} new connections`);
  });

  it("curl with --http2-prior-knowledge gets through, speaking HTTP/2 end to end", async () => {
    for (let attempt = 0; ; attempt++) {
      const localPort = 20_000 + Math.floor(Math.random() * 40_000);
      mesh.intents.set(localPort, named);
      // Asynchronously: the proxies run in this process.
      const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
        execFile(
          "curl",
          [
            "-sS",
            "--http2-prior-knowledge",
            "--local-port",
            String(localPort),
            "-w",
            " %{http_version}",
          ].concat(["--max-time", "10", `http://127.0.0.1:${web.ports.outbound}/hello`]),
          { encoding: "utf8", timeout: 15_000 },
          (e, stdout, stderr) => resolve({ code: e ? Number(e.code ?? 1) : 0, stdout, stderr }),
        ),
      );
      // curl exit 45: the local port was taken; pick another.
      if (r.code === 45 && attempt < 5) continue;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "api GET /hello 2");
      return;
    }
  });

  it("an app's reset mid-answer reaches the client as a reset, after the bytes already sent", async () => {
    const req = session.request({ ":path": "/reset" });
    let body = "";
    let ended = false;
    req.on("data", (c: Buffer) => {
      body += c.toString();
    });
    req.on("end", () => {
      ended = true;
    });
    req.on("error", () => {});
    await new Promise<void>((r) => req.once("close", () => r()));
    assert.equal(body, "partial");
    assert.equal(ended, false, "no clean end of stream");
    assert.equal(req.rstCode, constants.NGHTTP2_INTERNAL_ERROR);
  });

  it("a port of unknown protocol detects h2c by its preface", async () => {
    const s = await h2Session(mesh, web, sniffed);
    try {
      const r = await h2Request(s, { ":path": "/hello" });
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body.toString(), "api GET /hello");
    } finally {
      s.destroy();
    }
  });

  it("each stream is authorized: a path no rule allows gets 403 with a request id, on the same connection", async () => {
    const denied = await h2Request(session, { ":path": "/admin" });
    assert.equal(denied.headers[":status"], 403);
    assert.equal(denied.headers["x-zmesh-flag"], "RBAC_DENIED");
    assert.match(denied.body.toString(), /^RBAC: access denied \(request id [0-9a-f-]{36}\)/);
    assert.ok(!api.seen.some((h) => h[":path"] === "/admin"), "the app never saw the denied request");
    // Normalization applies as for HTTP/1.1: /hello/../admin is /admin.
    assert.equal((await h2Request(session, { ":path": "/hello/../admin" })).headers[":status"], 403);
    const ok = await h2Request(session, { ":path": "/hello" });
    assert.equal(ok.headers[":status"], 200);
  });

  it("STRICT refuses plaintext h2c at the inbound: no HTTP/2 answer", async () => {
    const s = h2connect(`http://127.0.0.1:${apiInbound}`);
    const outcome = await new Promise<string>((resolve) => {
      s.on("error", (e) => resolve(`error ${e.message}`));
      s.on("close", () => resolve("closed"));
      const req = s.request({ ":path": "/hello" });
      req.on("error", () => {});
      req.on("response", (h) => resolve(`answered ${h[":status"]}`));
      setTimeout(() => resolve("no answer in 3 s"), 3_000).unref();
    });
    s.destroy();
    assert.doesNotMatch(outcome, /answered/);
  });

  it("an HTTP/1.1 h2c upgrade is refused at the inbound (its streams would skip authorization: h2c smuggling)", async () => {
    const r = await call(mesh, web, named, {
      path: "/hello",
      headers: {
        upgrade: "h2c",
        connection: "Upgrade, HTTP2-Settings",
        "http2-settings": "AAMAAABkAAQCAAAAAAIAAAAA",
      },
    });
    assert.equal(r.status, 400);
    assert.match(r.body, /^bad request/);
  });

  it("metrics carry Istio's labels for HTTP/2 requests on both sides", async () => {
    const src = await scrapeMetrics(web);
    assert.ok(
      requestsTotal(
        src,
        'reporter="source"',
        'source_workload="web"',
        'destination_workload="api"',
        'destination_service="api.shop.svc.cluster.local"',
        'request_protocol="http"',
        'response_code="200"',
        'connection_security_policy="mutual_tls"',
      ),
      src,
    );
    const dst = await scrapeMetrics(apiProxy);
    assert.ok(
      requestsTotal(
        dst,
        'reporter="destination"',
        'source_workload="web"',
        'source_principal="spiffe://cluster.local/ns/shop/sa/web"',
        'destination_principal="spiffe://cluster.local/ns/shop/sa/api"',
        'response_code="403"',
        'response_flags="RBAC_DENIED"',
      ),
      dst,
    );
    assert.ok(!dst.includes('grpc_response_status="'), "plain HTTP/2 series carry no gRPC status");
  });

  it("every stream above (resets and cancels included) was finished: nothing left in flight", async () => {
    await until(
      "streams in flight to finish",
      () => web.state.inflight === 0 && apiProxy.state.inflight === 0,
    );
  });
});

describe("HTTP/2 on a PERMISSIVE port", { timeout: 30_000 }, () => {
  let mesh: MeshFixture;
  let api: H2App;
  let apiInbound: number;

  before(async () => {
    api = await h2App();
    apiInbound = await freePort();
    mesh = await controlPlane(
      `${entryYaml("api")}${serviceYaml("api", "198.19.0.41", [[8080, apiInbound, "http2-api"]])}
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: api, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  mtls: { mode: PERMISSIVE }
`,
      [{ namespace: "shop", name: "api" }],
    );
    await proxy(mesh, "shop/api", { inboundPort: apiInbound, appPort: api.port });
  });
  after(async () => {
    await mesh.close();
    api.server.close();
  });

  it("plaintext h2c is served, without an identity for the app (a spoofed XFCC is stripped)", async () => {
    const s = h2connect(`http://127.0.0.1:${apiInbound}`);
    s.on("error", () => {});
    try {
      const r = await h2Request(s, {
        ":path": "/hello",
        "x-forwarded-client-cert": "URI=spiffe://cluster.local/ns/shop/sa/admin",
      });
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body.toString(), "api GET /hello");
      assert.equal(api.seen.at(-1)?.["x-forwarded-client-cert"], undefined);
    } finally {
      s.destroy();
    }
  });
});
