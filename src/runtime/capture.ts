// Watches the bytes that cross a mesh's network (tcpdump) and says whether any of them were
// plaintext HTTP: the proof that traffic between sidecars is encrypted.

import { spawn } from "node:child_process";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { PORTS } from "../config/index.js";
import { ZmeshError } from "../errors/index.js";
import type { MeshState } from "./state.js";
import { hasTool } from "./sys.js";

export interface CaptureReport {
  packets: number;
  payloadBytes: number;
  /** TLS records seen (content types 0x14-0x17 followed by version 0x0303). */
  tlsRecords: number;
  /** Plaintext HTTP request or status lines found in payloads. */
  plaintextHttp: string[];
}

const HTTP_LINE =
  /(?:^|[^A-Za-z])((?:GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) \/[^\s]* HTTP\/1\.[01]|HTTP\/1\.[01] \d{3})/g;

/** Parses a pcap (Ethernet link type) and scans each TCP payload. */
export function scanPcap(buf: Buffer): CaptureReport {
  const report: CaptureReport = { packets: 0, payloadBytes: 0, tlsRecords: 0, plaintextHttp: [] };
  if (buf.length < 24) return report;
  const le = buf.readUInt32LE(0) === 0xa1b2c3d4;
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  // Link layers: Ethernet (1), Linux cooked v1 (113) and v2 (276) as `-i any` writes them.
  const link = u32(20);
  const [hdr, protoAt] = link === 113 ? [16, 14] : link === 276 ? [20, 0] : [14, 12];
  let off = 24;
  while (off + 16 <= buf.length) {
    const incl = u32(off + 8);
    const pkt = buf.subarray(off + 16, off + 16 + incl);
    off += 16 + incl;
    report.packets++;
    if (pkt.length < hdr + 20 || pkt.readUInt16BE(protoAt) !== 0x0800) continue;
    const ip = pkt.subarray(hdr);
    const ihl = (ip[0]! & 0x0f) * 4;
    if (ip[9] !== 6) continue;
    const totalLen = ip.readUInt16BE(2);
    const tcp = ip.subarray(ihl, totalLen);
    if (tcp.length < 20) continue;
    const payload = tcp.subarray((tcp[12]! >> 4) * 4);
    if (payload.length === 0) continue;
    report.payloadBytes += payload.length;
    if (payload[0]! >= 0x14 && payload[0]! <= 0x17 && payload[1] === 0x03) report.tlsRecords++;
    for (const m of payload.toString("latin1").matchAll(HTTP_LINE)) report.plaintextHttp.push(m[1]!);
  }
  return report;
}

/**
 * Starts capturing TCP between the mesh's pods, leaving out the health checks the host makes and any
 * address in `exclude` (an unmeshed stranger, whose own plaintext is not the mesh's traffic).
 */
export async function startCapture(
  state: MeshState,
  exclude: string[] = [],
): Promise<(until?: (seen: CaptureReport) => boolean, maxMs?: number) => Promise<CaptureReport>> {
  if (!hasTool("tcpdump")) {
    throw new ZmeshError(
      "ZMESH_MISSING_TOOL",
      "tcpdump not found; install it with: apt-get install -y tcpdump",
    );
  }
  const file = join(state.stateDir, `capture-${process.pid}-${Date.now()}.pcap`);
  // A bridge device only shows frames for its own stack, not those it switches between ports
  // once it has learned their MACs, so listen on every interface, filtered to this mesh's pods.
  const pods = `${state.net.gateway.replace(/\.1$/, ".0")}/20`;
  const filter = [
    "tcp",
    "and",
    "net",
    pods,
    "and",
    "not",
    "port",
    String(PORTS.proxyHealth),
    ...exclude.flatMap((a) => ["and", "not", "host", a]),
  ];
  // --immediate-mode: without it, packets can sit in a kernel block until tcpdump exits unread.
  // -Q out: each frame once, as it leaves the port towards its destination.
  const child = spawn(
    "tcpdump",
    [
      "-Z",
      "root",
      "--immediate-mode",
      "-Q",
      "out",
      "-i",
      "any",
      "-n",
      "-s",
      "0",
      "-U",
      "-w",
      file,
      ...filter,
    ],
    {
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(
      () => reject(new ZmeshError("ZMESH_RUNTIME", "tcpdump did not start within 5 s")),
      5_000,
    );
    child.stderr.on("data", (d: Buffer) => {
      if (d.toString().includes("listening on")) {
        clearTimeout(t);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      reject(new ZmeshError("ZMESH_RUNTIME", `tcpdump exited with code ${code}`));
    });
  });
  // tcpdump stops reading at SIGINT: packets still queued in the kernel for it are lost. A caller
  // that knows what the capture must end with (`until`) waits for it to be written, within `maxMs`.
  return async (until?: (seen: CaptureReport) => boolean, maxMs = 5_000) => {
    const deadline = Date.now() + maxMs;
    while (until && Date.now() < deadline) {
      const seen = scanPcap(await readFile(file).catch(() => Buffer.alloc(0)));
      if (until(seen)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 200)); // let the last packets land
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGINT");
    await exited;
    const buf = await readFile(file);
    await rm(file, { force: true });
    return scanPcap(buf);
  };
}
