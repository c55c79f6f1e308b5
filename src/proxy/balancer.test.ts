// The outbound balancer: power of two choices prefers the less loaded endpoint, failing endpoints
// are ejected for a while and come back, and `exclude` gives a retry another endpoint.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Balancer, EJECT_AFTER, EJECT_MS } from "./balancer.js";

const eps = ["198.18.0.10", "198.18.0.11", "198.18.0.12"].map((address) => ({
  address,
  workload: "w",
  spiffeId: "spiffe://cluster.local/ns/a/sa/w",
}));

describe("Balancer", () => {
  it("never picks an endpoint with more requests in flight than the other of its pair", () => {
    const b = new Balancer();
    for (let i = 0; i < 50; i++) b.started("198.18.0.10");
    const picks = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const p = b.pick(eps)!.address;
      picks.set(p, (picks.get(p) ?? 0) + 1);
    }
    // The loaded endpoint only wins a pair against itself, which the pair never is.
    assert.equal(picks.get("198.18.0.10") ?? 0, 0);
  });

  it("ejects an endpoint after consecutive connect failures, and takes it back after a while", () => {
    let now = 0;
    const b = new Balancer(() => now);
    for (let i = 0; i < EJECT_AFTER; i++) b.finished("198.18.0.11", true);
    assert.equal(b.ejected("198.18.0.11"), true);
    for (let i = 0; i < 500; i++) assert.notEqual(b.pick(eps)!.address, "198.18.0.11");
    now += EJECT_MS + 1;
    assert.equal(b.ejected("198.18.0.11"), false);
  });

  it("a success resets the failure count", () => {
    const b = new Balancer();
    for (let i = 0; i < EJECT_AFTER - 1; i++) b.finished("198.18.0.12", true);
    b.finished("198.18.0.12", false);
    b.finished("198.18.0.12", true);
    assert.equal(b.ejected("198.18.0.12"), false);
  });

  it("excludes the endpoint a retry must avoid, and still answers when everything is ejected", () => {
    const b = new Balancer();
    for (let i = 0; i < 200; i++) assert.notEqual(b.pick(eps, "198.18.0.10")!.address, "198.18.0.10");
    const one = [eps[0]!];
    for (let i = 0; i < EJECT_AFTER; i++) b.finished(one[0]!.address, true);
    assert.equal(b.pick(one)?.address, one[0]!.address);
    assert.equal(b.pick(one, one[0]!.address), undefined);
  });

  it("forgets an ejection that ran out, also for an endpoint no longer in the config", () => {
    let now = 0;
    const b = new Balancer(() => now);
    for (let i = 0; i < EJECT_AFTER; i++) b.finished("198.18.0.99", true); // then removed from the config
    assert.equal(b.ejections, 1);
    b.pick(eps);
    assert.equal(b.ejections, 1, "still ejected while its time runs");
    now += EJECT_MS + 1;
    b.pick(eps);
    assert.equal(b.ejections, 0, "the next pick forgets it, and picks take the fast path again");
  });

  it("prune: forgets failures and ejections of addresses no config routes to, keeps the others", () => {
    const now = 0;
    const b = new Balancer(() => now);
    for (let i = 0; i < EJECT_AFTER; i++) b.finished("198.18.0.10", true); // ejected
    for (let i = 0; i < EJECT_AFTER; i++) b.finished("198.18.0.99", true); // ejected, then removed
    b.finished("198.18.0.11", true); // one failure
    b.finished("198.18.0.98", true); // one failure, then removed
    assert.equal(b.held, 4);
    b.prune(new Set(eps.map((e) => e.address)));
    assert.equal(b.held, 2, "the removed addresses are forgotten");
    assert.equal(b.ejected("198.18.0.10"), true, "a live ejected endpoint stays ejected");
    assert.equal(b.ejected("198.18.0.99"), false);
    b.finished("198.18.0.11", true);
    b.finished("198.18.0.11", true);
    assert.equal(b.ejected("198.18.0.11"), true, "a live endpoint's failures still count");
    b.prune(new Set());
    assert.equal(b.held, 0);
    assert.equal(b.ejections, 0);
  });
});
