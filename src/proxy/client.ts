// The proxy's side of the control plane API: one config stream (ACK/NACK each push, keep the
// last good, reconnect with backoff) and CSR signing. The control plane is authenticated by
// its SPIFFE ID; the proxy by its bootstrap credential.

import * as grpc from "@grpc/grpc-js";
import {
  AUTH_METADATA,
  type ConfigAck,
  type ConfigPush,
  MeshCAClient,
  MeshConfigClient,
  type SignResponse,
} from "../api/index.js";
import { spiffeIdFromCertDer } from "../identity/index.js";

export interface ClientOptions {
  address: string;
  trustBundlePem: string;
  credential: string;
  expectedServerId: string;
}

export class ControlPlaneClient {
  private ca!: grpc.Client & Record<string, unknown>;
  private cfg!: grpc.Client & Record<string, unknown>;
  private trustBundlePem = "";
  private closed = false;
  private call: grpc.ClientDuplexStream<ConfigAck, ConfigPush> | undefined;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ClientOptions) {
    this.connect(opts.trustBundlePem);
  }

  /** (Re)creates the channels, trusting `bundle` for the control plane's certificate. */
  private connect(bundle: string): void {
    const { expectedServerId, credential, address } = this.opts;
    this.trustBundlePem = bundle;
    const ssl = grpc.credentials.createSsl(Buffer.from(bundle), null, null, {
      checkServerIdentity: (_host, cert) => {
        try {
          const id = spiffeIdFromCertDer(cert.raw);
          if (id !== expectedServerId)
            return new Error(`control plane presented ${id}, expected ${expectedServerId}`);
          return undefined;
        } catch (e) {
          return e as Error;
        }
      },
    });
    const callCreds = grpc.credentials.createFromMetadataGenerator((_p, cb) => {
      const md = new grpc.Metadata();
      md.set(AUTH_METADATA, `Bearer ${credential}`);
      cb(null, md);
    });
    const creds = grpc.credentials.combineChannelCredentials(ssl, callCreds);
    const options = {
      "grpc.ssl_target_name_override": "zmesh-controlplane",
      "grpc.keepalive_time_ms": 20_000,
    };
    const CA = MeshCAClient();
    const Cfg = MeshConfigClient();
    this.ca = new CA(address, creds, options) as never;
    this.cfg = new Cfg(address, creds, options) as never;
  }

  /**
   * Trusts a new bundle for the control plane too (a root rotation changes the control plane's
   * certificate as well). The open stream stays on the old channel until it drops; calls and
   * reconnections use the new one.
   */
  updateTrust(bundle: string): void {
    if (bundle === this.trustBundlePem || this.closed) return;
    const old = { ca: this.ca, cfg: this.cfg };
    this.connect(bundle);
    old.ca.close();
    // The old config channel closes once the stream on it ends (see subscribe).
    this.retiring.push(old.cfg);
  }

  private readonly retiring: grpc.Client[] = [];

  sign(csrPem: string, ttlSeconds = 0): Promise<SignResponse> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + 10_000);
      (this.ca["Sign"] as (...a: unknown[]) => void)(
        { csrPem, ttlSeconds },
        { deadline },
        (err: grpc.ServiceError | null, res: SignResponse) => (err ? reject(err) : resolve(res)),
      );
    });
  }

  /**
   * Keeps a config stream open. `apply` returns undefined to ACK a push or the NACK reason.
   * `onDisconnect` is told each time the stream drops (the proxy keeps enforcing meanwhile).
   */
  subscribe(apply: (push: ConfigPush) => string | undefined, onDisconnect: (why: string) => void): void {
    let backoff = 250;
    let applied = "";
    const open = () => {
      if (this.closed) return;
      for (const c of this.retiring.splice(0)) c.close();
      const call = (this.cfg["Stream"] as () => grpc.ClientDuplexStream<ConfigAck, ConfigPush>)();
      this.call = call;
      call.write({ version: applied, nonce: "", error: "" });
      call.on("data", (push: ConfigPush) => {
        backoff = 250;
        const error = apply(push);
        if (!error) applied = push.version;
        call.write({ version: applied, nonce: push.nonce, error: error ?? "" });
      });
      let done = false;
      const again = (why: string) => {
        if (done) return;
        done = true;
        if (this.closed) return;
        onDisconnect(why);
        this.retry = setTimeout(open, backoff);
        backoff = Math.min(backoff * 2, 5_000);
      };
      call.on("error", (e: grpc.ServiceError) => again(e.details || e.message));
      call.on("end", () => again("stream ended"));
    };
    open();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.call?.cancel();
    this.ca.close();
    this.cfg.close();
  }
}
