// controlplane: the CA service, the registry of workloads and services, and per-proxy config
// snapshots pushed over a gRPC stream (versioned, ACK/NACK, last good kept).
export { type Attested, type Attestor, TokenFileAttestor, tokenDigest } from "./attest.js";
export { openCa, readCaStore, writeCaStore } from "./castore.js";
export { Registry } from "./registry.js";
export { ControlPlane, type ControlPlaneOptions } from "./server.js";
