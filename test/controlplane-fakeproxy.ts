// A fake proxy for control-plane tests and the scale benchmark: the config stream of a real proxy
// (TLS to the control plane's SPIFFE ID, bootstrap credential, the version it holds first, ACK or
// NACK each push, reconnect with backoff) without the data plane, so thousands fit in one process.

import * as grpc from "@grpc/grpc-js";
import {
  AUTH_METADATA,
  type ConfigAck,
  type ConfigPush,
  type HeldServices,
  MeshConfigClient,
  parseSnapshot,
} from "../src/api/index.js";
import { spiffeIdFromCertDer } from "../src/identity/index.js";

export interface FakeProxyOptions {
  address: string;
  trustBundlePem: string;
  credential: string;
  controlPlaneId?: string;
  /** Parse and check each snapshot as a real proxy does; off keeps a benchmark's client side light. */
  parse?: boolean;
  /** Keep the last good snapshot's JSON text in `last` (services filled in when a push left them out). */
  keep?: boolean;
  /** Returns a NACK reason for a push, or undefined to ACK it. */
  nack?: (push: ConfigPush) => string | undefined;
  /** The version it holds when it first connects (a proxy reconnecting after a blip). */
  applied?: string;
  /** HTTP/2 flow-control window (bytes) the proxy grants; grpc-js's default is 64 KiB. */
  flowControlWindow?: number;
}

export interface Received {
  version: string;
  bytes: number;
  at: number;
  /** The push carried the services list (known when parsing or keeping; else true). */
  withServices: boolean;
}

export class FakeProxy {
  /** The version ACKed last (what this proxy enforces). */
  applied = "";
  readonly received: Received[] = [];
  connected = false;
  /** The last snapshot's JSON text, when kept. */
  last: string | undefined;
  /** The services of the last good snapshot (when parsing), for pushes that leave them out. */
  private held: HeldServices | undefined;
  private readonly client: grpc.Client & Record<string, unknown>;
  private call: grpc.ClientDuplexStream<ConfigAck, ConfigPush> | undefined;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  private backoff = 100;
  private waiters: (() => void)[] = [];

  constructor(private readonly opts: FakeProxyOptions) {
    this.applied = opts.applied ?? "";
    const expected = opts.controlPlaneId ?? "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane";
    const ssl = grpc.credentials.createSsl(Buffer.from(opts.trustBundlePem), null, null, {
      checkServerIdentity: (_host, cert) => {
        const id = spiffeIdFromCertDer(cert.raw);
        return id === expected ? undefined : new Error(`control plane presented ${id}`);
      },
    });
    const callCreds = grpc.credentials.createFromMetadataGenerator((_p, cb) => {
      const md = new grpc.Metadata();
      md.set(AUTH_METADATA, `Bearer ${opts.credential}`);
      cb(null, md);
    });
    const Cfg = MeshConfigClient();
    this.client = new Cfg(opts.address, grpc.credentials.combineChannelCredentials(ssl, callCreds), {
      "grpc.ssl_target_name_override": "zmesh-controlplane",
      "grpc.max_receive_message_length": -1,
      "grpc.use_local_subchannel_pool": 1,
      ...(opts.flowControlWindow ? { "grpc-node.flow_control_window": opts.flowControlWindow } : {}),
    }) as never;
  }

  start(): this {
    this.open();
    return this;
  }

  private open(): void {
    if (this.closed) return;
    const call = (this.client["Stream"] as () => grpc.ClientDuplexStream<ConfigAck, ConfigPush>)();
    this.call = call;
    call.write({ version: this.applied, nonce: "", error: "" });
    call.on("data", (push: ConfigPush) => {
      this.connected = true;
      this.backoff = 100;
      const checked = this.opts.parse || this.opts.keep;
      this.received.push({
        version: push.version,
        bytes: push.snapshotJson.length,
        at: performance.now(),
        withServices: !checked || "services" in (JSON.parse(push.snapshotJson) as object),
      });
      let error = this.opts.nack?.(push);
      if (!error && checked) {
        try {
          const snap = parseSnapshot(push.snapshotJson, this.held);
          this.held = snap;
          if (this.opts.keep) this.last = JSON.stringify(snap);
        } catch (e) {
          error = (e as Error).message;
        }
      }
      if (!error) this.applied = push.version;
      call.write({ version: this.applied, nonce: push.nonce, error: error ?? "" });
      for (const w of this.waiters.splice(0)) w();
    });
    // The control plane answers nothing to a proxy already in sync: the stream being up says it.
    call.on("metadata", () => {
      this.connected = true;
    });
    let done = false;
    const again = () => {
      if (done) return;
      done = true;
      this.connected = false;
      if (this.closed) return;
      this.retry = setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 2_000);
    };
    call.on("error", again);
    call.on("end", again);
  }

  /** Resolves when `ok()` holds, checked after each push and every 20 ms; rejects after timeoutMs. */
  async until(ok: () => boolean, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!ok()) {
      if (Date.now() > deadline) throw new Error(`fake proxy: condition not met within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 20);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.call?.cancel();
    this.client.close();
  }
}
