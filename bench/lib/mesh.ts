// bench/lib/mesh.ts: the zmesh control-plane side shared by the loopback chain benches
// (bench/chain.ts HTTP/1, bench/h2-chain.ts gRPC): a two-workload mesh (client -> server behind one
// VIP, one L7 ALLOW policy), token attestation for both workloads, and the real ControlPlane started
// in the bench process (idle once the sidecars are configured; test/harness/cp.ts, shared with the
// tests). The benches spawn the sidecars themselves (bench/chain-sidecar.ts) from the fields
// returned here.

import pino from "pino";
import { freePort, startControlPlane } from "../../test/harness/cp.js";

export const CP_ID = "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-controlplane";
export const BENCH_VIP = { address: "198.19.0.10" };

export { freePort };

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
  const inboundPort = await freePort();
  const local = await startControlPlane({
    yaml: meshYaml(spec, inboundPort),
    instances: [
      { namespace: "bench", name: "client" },
      { namespace: "bench", name: "server" },
    ],
    log: pino({ level: "silent" }),
    tmpPrefix,
  });
  const cp = local.cp;
  const tokens = { client: local.tokens.get("bench/client")!, server: local.tokens.get("bench/server")! };
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
    close: () => local.close(),
  };
}
