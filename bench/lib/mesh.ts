// bench/lib/mesh.ts: the zmesh control-plane side shared by the loopback chain benches
// (bench/chain.ts HTTP/1, bench/h2-chain.ts gRPC): a two-workload mesh (client -> server behind one
// VIP, one L7 ALLOW policy), token attestation for both workloads, and the real ControlPlane started
// in the bench process (idle once the sidecars are configured). The benches spawn the sidecars
// themselves (bench/chain-sidecar.ts) from the fields returned here.

import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { ControlPlane, TokenFileAttestor, tokenDigest } from "../../src/controlplane/index.js";

export const CP_ID = "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane";
export const BENCH_VIP = { address: "198.19.0.10" };

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** What differs between the benches' meshes: the service port and what the one policy allows. */
export interface BenchMeshSpec {
  vipPort: number;
  portName: string;
  policyName: string;
  methods: string[];
  paths: string[];
}

function meshYaml(spec: BenchMeshSpec, inboundPort: number): string {
  const list = (xs: string[]) => xs.map((x) => JSON.stringify(x)).join(", ");
  return `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: client, namespace: bench, labels: { app: client } }
spec: { address: 127.0.0.1, serviceAccount: client, labels: { app: client } }
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: { name: server, namespace: bench, labels: { app: server } }
spec: { address: 127.0.0.1, serviceAccount: server, labels: { app: server } }
---
apiVersion: v1
kind: Service
metadata: { name: server, namespace: bench }
spec:
  selector: { app: server }
  clusterIP: ${BENCH_VIP.address}
  ports: [{ name: ${spec.portName}, port: ${spec.vipPort}, targetPort: ${inboundPort} }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ${spec.policyName}, namespace: bench }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/bench/sa/client"] } }]
      to: [{ operation: { methods: [${list(spec.methods)}], paths: [${list(spec.paths)}] } }]
`;
}

export interface BenchMesh {
  /** Attestation tokens of the two workloads (the sidecars' credentials). */
  tokens: { client: string; server: string };
  /** The SidecarJob fields common to both sidecars. */
  base: {
    controlPlane: string;
    controlPlaneId: string;
    trustBundlePem: string;
    inboundPort: number;
    appPort: number;
    vip: { address: string; port: number };
  };
  /** Stops the control plane and removes its files. */
  close(): Promise<void>;
}

/** Writes the mesh config and token file to a temporary directory and starts the control plane. */
export async function startBenchMesh(
  spec: BenchMeshSpec,
  appPort: number,
  tmpPrefix: string,
): Promise<BenchMesh> {
  const dir = await mkdtemp(join(tmpdir(), tmpPrefix));
  const inboundPort = await freePort();
  await writeFile(join(dir, "mesh.yaml"), meshYaml(spec, inboundPort));
  const tokens = {
    client: randomBytes(24).toString("base64url"),
    server: randomBytes(24).toString("base64url"),
  };
  await writeFile(
    join(dir, "tokens.json"),
    JSON.stringify({
      [tokenDigest(tokens.client)]: { namespace: "bench", entry: "client" },
      [tokenDigest(tokens.server)]: { namespace: "bench", entry: "server" },
    }),
  );
  const cp = await ControlPlane.start({
    configPaths: [join(dir, "mesh.yaml")],
    listen: "127.0.0.1:0",
    attestor: new TokenFileAttestor(join(dir, "tokens.json")),
    trustDomain: "cluster.local",
    rootNamespace: "zmesh-system",
    watch: false,
    log: pino({ level: "silent" }),
  });
  return {
    tokens,
    base: {
      controlPlane: `127.0.0.1:${cp.port}`,
      controlPlaneId: CP_ID,
      trustBundlePem: cp.ca.trustBundlePem(),
      inboundPort,
      appPort,
      vip: { address: BENCH_VIP.address, port: spec.vipPort },
    },
    close: async () => {
      await cp.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
