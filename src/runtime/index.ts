// runtime: the local runtime. A network namespace per workload on an isolated bridge, iptables
// capture, a supervisor per mesh that runs and restarts the control plane, sidecars and apps;
// `up`, `down`, `exec`, `status`, `apply`, `delete`, `get`, `logs`, `why`.

export { caStoreFile, controlPlaneAdmin, dataDir, kekFile, proxyAdmin } from "./ca.js";
export { type CaptureReport, scanPcap, startCapture } from "./capture.js";
export {
  type Exchange,
  explainEntry,
  formatTrace,
  type Hop,
  inertJson,
  type Trace,
  traceRequest,
} from "./explain.js";
export { applyResources, deleteResources, type LiveResult } from "./live.js";
export { followLog, logPath, readLog } from "./logs.js";
export {
  type AccessEntry,
  addUnmeshed,
  appLog,
  down,
  exec,
  execArgv,
  openMesh,
  proxyLog,
  type UpOptions,
  up,
} from "./mesh.js";
export { leftovers, listNamespaces } from "./network.js";
export { alive, zmeshPids } from "./processes.js";
export {
  checkMeshName,
  findInstance,
  type Instance,
  loadState,
  type MeshState,
  type Processes,
  type ProcRecord,
  readProcesses,
  stateRoot,
} from "./state.js";
export { type MeshStatus, meshStatus, type WorkloadStatus } from "./status.js";
export {
  type Change,
  getResources,
  KINDS,
  LIVE_KINDS,
  type Rollout,
  type StoredDoc,
} from "./store.js";
export { BACKOFF, Supervisor } from "./supervisor.js";
export { checkPrerequisites } from "./sys.js";
