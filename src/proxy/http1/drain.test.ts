// Http1Server.drain: a connection idle between requests is closed once idle for a second; one
// whose next request arrives within that second is served (its response asks to close), not cut.
import assert from "node:assert/strict";
import { connect, createServer, type Server, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { type Http1Listener, Http1Server } from "./conn.js";

/** How each answer ends (rescue.ts's 403 body names the request id). */
const BODY_END = "(request id req-1)\n";

describe("Http1Server.drain", { timeout: 20_000 }, () => {
  let draining = false;
  const listener: Http1Listener = {
    request: (conn) => conn.reject("RBAC_DENIED", "req-1"), // a complete answer, keep-alive unless draining
    upgrade: (sock) => sock.destroy(),
    malformed: () => {},
    draining: () => draining,
    timeouts: { requestHeadersMs: 10_000, idleMs: 60_000, streamIdleMs: 300_000 },
  };
  const h1 = new Http1Server(listener);
  let server: Server;
  let port = 0;

  before(async () => {
    server = createServer((s) => h1.serve(s));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as { port: number }).port;
  });
  after(() => {
    h1.close();
    server.close();
  });

  /** A keep-alive client that has had one answer. */
  async function servedClient(): Promise<{
    sock: Socket;
    read: () => Promise<string>;
    closed: Promise<number>;
  }> {
    const sock = connect({ host: "127.0.0.1", port });
    let data = "";
    let waiter: (() => void) | undefined;
    sock.on("data", (d: Buffer) => {
      data += d.toString("latin1");
      waiter?.();
    });
    const closed = new Promise<number>((r) => sock.once("close", () => r(Date.now())));
    const read = () =>
      new Promise<string>((resolve) => {
        const check = () => {
          const end = data.indexOf(BODY_END);
          if (end >= 0) {
            const out = data.slice(0, end + BODY_END.length);
            data = data.slice(end + BODY_END.length);
            resolve(out);
          } else waiter = check;
        };
        check();
      });
    await new Promise<void>((r) => sock.once("connect", () => r()));
    sock.write("GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    assert.doesNotMatch(await read(), /connection: close/i);
    return { sock, read, closed };
  }

  it("closes an idle connection a second into the drain, and serves a request sent within it", async () => {
    const idle = await servedClient();
    const busy = await servedClient();
    draining = true;
    const start = Date.now();
    h1.drain();
    await new Promise((r) => setTimeout(r, 300));
    busy.sock.write("GET /again HTTP/1.1\r\nhost: a\r\n\r\n");
    const second = await busy.read();
    assert.match(second, /^HTTP\/1\.1 403 /);
    assert.match(second, /connection: close/i, "a response during the drain asks to close");
    const idleClosedAt = await idle.closed;
    assert.ok(idleClosedAt - start >= 900, "not before its second of idleness");
    assert.ok(idleClosedAt - start < 3_000, "closed by the drain, not by the 60 s idle bound");
    await busy.closed;
  });
});
