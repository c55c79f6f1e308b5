// Log files of a mesh (<state dir>/<mesh>/logs): each app and proxy, the control plane and the
// supervisor append there. `zmesh logs` reads them whole, by their last lines, or follows them.

import { open, stat } from "node:fs/promises";
import { ZmeshError } from "../errors/index.js";
import { findInstance, type MeshState } from "./state.js";
import { logFile } from "./supervisor.js";

/** The log of a workload's app (or its proxy), or of "controlplane" / "supervisor". */
export function logPath(state: MeshState, ref: string, proxy: boolean): string {
  if ((ref === "controlplane" || ref === "supervisor") && !state.instances.some((i) => i.workload === ref)) {
    if (proxy) throw new ZmeshError("ZMESH_USAGE", `--proxy is for workloads; ${ref} has one log`);
    return logFile(state, ref);
  }
  return logFile(state, proxy ? "proxy" : "app", findInstance(state, ref));
}

async function readRange(file: string, from: number, to: number): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(to - from);
    let off = 0;
    while (off < buf.length) {
      const { bytesRead } = await fh.read(buf, off, buf.length - off, from + off);
      if (bytesRead === 0) break;
      off += bytesRead;
    }
    return buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

/** The log's text (its last `tail` lines when given) and the byte offset it ends at. */
export async function readLog(file: string, tail?: number): Promise<{ text: string; end: number }> {
  const size = await stat(file).then(
    (s) => s.size,
    () => -1,
  );
  if (size < 0) return { text: "", end: 0 };
  let text = (await readRange(file, 0, size)).toString("utf8");
  if (tail !== undefined) {
    const lines = text.split("\n");
    if (lines.at(-1) === "") lines.pop();
    text = lines.length === 0 ? "" : `${lines.slice(-tail).join("\n")}\n`;
    if (tail === 0) text = "";
  }
  return { text, end: size };
}

/** Writes what is appended to `file` after `from` until `signal` aborts; a truncated file starts over. */
export async function followLog(
  file: string,
  from: number,
  write: (text: string) => void,
  signal: AbortSignal,
): Promise<void> {
  let offset = from;
  while (!signal.aborted) {
    const size = await stat(file).then(
      (s) => s.size,
      () => 0,
    );
    if (size < offset) offset = 0;
    if (size > offset) {
      write((await readRange(file, offset, size)).toString("utf8"));
      offset = size;
    }
    await new Promise<void>((r) => {
      const t = setTimeout(r, 200);
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(t);
          r();
        },
        { once: true },
      );
    });
  }
}
