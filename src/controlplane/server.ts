// The control plane process: the mesh CA and config delivery over gRPC (TLS, :15012). It loads
// the resource store, watches it, and pushes each connected proxy its snapshot when it changes;
// a change that fails validation is rejected and every proxy keeps its last good config.

import { watch } from "node:fs";
import { rename, writeFile } from "node:fs/promises";
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
import type { CertificateAuthority } from "../identity/index.js";
import { type AdminServer, serveAdmin } from "./admin.js";
import type { Attested, Attestor } from "./attest.js";
import { openCa, writeCaStore } from "./castore.js";
import { Registry, type RegistryOptions } from "./registry.js";

export interface ControlPlaneOptions extends RegistryOptions {
  /** Resource store: directories or files of YAML. */
  configPaths: string[];
  /** host:port to serve gRPC on; port 0 picks one. */
  listen: string;
  attestor: Attestor;
  /** Where to write the trust bundle (public) for bootstrapping proxies. */
  bundleOut?: string;
  /** Lifetime of workload certificates (the CA's default, 24 h, when absent). */
  certTtlSeconds?: number;
  /** A CA made by the caller (tests bring one whose keys they hold); else opened from caStore. */
  ca?: CertificateAuthority;
  /** CA store file and its key-encryption key; without them the CA lives in memory only. */
  caStore?: string;
  kek?: Buffer;
  /** Unix socket for the admin API the CLI uses (bundle, CA state, root rotation). */
  adminSocket?: string;
  watch?: boolean;
  log?: Logger;
}

interface Subscriber {
  who: Attested;
  key: string;
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
  private servingTimer: NodeJS.Timeout | undefined;
  private admin: AdminServer | undefined;
  /** The issuer of the last certificate signed for each workload instance. */
  private readonly issuedBy = new Map<string, string>();
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
    const ca =
      opts.ca ??
      (await openCa({
        trustDomain: opts.trustDomain,
        ...(opts.caStore ? { file: opts.caStore } : {}),
        ...(opts.kek ? { kek: opts.kek } : {}),
      }));
    const cp = new ControlPlane(opts, ca, new Registry(config, opts));
    cp.server.addService(meshCAService(), { Sign: cp.sign.bind(cp) });
    cp.server.addService(meshConfigService(), { Stream: cp.stream.bind(cp) });
    await cp.serve();
    await cp.writeBundle();
    if (opts.adminSocket) cp.admin = await serveAdmin(opts.adminSocket, cp);
    if (opts.watch !== false) cp.watchConfig();
    return cp;
  }

  get spiffeId(): string {
    return `spiffe://${this.opts.trustDomain}/ns/${this.opts.rootNamespace}/sa/zmesh-controlplane`;
  }

  /**
   * Binds the gRPC port with a fresh serving certificate from the current issuer. Called at start,
   * at half the certificate's life, and when a root rotation moves issuance: open streams keep the
   * connection they have; new connections see the new certificate.
   */
  private async serve(): Promise<void> {
    const { keyPem, svid } = await this.ca.issue(this.spiffeId);
    const creds = grpc.ServerCredentials.createSsl(
      null,
      [{ private_key: Buffer.from(keyPem), cert_chain: Buffer.from(svid.chainPem.join("")) }],
      false,
    );
    const addr = this.opts.listen || `127.0.0.1:${PORTS.controlPlaneGrpc}`;
    const bindAddr = this.port ? addr.replace(/:0$/, `:${this.port}`) : addr;
    if (this.port) this.server.unbind(bindAddr);
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(bindAddr, creds, (err, port) => (err ? reject(err) : resolve(port))),
    );
    clearTimeout(this.servingTimer);
    this.servingTimer = setTimeout(
      () => void this.serve(),
      (svid.notAfter.getTime() - Date.now()) / 2,
    ).unref();
    this.log.info(
      { listen: bindAddr, port: this.port, spiffeId: this.spiffeId, issuer: this.ca.issuerId() },
      "control plane serving",
    );
  }

  private async writeBundle(): Promise<void> {
    if (this.opts.bundleOut) {
      const tmp = `${this.opts.bundleOut}.tmp`;
      await writeFile(tmp, this.ca.trustBundlePem(), { mode: 0o644 });
      await rename(tmp, this.opts.bundleOut);
    }
  }

  private async saveCa(): Promise<void> {
    if (this.opts.caStore && this.opts.kek) await writeCaStore(this.opts.caStore, this.ca, this.opts.kek);
    await this.writeBundle();
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
        this.issuedBy.set(`${who.namespace}/${who.entry}`, this.ca.issuerId());
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
      const sub: Subscriber = {
        who,
        key: `${who.namespace}/${who.entry}`,
        call,
        sentVersion: "",
        ackedVersion: "",
        nonce: 0,
      };
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
    const snap = this.registry.snapshotFor(entry, {
      trustBundlePem: this.ca.trustBundlePem(),
      issuerId: this.ca.issuerId(),
    });
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
    this.pushAll();
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

  connectedProxies(): { proxy: string; sent: string; acked: string; issuer: string | undefined }[] {
    return [...this.subscribers].map((s) => ({
      proxy: s.key,
      sent: s.sentVersion,
      acked: s.ackedVersion,
      issuer: this.issuedBy.get(s.key),
    }));
  }

  private pushAll(): void {
    for (const sub of this.subscribers) this.push(sub);
  }

  /**
   * Waits until every proxy in `expected` (and any connected now) is connected and satisfies
   * `done`; a proxy that dropped its stream is waited for, not forgotten. Returns the late ones.
   */
  private async converge(
    expected: Set<string>,
    done: (s: Subscriber) => boolean,
    timeoutMs: number,
  ): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const byKey = new Map([...this.subscribers].map((s) => [s.key, s]));
      for (const k of byKey.keys()) expected.add(k);
      const late = [...expected].filter((k) => {
        const s = byKey.get(k);
        return !s || !done(s);
      });
      if (late.length === 0 || Date.now() >= deadline) return late;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Rotates the root in three steps, resuming from whatever step a previous run reached:
   * (1) a new root joins the trust bundle and every proxy ACKs it, then an overlap window;
   * (2) issuance moves to the new root and every proxy renews its certificate;
   * (3) the old root leaves the bundle. A step that does not converge stops the rotation there.
   */
  async rotateRoot(
    progress: (line: string) => void,
    opts: { overlapMs?: number; timeoutMs?: number } = {},
  ): Promise<boolean> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const expected = new Set([...this.subscribers].map((s) => s.key));
    const acked = (s: Subscriber) => s.ackedVersion !== "" && s.ackedVersion === s.sentVersion;
    const stopAt = (what: string, late: string[]) => {
      progress(
        `stopped: ${late.length} proxies did not ${what} within ${timeoutMs / 1000} s (${late.join(", ")}); run zmesh ca rotate again to resume`,
      );
      return false;
    };
    if (this.ca.rotationPhase() === "steady") {
      await this.ca.beginRootRotation();
      await this.saveCa();
      this.pushAll();
      progress(
        `1/3 new root added to the trust bundle; waiting for ${this.subscribers.size} proxies to ACK it`,
      );
      const late = await this.converge(expected, acked, timeoutMs);
      if (late.length > 0) return stopAt("ACK the new trust bundle", late);
      const overlap = opts.overlapMs ?? 2_000;
      progress(`    every proxy trusts both roots; overlap window of ${overlap / 1000} s`);
      await new Promise((r) => setTimeout(r, overlap));
    }
    if (this.ca.rotationPhase() === "overlap") {
      this.ca.activatePendingRoot();
      await this.saveCa();
      await this.serve();
      this.pushAll();
      progress(
        `2/3 issuance moved to the new root (issuer ${this.ca.issuerId()}); waiting for every proxy to renew`,
      );
      const late = await this.converge(
        expected,
        (s) => acked(s) && this.issuedBy.get(s.key) === this.ca.issuerId(),
        timeoutMs,
      );
      if (late.length > 0) return stopAt("renew from the new root", late);
    }
    if (this.ca.rotationPhase() === "activated") {
      this.ca.retireOldRoots();
      await this.saveCa();
      this.pushAll();
      progress("3/3 old root retired; waiting for every proxy to ACK the new trust bundle");
      const late = await this.converge(expected, acked, timeoutMs);
      if (late.length > 0) return stopAt("ACK the final trust bundle", late);
    }
    progress("root rotation complete: one root, every proxy renewed from it");
    return true;
  }

  async close(): Promise<void> {
    this.watcher?.close();
    clearTimeout(this.reloadTimer);
    clearTimeout(this.servingTimer);
    await this.admin?.close();
    for (const s of this.subscribers) s.call.end();
    this.server.forceShutdown();
  }
}
