// The control plane process: the mesh CA and config delivery over gRPC (TLS, :15012). It loads
// the resource store, watches it, and pushes each connected proxy its snapshot when it changes;
// a change that fails validation is rejected and every proxy keeps its last good config.

import { watch } from "node:fs";
import { writeFile } from "node:fs/promises";
import * as grpc from "@grpc/grpc-js";
import {
  AUTH_METADATA,
  type ConfigAck,
  type ConfigPush,
  meshCAService,
  meshConfigService,
  type SignRequest,
  type SignResponse,
} from "../api/index.js";
import { loadConfig, PORTS } from "../config/index.js";
import { diagnostics, type Logger, logger } from "../diag/index.js";
import { isZmeshError } from "../errors/index.js";
import { CertificateAuthority } from "../identity/index.js";
import type { Attested, Attestor } from "./attest.js";
import { Registry, type RegistryOptions } from "./registry.js";

export interface ControlPlaneOptions extends RegistryOptions {
  /** Resource store: directories or files of YAML. */
  configPaths: string[];
  /** host:port to serve gRPC on; port 0 picks one. */
  listen: string;
  attestor: Attestor;
  /** Where to write the trust bundle (public) for bootstrapping proxies. */
  bundleOut?: string;
  /** Lifetime of workload certificates. */
  certTtlSeconds?: number;
  watch?: boolean;
  log?: Logger;
}

interface Subscriber {
  who: Attested;
  call: grpc.ServerDuplexStream<ConfigAck, ConfigPush>;
  sentVersion: string;
  ackedVersion: string;
  nonce: number;
}

export class ControlPlane {
  readonly ca: CertificateAuthority;
  port = 0;
  private registry: Registry;
  private readonly server = new grpc.Server();
  private readonly subscribers = new Set<Subscriber>();
  private readonly log: Logger;
  private readonly diag = diagnostics("controlplane");
  private watcher: ReturnType<typeof watch> | undefined;
  private reloadTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly opts: ControlPlaneOptions,
    ca: CertificateAuthority,
    registry: Registry,
  ) {
    this.ca = ca;
    this.registry = registry;
    this.log = opts.log ?? logger("controlplane");
  }

  static async start(opts: ControlPlaneOptions): Promise<ControlPlane> {
    const config = await loadConfig(opts.configPaths);
    const ca = await CertificateAuthority.create({ trustDomain: opts.trustDomain });
    const cp = new ControlPlane(opts, ca, new Registry(config, opts));
    await cp.listen();
    if (opts.bundleOut) await writeFile(opts.bundleOut, ca.trustBundlePem(), { mode: 0o644 });
    if (opts.watch !== false) cp.watchConfig();
    return cp;
  }

  private async listen(): Promise<void> {
    const id = `spiffe://${this.opts.trustDomain}/ns/${this.opts.rootNamespace}/sa/zmesh-controlplane`;
    const { keyPem, svid } = await this.ca.issue(id);
    const creds = grpc.ServerCredentials.createSsl(
      null,
      [{ private_key: Buffer.from(keyPem), cert_chain: Buffer.from(svid.chainPem.join("")) }],
      false,
    );
    this.server.addService(meshCAService(), { Sign: this.sign.bind(this) });
    this.server.addService(meshConfigService(), { Stream: this.stream.bind(this) });
    const addr = this.opts.listen || `127.0.0.1:${PORTS.controlPlaneGrpc}`;
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(addr, creds, (err, port) => (err ? reject(err) : resolve(port))),
    );
    this.log.info({ listen: addr, port: this.port, spiffeId: id }, "control plane serving");
  }

  private async authenticate(md: grpc.Metadata): Promise<Attested | undefined> {
    const cred = md.get(AUTH_METADATA)[0];
    if (typeof cred !== "string") return undefined;
    return this.opts.attestor.attest(cred);
  }

  private sign(
    call: grpc.ServerUnaryCall<SignRequest, SignResponse>,
    cb: grpc.sendUnaryData<SignResponse>,
  ): void {
    void (async () => {
      const who = await this.authenticate(call.metadata);
      if (!who) {
        this.log.warn({ peer: call.getPeer() }, "CSR refused: no valid credential");
        return cb({
          code: grpc.status.UNAUTHENTICATED,
          details: "ZMESH_UNAUTHENTICATED: no valid bootstrap credential",
        });
      }
      const entry = this.registry.entry(who.namespace, who.entry);
      if (!entry) {
        return cb({
          code: grpc.status.NOT_FOUND,
          details: `no workload instance ${who.namespace}/${who.entry} in the registry`,
        });
      }
      const expected = this.registry.spiffeIdOf(entry);
      try {
        const svid = await this.ca.signCsr(
          call.request.csrPem,
          expected,
          call.request.ttlSeconds || this.opts.certTtlSeconds,
        );
        this.diag.publish({ event: "signed", spiffeId: svid.spiffeId, serial: svid.serial });
        this.log.info(
          { spiffeId: svid.spiffeId, serial: svid.serial, notAfter: svid.notAfter },
          "certificate issued",
        );
        cb(null, { certChainPem: svid.chainPem, trustBundlePem: this.ca.trustBundlePem() });
      } catch (e) {
        const code = isZmeshError(e, "ZMESH_CSR_IDENTITY")
          ? grpc.status.PERMISSION_DENIED
          : grpc.status.INVALID_ARGUMENT;
        this.log.warn(
          { caller: `${who.namespace}/${who.entry}`, expected, err: (e as Error).message },
          "CSR refused",
        );
        cb({ code, details: `${isZmeshError(e) ? e.code : "ZMESH_CSR_INVALID"}: ${(e as Error).message}` });
      }
    })();
  }

  private stream(call: grpc.ServerDuplexStream<ConfigAck, ConfigPush>): void {
    void (async () => {
      const who = await this.authenticate(call.metadata);
      if (!who) {
        call.emit("error", {
          code: grpc.status.UNAUTHENTICATED,
          details: "ZMESH_UNAUTHENTICATED: no valid bootstrap credential",
        });
        return;
      }
      const sub: Subscriber = { who, call, sentVersion: "", ackedVersion: "", nonce: 0 };
      this.subscribers.add(sub);
      const drop = () => this.subscribers.delete(sub);
      call.on("cancelled", drop);
      call.on("error", drop);
      call.on("end", () => {
        drop();
        call.end();
      });
      call.on("data", (ack: ConfigAck) => {
        if (ack.nonce !== String(sub.nonce)) return; // an answer to an older push
        if (ack.error) {
          this.log.warn(
            { proxy: `${who.namespace}/${who.entry}`, version: sub.sentVersion, reason: ack.error },
            "config NACKed",
          );
        } else {
          sub.ackedVersion = ack.version;
          this.diag.publish({ event: "ack", proxy: `${who.namespace}/${who.entry}`, version: ack.version });
        }
      });
      this.push(sub);
    })();
  }

  private push(sub: Subscriber): void {
    const entry = this.registry.entry(sub.who.namespace, sub.who.entry);
    if (!entry) {
      sub.call.emit("error", {
        code: grpc.status.NOT_FOUND,
        details: `workload instance ${sub.who.entry} was removed`,
      });
      this.subscribers.delete(sub);
      return;
    }
    const snap = this.registry.snapshotFor(entry);
    if (snap.version === sub.sentVersion) return;
    sub.sentVersion = snap.version;
    sub.nonce++;
    sub.call.write({ version: snap.version, nonce: String(sub.nonce), snapshotJson: JSON.stringify(snap) });
  }

  /** Reloads the store; on any problem keeps the last good registry and reports why. */
  async reload(): Promise<boolean> {
    try {
      const config = await loadConfig(this.opts.configPaths);
      this.registry = new Registry(config, this.opts);
    } catch (e) {
      this.log.error(
        { err: (e as Error).message },
        "configuration change rejected; proxies keep their last good config",
      );
      return false;
    }
    for (const sub of this.subscribers) this.push(sub);
    this.log.info({ proxies: this.subscribers.size }, "configuration reloaded");
    return true;
  }

  private watchConfig(): void {
    for (const p of this.opts.configPaths) {
      this.watcher = watch(p, { recursive: true }, () => {
        clearTimeout(this.reloadTimer);
        this.reloadTimer = setTimeout(() => void this.reload(), 50);
      });
    }
  }

  connectedProxies(): { proxy: string; sent: string; acked: string }[] {
    return [...this.subscribers].map((s) => ({
      proxy: `${s.who.namespace}/${s.who.entry}`,
      sent: s.sentVersion,
      acked: s.ackedVersion,
    }));
  }

  async close(): Promise<void> {
    this.watcher?.close();
    clearTimeout(this.reloadTimer);
    for (const s of this.subscribers) s.call.end();
    this.server.forceShutdown();
  }
}
