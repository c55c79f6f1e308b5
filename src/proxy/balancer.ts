// Outbound endpoint choice: power of two choices on requests in flight (cheap, and it avoids
// both herding and slow endpoints), with passive ejection of endpoints that fail to connect.
// It owns what it learns per endpoint address (requests in flight, failures, ejections); a new
// config drops what it holds of addresses that are in no route any more (`prune`).

import type { SnapshotEndpoint } from "../api/index.js";

/** Consecutive connect failures that eject an endpoint, and for how long. */
export const EJECT_AFTER = 3;
export const EJECT_MS = 10_000;

export class Balancer {
  private readonly active = new Map<string, number>();
  private readonly failures = new Map<string, number>();
  private readonly ejectedUntil = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Two random healthy endpoints (other than `exclude`), the one with fewer requests in flight. */
  pick(endpoints: readonly SnapshotEndpoint[], exclude?: string): SnapshotEndpoint | undefined {
    // The common case, nothing ejected and nothing to leave out: no filtered copy per request.
    if (exclude === undefined && this.ejectedUntil.size === 0) return this.twoChoices(endpoints);
    const t = this.now();
    // Ejections that ran out are forgotten here, not only on a success: an endpoint ejected and
    // then removed from the config would otherwise keep every later pick off the fast path.
    for (const [address, until] of this.ejectedUntil) if (until <= t) this.ejectedUntil.delete(address);
    let healthy = endpoints.filter(
      (e) => e.address !== exclude && (this.ejectedUntil.get(e.address) ?? 0) <= t,
    );
    // Everything ejected: better to try than to fail closed on a guess.
    if (healthy.length === 0) healthy = endpoints.filter((e) => e.address !== exclude);
    return this.twoChoices(healthy);
  }

  private twoChoices(healthy: readonly SnapshotEndpoint[]): SnapshotEndpoint | undefined {
    if (healthy.length <= 1) return healthy[0];
    const a = healthy[Math.floor(Math.random() * healthy.length)]!;
    let b = healthy[Math.floor(Math.random() * (healthy.length - 1))]!;
    if (b === a) b = healthy[healthy.length - 1]!;
    return (this.active.get(a.address) ?? 0) <= (this.active.get(b.address) ?? 0) ? a : b;
  }

  started(address: string): void {
    this.active.set(address, (this.active.get(address) ?? 0) + 1);
  }

  /** `connectFailed`: the endpoint could not be reached at all (counts towards ejection). */
  finished(address: string, connectFailed: boolean): void {
    const left = (this.active.get(address) ?? 1) - 1;
    // An endpoint with nothing in flight has no entry, so endpoints gone from the config leave none.
    if (left > 0) this.active.set(address, left);
    else this.active.delete(address);
    if (!connectFailed) {
      this.failures.delete(address);
      this.ejectedUntil.delete(address); // it answered: no longer ejected (and pick's fast path is back)
      return;
    }
    const n = (this.failures.get(address) ?? 0) + 1;
    this.failures.set(address, n);
    if (n >= EJECT_AFTER) {
      this.ejectedUntil.set(address, this.now() + EJECT_MS);
      this.failures.delete(address);
    }
  }

  /**
   * Forgets the failures and ejections of addresses not in `live` (the endpoints of a new config):
   * once per config; both maps hold only endpoints that failed, so this is cheap. Requests in
   * flight keep their count until they finish (which then removes it).
   */
  prune(live: Pick<ReadonlySet<string>, "has">): void {
    for (const address of this.failures.keys()) if (!live.has(address)) this.failures.delete(address);
    for (const address of this.ejectedUntil.keys()) if (!live.has(address)) this.ejectedUntil.delete(address);
  }

  /** Endpoint addresses it holds failures or ejections of (tests, and the sidecar's counts). */
  get held(): number {
    return this.failures.size + this.ejectedUntil.size;
  }

  /** Endpoints held as ejected, expired ones not yet forgotten included (tests). */
  get ejections(): number {
    return this.ejectedUntil.size;
  }

  ejected(address: string): boolean {
    return (this.ejectedUntil.get(address) ?? 0) > this.now();
  }
}
