// runtime: the local runtime. A network namespace per workload on an isolated bridge, iptables
// capture, the control plane and sidecars as processes; `up`, `down`, `exec`.

export { caStoreFile, controlPlaneAdmin, dataDir, kekFile, proxyAdmin } from "./ca.js";
export { type CaptureReport, scanPcap, startCapture } from "./capture.js";
export {
  type AccessEntry,
  addUnmeshed,
  appLog,
  down,
  exec,
  execArgv,
  findInstance,
  type Instance,
  loadState,
  type MeshState,
  proxyLog,
  stateRoot,
  type UpOptions,
  up,
} from "./mesh.js";
export { leftovers } from "./network.js";
export { zmeshPids } from "./processes.js";
export { checkPrerequisites } from "./sys.js";
