// UpstreamPool's idle bound: a released connection is reused while idle, and closed by the sweep
// once idle for longer than its pool's idle time: IDLE_MS for apps, longer (meshPoolIdleMs) for
// pools towards other sidecars, whose own idle bound is known, so bursts do not redo handshakes.
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { IDLE_MS, meshPoolIdleMs, type Upstream, UpstreamPool } from "./pool.js";

/** A pool whose dials succeed at once with in-memory sockets; `dialled` counts them. */
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
});
