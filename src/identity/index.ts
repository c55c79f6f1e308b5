// Public face of the identity part: SPIFFE IDs, CSRs, the mesh CA and X509-SVID checks.
// Other parts import only from here; the files beside it are internal.

export type { CaStore, CertificateAuthorityOptions, IssuedSvid, RotationPhase } from "./ca.js";
export { CertificateAuthority, issuerIdOf } from "./ca.js";
export type { Csr } from "./csr.js";
export { generateCsr } from "./csr.js";
export { newKek, parseKek, readKekFile } from "./sealed.js";
export type { SpiffeId } from "./spiffe-id.js";
export { DEFAULT_TRUST_DOMAIN, namespaceOf, parseSpiffeId, principalOf, workloadId } from "./spiffe-id.js";
export { peerSpiffeId, spiffeIdFromCertDer, svidLeafViolations } from "./svid.js";
