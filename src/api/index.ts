// api: the control plane's wire contract (gRPC services and the snapshot schema), the one
// thing the control plane and the proxy both depend on.
export * from "./proto.js";
export * from "./snapshot.js";
