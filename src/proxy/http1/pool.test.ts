// UpstreamPool's idle bound: a released connection is reused while idle, and closed by the sweep
// once idle for longer than its pool's idle time: IDLE_MS for apps, longer (meshPoolIdleMs) for
// pools towards other sidecars, whose own idle bound is known, so bursts do not redo handshakes.
// Retire and shutdown end connections without failing the exchange on them.
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { IDLE_MS, meshPoolIdleMs, type Upstream, UpstreamPool } from "./pool.js";

/** A pool whose dials succeed at once with in-memory sockets, kept in `socks` in dial order. */
function pool(idleMs?: number) {
  const socks: PassThrough[] = [];
  const p = new UpstreamPool((_onread, cb) => {
    const s = new PassThrough();
    socks.push(s);
    cb(null, s);
  }, idleMs);
  const acquire = () =>
    new Promise<Upstream>((resolve, reject) => p.acquire((e, up) => (e || !up ? reject(e) : resolve(up))));
  return { p, socks, acquire };
}

describe("UpstreamPool idle time", () => {
  it("towards other sidecars: 10 s under their idle bound, or at most half a short one", () => {
    assert.equal(meshPoolIdleMs(60_000), 50_000);
    assert.equal(meshPoolIdleMs(14_000), IDLE_MS);
    assert.equal(meshPoolIdleMs(5_000), 2_500);
    assert.equal(meshPoolIdleMs(700), 350);
  });

  it("keeps an idle connection for its pool's idle time, then the sweep closes it", async () => {
    for (const idleMs of [IDLE_MS, 50_000]) {
      const { p, socks, acquire } = pool(idleMs === IDLE_MS ? undefined : idleMs);
      const up = await acquire();
      p.release(up);
      const t = up.idleSince;
      p.sweep(t + idleMs - 500);
      assert.equal(socks[0]!.destroyed, false, `kept before ${idleMs} ms`);
      assert.equal(await acquire(), up, "and reused");
      p.release(up);
      p.sweep(up.idleSince + idleMs + 1);
      assert.equal(socks[0]!.destroyed, true, `closed after ${idleMs} ms`);
      p.close();
    }
  });

  it("retire: idle connections close now, busy ones after their exchange, and new ones are dialled", async () => {
    const { p, socks, acquire } = pool();
    const idle = await acquire();
    const busy = await acquire();
    p.release(idle);
    p.retire();
    assert.equal(socks[0]!.destroyed, true, "the idle one closed");
    assert.equal(socks[1]!.destroyed, false, "the busy one finishes its exchange");
    p.release(busy);
    assert.equal(socks[1]!.destroyed, true, "and then closes instead of going back to the pool");
    const fresh = await acquire();
    assert.equal(socks.length, 3, "a new connection was dialled");
    p.release(fresh);
    assert.equal(await acquire(), fresh, "connections made after the retirement are reused");
    p.close();
  });

  it("shutdown (endpoint gone from the config): idle connections close now, busy ones after their exchange, nothing is reused, requests still served", async () => {
    const { p, socks, acquire } = pool();
    const idle = await acquire();
    const busy = await acquire();
    p.release(idle);
    p.shutdown();
    assert.equal(idle.sock.destroyed, true, "the idle one closed now");
    assert.equal(busy.sock.destroyed, false, "the busy one finishes its exchange");
    p.release(busy);
    assert.equal(busy.sock.destroyed, true, "and then closes instead of going back to the pool");
    // A request of the old config that still reaches the pool (a retry) is served, once.
    const late = await acquire();
    assert.equal(socks.length, 3, "on a new connection");
    p.release(late);
    assert.equal(late.sock.destroyed, true, "used once");
    p.close();
  });

  it("shutdown: a request waiting for a connection (the pool at its limit) takes the next one released, with no new dial", async () => {
    const { p, socks, acquire } = pool();
    const busy: Upstream[] = [];
    for (let i = 0; i < 64; i++) busy.push(await acquire()); // the pool's limit
    let served: Upstream | undefined;
    const waiting = acquire().then((up) => {
      served = up;
      return up;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(served, undefined, "waiting");
    p.shutdown();
    p.release(busy[0]!);
    // A new dial would be checked against a config that no longer routes to this endpoint (and
    // refused as secure naming): the waiting request takes the released connection, checked at its dial.
    const up = await waiting;
    assert.equal(up, busy[0]);
    assert.equal(socks.length, 64, "no new dial");
    p.release(up);
    assert.equal(up.sock.destroyed, true, "used once");
    for (const b of busy.slice(1)) p.release(b);
    assert.equal(socks.filter((x) => !x.destroyed).length, 0, "every connection closed after its exchange");
    p.close();
  });
});
