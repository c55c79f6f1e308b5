// runtime: the local runtime. A network namespace per workload on an isolated bridge, iptables
// capture, the control plane and sidecars as processes; `up`, `down`, `exec`.
export {
  addUnmeshed,
  down,
  exec,
  execArgv,
  findInstance,
  type Instance,
  loadState,
  type MeshState,
  stateRoot,
  up,
  type UpOptions,
} from "./mesh.js";
export { type CaptureReport, scanPcap, startCapture } from "./capture.js";
export { leftovers } from "./network.js";
export { type AccessEntry, appLog, proxyLog } from "./mesh.js";
export { zmeshPids } from "./processes.js";
export { checkPrerequisites } from "./sys.js";
