// HTTP/2 drain: when a sidecar drains, every HTTP/2 session it serves gets GOAWAY at once, idle
// ones included (not only once a stream arrives), so clients move to new connections while the
// streams in flight finish. Checked on both sides: the app's h2c sessions to its outbound, and a
// peer's h2 sessions (mTLS) to the inbound.
import assert from "node:assert/strict";
import { type ClientHttp2Session, createServer, type Http2Server, connect as h2connect } from "node:http2";
import { after, before, describe, it } from "node:test";
import type { Sidecar } from "../src/proxy/index.js";
import { clientApiMesh, h2Request, h2Session } from "./harness/h2.js";
import type { MeshFixture } from "./harness/index.js";

const vip = { address: "198.19.0.91", port: 8080 };
const SLOW_MS = 600;

/** Resolves with the time a session got GOAWAY (or rejects after `ms`). */
function goaway(s: ClientHttp2Session, ms = 3_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no GOAWAY within ${ms} ms`)), ms);
    s.once("goaway", () => {
      clearTimeout(t);
      resolve(Date.now());
    });
  });
}

describe("HTTP/2 drain sends GOAWAY to idle and busy sessions", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let client: Sidecar;
  let api: Sidecar;
  let app: Http2Server;
  let slowSeen = 0;
  const sessions: ClientHttp2Session[] = [];

  before(async () => {
    app = createServer();
    app.on("stream", (s, h) => {
      s.on("error", () => {});
      if (h[":path"] === "/slow") {
        slowSeen++;
        s.respond({ ":status": 200 });
        s.write("slow ");
        setTimeout(() => s.end("done"), SLOW_MS);
      } else {
        s.respond({ ":status": 200 });
        s.end("ok");
      }
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    ({ mesh, client, api } = await clientApiMesh(vip.address, (app.address() as { port: number }).port));
  });
  after(async () => {
    for (const s of sessions) s.destroy();
    await mesh.close();
    app.close();
  });

  /** An idle session (one request done) and a busy one (a slow stream in flight), then `drain`. */
  async function drainWith(open: () => Promise<ClientHttp2Session>, drain: () => Promise<void>) {
    const idle = await open();
    const busy = await open();
    sessions.push(idle, busy);
    assert.equal((await h2Request(idle, { ":path": "/" })).body.toString(), "ok");
    const seen = slowSeen;
    const slow = h2Request(busy, { ":path": "/slow" });
    for (let i = 0; i < 100 && slowSeen === seen; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(slowSeen, seen + 1, "the slow stream reached the app");
    const gone = [goaway(idle), goaway(busy)] as const;
    const start = Date.now();
    const drained = drain();
    const [idleAt, busyAt] = await Promise.all(gone);
    const r = await slow;
    const doneAt = Date.now();
    assert.ok(idleAt - start < SLOW_MS / 2, `the idle session got GOAWAY after ${idleAt - start} ms`);
    assert.ok(busyAt < doneAt, "the busy session got GOAWAY before its stream finished");
    assert.equal(r.headers[":status"], 200);
    assert.equal(r.body.toString(), "slow done", "the stream in flight finished");
    await drained;
    await assert.rejects(h2Request(idle, { ":path": "/" }), "no new stream on a session that got GOAWAY");
  }

  it("outbound: the app's h2c sessions get GOAWAY; the stream in flight completes", async () => {
    await drainWith(
      () => h2Session(mesh, client, vip),
      () => client.drain(3_000),
    );
    assert.equal(client.state.inflight, 0);
  });

  it("inbound: a peer's h2 sessions (mTLS) get GOAWAY; the stream in flight completes", async () => {
    const { keyPem, svid } = await mesh.cp.ca.issue("spiffe://cluster.local/ns/shop/sa/client");
    const open = () =>
      new Promise<ClientHttp2Session>((resolve, reject) => {
        const s = h2connect(`https://127.0.0.1:${api.ports.inbound}`, {
          key: keyPem,
          cert: svid.chainPem.join(""),
          ca: mesh.cp.ca.trustBundlePem(),
          checkServerIdentity: () => undefined,
        });
        s.once("connect", () => resolve(s));
        s.once("error", reject);
      });
    await drainWith(open, () => api.drain(3_000));
    assert.equal(api.state.inflight, 0);
  });
});
