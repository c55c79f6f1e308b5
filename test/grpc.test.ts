// gRPC through the mesh, in process, with @grpc/grpc-js on both ends (messages are raw bytes, so
// no .proto is needed): unary, server streaming, bidirectional streaming with custom trailing
// metadata, non-OK statuses passed through, 4 MiB messages, cancellation, authorization per
// method path (`/pkg.Svc/Method`), PERMISSION_DENIED / UNAUTHENTICATED / UNAVAILABLE from the
// mesh, and gRPC labels on the metrics.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, generateKeyPair } from "jose";
import type { Sidecar } from "../src/proxy/index.js";
import { formatTrace, pairExchanges } from "../src/runtime/explain.js";
import type { AccessEntry } from "../src/runtime/mesh.js";
import { fallbackIntent } from "./harness/h2.js";
import {
  controlPlane,
  entryYaml,
  freePort,
  logLines,
  type MeshFixture,
  proxy,
  requestsTotal,
  scrapeMetrics,
  serviceYaml,
} from "./harness/index.js";

const bytes = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const method = (path: string, requestStream: boolean, responseStream: boolean) => ({
  path,
  requestStream,
  responseStream,
  requestSerialize: bytes.serialize,
  requestDeserialize: bytes.deserialize,
  responseSerialize: bytes.serialize,
  responseDeserialize: bytes.deserialize,
});
const ECHO = {
  Unary: method("/shop.Echo/Unary", false, false),
  Count: method("/shop.Echo/Count", false, true),
  Chat: method("/shop.Echo/Chat", true, true),
} as const;
const ADMIN = {
  Reset: method("/shop.Admin/Reset", false, false),
  Status: method("/shop.Admin/Status", false, false),
} as const;
const Echo = grpc.makeGenericClientConstructor(ECHO, "Echo");
const Admin = grpc.makeGenericClientConstructor(ADMIN, "Admin");
const UNLIMITED = { "grpc.max_receive_message_length": -1, "grpc.max_send_message_length": -1 };

interface GrpcApp {
  server: grpc.Server;
  port: number;
  /** Method paths the app was called with. */
  calls: string[];
  cancelled: number;
  metadata: grpc.Metadata[];
}

/**
 * The app: Unary echoes (a request "fail:N" answers status N instead, with a trailer); Count
 * streams N messages; Chat echoes each message and ends with `x-count` in its trailers.
 */
async function grpcApp(): Promise<GrpcApp> {
  const app: GrpcApp = { server: new grpc.Server(UNLIMITED), port: 0, calls: [], cancelled: 0, metadata: [] };
  const seen = (call: { getPath(): string; metadata: grpc.Metadata }) => {
    app.calls.push(call.getPath());
    app.metadata.push(call.metadata);
  };
  app.server.addService(ECHO, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      seen(call);
      const text = call.request.toString("latin1", 0, 16);
      const trailer = new grpc.Metadata();
      trailer.set("x-trailer", "unary");
      if (text.startsWith("fail:")) {
        return cb({ code: Number(text.slice(5)), details: "the app says no", metadata: trailer }, null);
      }
      cb(null, call.request, trailer);
    },
    Count: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      seen(call);
      const n = Number(call.request.toString());
      call.on("cancelled", () => app.cancelled++);
      let i = 0;
      const next = () => {
        if (call.cancelled) return;
        if (i === n) return void call.end();
        call.write(Buffer.from(`msg-${i++}`));
        setTimeout(next, n > 100 ? 10 : 0);
      };
      next();
    },
    Chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      seen(call);
      let count = 0;
      call.on("data", (m: Buffer) => {
        count++;
        call.write(Buffer.concat([Buffer.from("echo:"), m]));
      });
      call.on("end", () => {
        const t = new grpc.Metadata();
        t.set("x-count", String(count));
        call.end(t);
      });
    },
  });
  app.server.addService(ADMIN, {
    Reset: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      seen(call);
      cb(null, Buffer.from("reset"));
    },
    Status: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      seen(call);
      cb(null, Buffer.from("fine"));
    },
  });
  app.port = await new Promise<number>((resolve, reject) =>
    app.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  return app;
}

type Unary = (
  req: Buffer,
  md: grpc.Metadata,
  cb: (e: grpc.ServiceError | null, r?: Buffer) => void,
) => grpc.ClientUnaryCall;

function unary(client: grpc.Client, name: string, req: Buffer, md = new grpc.Metadata()) {
  return new Promise<{ err: grpc.ServiceError | null; reply?: Buffer; trailers?: grpc.Metadata }>(
    (resolve) => {
      let trailers: grpc.Metadata | undefined;
      const call = (client as unknown as Record<string, Unary>)[name]!.call(client, req, md, (err, reply) =>
        // The status event (with trailers) comes after the callback; wait a tick for it.
        setImmediate(() => resolve({ err, ...(reply ? { reply } : {}), ...(trailers ? { trailers } : {}) })),
      );
      call.on("status", (s: grpc.StatusObject) => {
        trailers = s.metadata;
      });
    },
  );
}

describe("gRPC through the mesh (grpc-js client and server)", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let web: Sidecar;
  let apiProxy: Sidecar;
  let api: GrpcApp;
  let echo: grpc.Client;
  let admin: grpc.Client;
  let undo: () => void;
  const vip = { address: "198.19.0.50", port: 9090 };
  const ghostVip = { address: "198.19.0.51", port: 9090 };
  // Runs as the ghost's identity, but its port leads to the api's sidecar: secure naming refuses it.
  const impostorVip = { address: "198.19.0.52", port: 9090 };
  let badToken: string;

  before(async () => {
    api = await grpcApp();
    const apiInbound = await freePort();
    const ghostInbound = await freePort();
    const { publicKey } = await generateKeyPair("ES256");
    const jwk = { ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" };
    // Well-formed, signed by no key the RequestAuthentication trusts.
    const other = await generateKeyPair("ES256");
    const { SignJWT } = await import("jose");
    badToken = await new SignJWT({ sub: "mallory" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer("https://issuer.test")
      .setExpirationTime("5m")
      .sign(other.privateKey);
    const yaml = `${entryYaml("web")}${entryYaml("api")}${entryYaml("ghost")}${serviceYaml(
      "api",
      vip.address,
      [[9090, apiInbound, "grpc-api"]],
    )}${serviceYaml("ghost", ghostVip.address, [[9090, ghostInbound, "grpc"]])}${serviceYaml(
      "impostor",
      impostorVip.address,
      [[9090, apiInbound, "grpc"]],
      "ghost",
    )}
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: echo-only, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/shop/sa/web"] } }]
      to: [{ operation: { methods: ["POST"], paths: ["/shop.Echo/*", "/shop.Admin/Status"] } }]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: { name: api-jwt, namespace: shop }
spec:
  selector: { matchLabels: { app: api } }
  jwtRules:
    - issuer: https://issuer.test
      jwks: '${JSON.stringify({ keys: [jwk] })}'
`;
    mesh = await controlPlane(yaml, [
      { namespace: "shop", name: "web" },
      { namespace: "shop", name: "api" },
      { namespace: "shop", name: "ghost" },
    ]);
    web = await proxy(mesh, "shop/web", { inboundPort: await freePort() });
    apiProxy = await proxy(mesh, "shop/api", { inboundPort: apiInbound, appPort: api.port });
    // The ghost's app port has nothing listening: its sidecar cannot reach its app.
    await proxy(mesh, "shop/ghost", { inboundPort: ghostInbound, appPort: await freePort() });
    undo = fallbackIntent(mesh, vip);
    const target = `127.0.0.1:${web.ports.outbound}`;
    echo = new Echo(target, grpc.credentials.createInsecure(), UNLIMITED);
    admin = new Admin(target, grpc.credentials.createInsecure(), UNLIMITED);
  });
  after(async () => {
    echo?.close();
    admin?.close();
    undo?.();
    await mesh.close();
    api.server.forceShutdown();
  });

  it("unary: the reply and the app's custom trailing metadata arrive; the app sees the caller's identity", async () => {
    const r = await unary(echo, "Unary", Buffer.from("hello"));
    assert.equal(r.err, null);
    assert.equal(r.reply?.toString(), "hello");
    assert.deepEqual(r.trailers?.get("x-trailer"), ["unary"]);
    const md = api.metadata.at(-1)!;
    assert.match(
      String(md.get("x-forwarded-client-cert")[0]),
      /URI=spiffe:\/\/cluster\.local\/ns\/shop\/sa\/web$/,
    );
    assert.equal(md.get("x-request-id").length, 1);
  });

  it("non-OK statuses from the app pass through with their message and trailers", async () => {
    for (const code of [grpc.status.NOT_FOUND, grpc.status.RESOURCE_EXHAUSTED, grpc.status.INTERNAL]) {
      const r = await unary(echo, "Unary", Buffer.from(`fail:${code}`));
      assert.equal(r.err?.code, code);
      assert.equal(r.err?.details, "the app says no");
      assert.deepEqual(r.err?.metadata.get("x-trailer"), ["unary"]);
    }
  });

  it("a 4 MiB message goes there and back", async () => {
    const big = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
    const r = await unary(echo, "Unary", big);
    assert.equal(r.err, null);
    assert.ok(r.reply?.equals(big));
  });

  it("server streaming delivers every message in order, then OK", async () => {
    const call = (echo as unknown as Record<string, (r: Buffer) => grpc.ClientReadableStream<Buffer>>)[
      "Count"
    ]!.call(echo, Buffer.from("50"));
    const got: string[] = [];
    call.on("data", (m: Buffer) => got.push(m.toString()));
    const status = await new Promise<grpc.StatusObject>((r) => call.on("status", r));
    assert.equal(status.code, grpc.status.OK);
    assert.deepEqual(
      got,
      Array.from({ length: 50 }, (_, i) => `msg-${i}`),
    );
  });

  it("bidirectional streaming: each message echoed while the call is open, trailers at the end", async () => {
    const call = (echo as unknown as Record<string, () => grpc.ClientDuplexStream<Buffer, Buffer>>)[
      "Chat"
    ]!.call(echo);
    const replies: string[] = [];
    let wake: (() => void) | undefined;
    call.on("data", (m: Buffer) => {
      replies.push(m.toString());
      wake?.();
    });
    const status = new Promise<grpc.StatusObject>((r) => call.on("status", r));
    for (let i = 0; i < 5; i++) {
      const echoed = new Promise<void>((r) => {
        wake = r;
      });
      call.write(Buffer.from(`m${i}`));
      await Promise.race([
        echoed,
        new Promise((_, rej) => setTimeout(() => rej(new Error(`m${i} not echoed while open`)), 3_000)),
      ]);
    }
    call.end();
    const s = await status;
    assert.equal(s.code, grpc.status.OK);
    assert.deepEqual(replies, ["echo:m0", "echo:m1", "echo:m2", "echo:m3", "echo:m4"]);
    assert.deepEqual(s.metadata.get("x-count"), ["5"]);
  });

  it("a client cancel reaches the app as a cancelled call", async () => {
    const before = api.cancelled;
    const call = (echo as unknown as Record<string, (r: Buffer) => grpc.ClientReadableStream<Buffer>>)[
      "Count"
    ]!.call(echo, Buffer.from("1000"));
    call.on("error", () => {});
    await new Promise<void>((r) => call.once("data", () => r()));
    call.cancel();
    for (let i = 0; i < 100 && api.cancelled === before; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(api.cancelled, before + 1);
  });

  it("a method no policy allows gets PERMISSION_DENIED from the mesh, and the app never sees the call", async () => {
    const r = await unary(admin, "Reset", Buffer.from("x"));
    assert.equal(r.err?.code, grpc.status.PERMISSION_DENIED);
    assert.match(r.err?.details ?? "", /^RBAC: access denied \(request id [0-9a-f-]{36}\)$/);
    assert.deepEqual(r.err?.metadata.get("x-zmesh-flag"), ["RBAC_DENIED"]);
    assert.ok(!api.calls.includes("/shop.Admin/Reset"));
    // The same service's method that the policy names exactly is allowed.
    const status = await unary(admin, "Status", Buffer.from("x"));
    assert.equal(status.err, null);
    assert.equal(status.reply?.toString(), "fine");
    assert.ok(api.calls.includes("/shop.Echo/Unary"), "the allowed method's path matched the policy");
    // One access-log line per stream on each side, under the same request id.
    const id = /request id ([0-9a-f-]{36})/.exec(r.err?.details ?? "")?.[1];
    const lines = () => logLines.filter((l) => l["msg"] === "access" && l["requestId"] === id);
    for (let i = 0; i < 50 && lines().length < 2; i++) await new Promise((res) => setTimeout(res, 20));
    const inbound = lines().find((l) => l["direction"] === "inbound");
    const outbound = lines().find((l) => l["direction"] === "outbound");
    assert.equal(inbound?.["decision"], "deny");
    assert.equal(inbound?.["flag"], "RBAC_DENIED");
    assert.equal(inbound?.["grpcStatus"], "7");
    assert.equal(inbound?.["path"], "/shop.Admin/Reset");
    assert.equal(inbound?.["source"], "spiffe://cluster.local/ns/shop/sa/web");
    assert.equal(outbound?.["grpcStatus"], "7");
    assert.equal(outbound?.["http2"], true);
    // What `zmesh why` makes of these two lines: one exchange, the caller's side first, the refusal
    // at the callee's inbound with its gRPC status.
    const hop = (instance: string, l: Record<string, unknown> | undefined) => ({
      instance,
      entry: l as unknown as AccessEntry,
    });
    const report = formatTrace(id!, {
      truncated: false,
      exchanges: pairExchanges([hop("shop/api", inbound), hop("shop/web", outbound)]),
    });
    assert.equal(
      report[0],
      `request ${id}: POST /shop.Admin/Reset: refused by the sidecar of shop/api (inbound)`,
    );
    assert.match(report[1]!, /^ {2}shop\/web outbound 200 \(gRPC status 7\): sent to /);
    assert.match(report[2]!, /^ {2}shop\/api inbound 200 \(gRPC status 7\): DENIED, from shop\/web /);
  });

  it("an invalid JWT gets UNAUTHENTICATED", async () => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${badToken}`);
    const before = api.calls.length;
    const r = await unary(echo, "Unary", Buffer.from("x"), md);
    assert.equal(r.err?.code, grpc.status.UNAUTHENTICATED);
    assert.equal(api.calls.length, before);
  });

  it("an app its sidecar cannot reach gives UNAVAILABLE", async () => {
    const ghost = new Echo(`127.0.0.1:${web.ports.outbound}`, grpc.credentials.createInsecure());
    const restore = fallbackIntent(mesh, ghostVip);
    try {
      const r = await unary(ghost, "Unary", Buffer.from("x"));
      assert.equal(r.err?.code, grpc.status.UNAVAILABLE);
      assert.match(r.err?.details ?? "", /upstream connect error or disconnect \(request id/);
    } finally {
      restore();
      ghost.close();
    }
  });

  it("secure naming: a server with an identity the service may not run as gives UNAVAILABLE, and no call", async () => {
    const client = new Echo(`127.0.0.1:${web.ports.outbound}`, grpc.credentials.createInsecure());
    const restore = fallbackIntent(mesh, impostorVip);
    const before = api.calls.length;
    try {
      const r = await unary(client, "Unary", Buffer.from("x"));
      assert.equal(r.err?.code, grpc.status.UNAVAILABLE);
      assert.deepEqual(r.err?.metadata.get("x-zmesh-flag"), ["SECURE_NAMING"]);
      assert.equal(api.calls.length, before);
    } finally {
      restore();
      client.close();
    }
  });

  it("metrics: request_protocol grpc with Istio's grpc_response_status, on both sides", async () => {
    const src = await scrapeMetrics(web);
    for (const status of ["0", "5", "7", "16"])
      assert.ok(
        requestsTotal(
          src,
          'reporter="source"',
          'destination_workload="api"',
          'request_protocol="grpc"',
          'response_code="200"',
          `grpc_response_status="${status}"`,
        ),
        `${status}\n${src}`,
      );
    const dst = await scrapeMetrics(apiProxy);
    assert.ok(
      requestsTotal(
        dst,
        'reporter="destination"',
        'source_principal="spiffe://cluster.local/ns/shop/sa/web"',
        'request_protocol="grpc"',
        'response_flags="RBAC_DENIED"',
        'grpc_response_status="7"',
      ),
      dst,
    );
  });

  // Last: the drain leaves both sidecars taking no new connections.
  it("drain: a bidirectional call in flight finishes OK before the drain completes", async () => {
    const call = (echo as unknown as Record<string, () => grpc.ClientDuplexStream<Buffer, Buffer>>)[
      "Chat"
    ]!.call(echo);
    const status = new Promise<grpc.StatusObject>((r) => call.on("status", r));
    const replies: string[] = [];
    call.on("data", (m: Buffer) => replies.push(m.toString()));
    call.write(Buffer.from("before"));
    for (let i = 0; i < 100 && replies.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    let drained = false;
    const drains = Promise.all([web.drain(5_000), apiProxy.drain(5_000)]).then(() => {
      drained = true;
    });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(drained, false, "the drain waits for the call in flight");
    call.write(Buffer.from("during"));
    call.end();
    const s = await status;
    assert.equal(s.code, grpc.status.OK);
    assert.deepEqual(replies, ["echo:before", "echo:during"]);
    await drains;
    assert.equal(web.state.inflight, 0);
    assert.equal(apiProxy.state.inflight, 0);
  });
});
