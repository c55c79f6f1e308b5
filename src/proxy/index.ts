// proxy: the sidecar. Inbound mTLS termination and authorization, outbound capture with mTLS
// origination and secure naming, admin and health. It never reads config files.
export { loadAddon, type OriginalDst, originalDst } from "./origdst.js";
export { FLAGS, type Flag } from "./rescue.js";
export { Sidecar, type SidecarOptions } from "./sidecar.js";
export { lowerBackgroundThreads } from "./threads.js";
