// Every error a user can meet: a stable code, a one-line cause, and a line in docs/errors.md.
// A test checks that this table and the doc agree. Wire mapping lives with each listener.

export const ErrorCodes = {
  ZMESH_CONFIG_PARSE: "a configuration file is not valid YAML",
  ZMESH_CONFIG_INVALID: "a resource breaks the schema of its kind",
  ZMESH_CONFIG_UNSUPPORTED: "a resource uses a kind or field zmesh does not implement yet",
  ZMESH_CONFIG_DUPLICATE: "two resources share kind, namespace and name",
  ZMESH_SPIFFE_ID: "a SPIFFE ID breaks the SPIFFE-ID standard",
  ZMESH_SVID_INVALID: "a certificate breaks the X509-SVID rules or does not chain to the trust bundle",
  ZMESH_CSR_INVALID: "a certificate signing request is malformed or its signature does not verify",
  ZMESH_CSR_IDENTITY: "a CSR asks for an identity the caller did not prove",
  ZMESH_CA_STORE:
    "the CA material or its store is unusable (wrong key-encryption key, mismatched keys, damaged file)",
  ZMESH_UNAUTHENTICATED: "a call to the control plane carries no valid credential",
  ZMESH_SECURE_NAMING: "a server presented a SPIFFE ID the destination service may not run as",
  ZMESH_NO_ROUTE: "an outbound connection went to an address that is no service of the mesh",
  ZMESH_NOT_READY: "the proxy has no certificate or no configuration yet",
  ZMESH_NOT_ROOT: "the local runtime needs root (network namespaces, iptables)",
  ZMESH_MISSING_TOOL: "a system tool the local runtime drives is not installed",
  ZMESH_MESH_NOT_FOUND: "no local mesh of that name is running",
  ZMESH_WORKLOAD_NOT_FOUND: "no workload of that name in the mesh",
  ZMESH_RUNTIME: "the local runtime could not create or remove a network resource",
  ZMESH_RESOURCE_NOT_FOUND: "no resource of that kind and name in the mesh's store",
  ZMESH_REQUEST_NOT_FOUND: "no sidecar of the mesh logged that request id",
  ZMESH_LIVE_UNSUPPORTED:
    "a change a running mesh cannot take live (WorkloadEntries: the local runtime writes them)",
  ZMESH_USAGE: "a command got an argument or option value it does not accept",
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/** An error meant for a user: `message` is one sentence saying what, where and how to fix it. */
export class ZmeshError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ZmeshError";
    this.code = code;
  }
}

export function isZmeshError(e: unknown, code?: ErrorCode): e is ZmeshError {
  return e instanceof ZmeshError && (code === undefined || e.code === code);
}
