// The local network of one mesh: a bridge with no uplink, a network namespace per workload
// instance joined to it by a veth pair, traffic capture by iptables inside each namespace,
// and host rules that keep the bridge isolated (no forwarding, only the control plane port).

import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PORTS, PROXY_UID } from "../config/index.js";
import { run, tryRun } from "./sys.js";

export interface MeshNet {
  mesh: string;
  bridge: string;
  /** Third octet base of this mesh's /20 blocks in 198.18/16 (pods) and 198.19/16 (VIPs). */
  block: number;
  gateway: string;
}

export const NETNS_DIR = "/etc/netns";

export function meshNet(mesh: string, block: number): MeshNet {
  return { mesh, bridge: `zm-${mesh}`.slice(0, 15), block, gateway: `198.18.${block * 16}.1` };
}

/** Pod address i (0-based) and VIP i of a mesh. */
export function podAddress(net: MeshNet, i: number): string {
  const n = 10 + i;
  return `198.18.${net.block * 16 + Math.floor(n / 256)}.${n % 256}`;
}
export function vipAddress(net: MeshNet, i: number): string {
  const n = 10 + i;
  return `198.19.${net.block * 16 + Math.floor(n / 256)}.${n % 256}`;
}

export const netnsPrefix = (mesh: string) => `zm-${mesh}-`;
export const vethPrefix = (net: MeshNet) => `zv${net.block.toString(16)}-`;
const comment = (mesh: string) => `zmesh:${mesh}`;

function hostRules(net: MeshNet): string[][] {
  const c = ["-m", "comment", "--comment", comment(net.mesh)];
  const br = net.bridge;
  return [
    ["FORWARD", "-i", br, "!", "-o", br, ...c, "-j", "DROP"],
    ["FORWARD", "-o", br, "!", "-i", br, ...c, "-j", "DROP"],
    ["INPUT", "-i", br, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", ...c, "-j", "ACCEPT"],
    ["INPUT", "-i", br, "-p", "tcp", "--dport", String(PORTS.controlPlaneGrpc), ...c, "-j", "ACCEPT"],
    ["INPUT", "-i", br, ...c, "-j", "DROP"],
  ];
}

export async function createBridge(net: MeshNet): Promise<void> {
  await run("ip", ["link", "add", net.bridge, "type", "bridge"]);
  await run("ip", ["addr", "add", `${net.gateway}/20`, "dev", net.bridge]);
  await disableIpv6(net.bridge);
  await run("ip", ["link", "set", net.bridge, "up"]);
  // Appended in order, so the INPUT accepts come before the final drop.
  for (const r of hostRules(net)) await run("iptables", ["-A", ...r]);
}

/** iptables-restore input for a workload namespace: capture all TCP both ways, drop the rest. */
export function captureRules(): string {
  const uid = String(PROXY_UID);
  return [
    "*nat",
    ":ZMESH_INBOUND - [0:0]",
    ":ZMESH_OUTPUT - [0:0]",
    "-A PREROUTING -p tcp -j ZMESH_INBOUND",
    `-A ZMESH_INBOUND -p tcp --dport ${PORTS.proxyHealth} -j RETURN`,
    `-A ZMESH_INBOUND -p tcp --dport ${PORTS.proxyMetrics} -j RETURN`,
    `-A ZMESH_INBOUND -p tcp -j REDIRECT --to-ports ${PORTS.inboundCapture}`,
    "-A OUTPUT -p tcp -j ZMESH_OUTPUT",
    `-A ZMESH_OUTPUT -m owner --uid-owner ${uid} -j RETURN`,
    "-A ZMESH_OUTPUT -d 127.0.0.0/8 -j RETURN",
    `-A ZMESH_OUTPUT -p tcp -j REDIRECT --to-ports ${PORTS.outboundCapture}`,
    "COMMIT",
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    // A connection whose original destination was one of the proxy's own ports would be forwarded
    // by the inbound to that listener on loopback (admin /quitquitquit, or itself in a loop): never
    // (attack suite, "a stranger reaches the proxy's admin through the inbound under PERMISSIVE").
    ...[PORTS.proxyAdmin, PORTS.outboundCapture, PORTS.inboundCapture].map(
      (p) =>
        `-A INPUT -p tcp -m conntrack --ctstate DNAT --ctorigdstport ${p} -j REJECT --reject-with tcp-reset`,
    ),
    "-A INPUT -p tcp -j ACCEPT",
    "-A INPUT -j DROP",
    // The proxy's own listeners on loopback (admin, outbound, inbound) are for the proxy and root:
    // the app may not drain or quit its sidecar, nor dial its listeners directly (attack suite,
    // "loopback tricks"). Captured connections are DNAT-ed, so they still reach 15001.
    ...[`1-${PROXY_UID - 1}`, `${PROXY_UID + 1}-4294967294`].map(
      (uids) =>
        `-A OUTPUT -p tcp -d 127.0.0.0/8 -m multiport --dports ${PORTS.proxyAdmin},${PORTS.outboundCapture},${PORTS.inboundCapture} -m conntrack ! --ctstate DNAT -m owner --uid-owner ${uids} -j REJECT --reject-with tcp-reset`,
    ),
    "-A OUTPUT -o lo -j ACCEPT",
    "-A OUTPUT -d 127.0.0.0/8 -j ACCEPT",
    "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    `-A OUTPUT -m owner --uid-owner ${uid} -j ACCEPT`,
    "-A OUTPUT -j DROP",
    "COMMIT",
    "",
  ].join("\n");
}

/**
 * ip6tables-restore input for every namespace of a mesh: the mesh is IPv4 only and iptables captures
 * IPv4 only, so IPv6 (link-local addresses appear on every veth by themselves) would go around the
 * sidecars. Only loopback is left; IPv6 is also switched off on eth0 (attack suite, "IPv6").
 */
export function ipv6Rules(): string {
  return [
    "*filter",
    ":INPUT DROP [0:0]",
    ":FORWARD DROP [0:0]",
    ":OUTPUT DROP [0:0]",
    "-A INPUT -i lo -j ACCEPT",
    "-A OUTPUT -o lo -j ACCEPT",
    "COMMIT",
    "",
  ].join("\n");
}

/** Switches IPv6 off on an interface of the current (or given) namespace; a kernel without IPv6 has nothing to switch off. */
async function disableIpv6(dev: string, netns?: string): Promise<void> {
  const key = `net.ipv6.conf.${dev.replaceAll(".", "/")}.disable_ipv6=1`;
  if (netns) await tryRun("ip", ["netns", "exec", netns, "sysctl", "-qw", key]);
  else await tryRun("sysctl", ["-qw", key]);
}

export interface NamespaceSpec {
  netns: string;
  veth: string;
  address: string;
  hosts: string;
  /** Install the capture rules (false for an unmeshed namespace such as the demo's intruder). */
  capture: boolean;
}

/** Whether ip6tables-restore is installed: asked once per process, not once per namespace. */
let ip6tables: Promise<boolean> | undefined;
function hasIp6tables(): Promise<boolean> {
  ip6tables ??= tryRun("ip6tables-restore", ["--version"]);
  return ip6tables;
}

export async function createNamespace(net: MeshNet, ns: NamespaceSpec): Promise<void> {
  // /etc/netns/<ns>/ files are bind-mounted over /etc by `ip netns exec`: names resolve per workload.
  const etc = join(NETNS_DIR, ns.netns);
  await mkdir(etc, { recursive: true });
  await writeFile(join(etc, "hosts"), ns.hosts);
  await writeFile(join(etc, "resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
  await run("ip", ["netns", "add", ns.netns]);
  await run("ip", ["link", "add", ns.veth, "type", "veth", "peer", "name", "eth0", "netns", ns.netns]);
  await disableIpv6(ns.veth);
  await disableIpv6("default", ns.netns);
  await disableIpv6("eth0", ns.netns);
  if (await hasIp6tables()) await run("ip", ["netns", "exec", ns.netns, "ip6tables-restore"], ipv6Rules());
  await run("ip", ["link", "set", ns.veth, "master", net.bridge, "up"]);
  await run("ip", ["-n", ns.netns, "addr", "add", `${ns.address}/20`, "dev", "eth0"]);
  await run("ip", ["-n", ns.netns, "link", "set", "lo", "up"]);
  await run("ip", ["-n", ns.netns, "link", "set", "eth0", "up"]);
  await run("ip", ["-n", ns.netns, "route", "add", "198.19.0.0/16", "via", net.gateway]);
  if (ns.capture) await run("ip", ["netns", "exec", ns.netns, "iptables-restore"], captureRules());
}

/** Names of this mesh's namespaces that exist now (found by prefix, so also after a crash). */
export async function listNamespaces(mesh: string): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]).catch(() => "");
  return out
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(netnsPrefix(mesh)));
}

export async function namespacePids(netns: string): Promise<number[]> {
  const out = await run("ip", ["netns", "pids", netns]).catch(() => "");
  return out
    .split("\n")
    .filter(Boolean)
    .map(Number)
    .filter((n) => n > 0);
}

/** Removes every network resource of the mesh that exists; safe to run on a partial mesh. */
export async function destroyNetwork(mesh: string, bridge = `zm-${mesh}`.slice(0, 15)): Promise<void> {
  for (const ns of await listNamespaces(mesh)) {
    await tryRun("ip", ["netns", "del", ns]);
    await rm(join(NETNS_DIR, ns), { recursive: true, force: true });
  }
  await tryRun("ip", ["link", "del", bridge]);
  for (const table of ["filter"]) {
    const rules = await run("iptables", ["-t", table, "-S"]).catch(() => "");
    for (const line of rules.split("\n")) {
      if (
        !line.startsWith("-A ") ||
        (!line.includes(`"${comment(mesh)}"`) && !line.includes(` ${comment(mesh)} `))
      )
        continue;
      const args =
        line
          .slice(3)
          .match(/"[^"]*"|\S+/g)
          ?.map((a) => a.replace(/^"|"$/g, "")) ?? [];
      await tryRun("iptables", ["-t", table, "-D", ...args]);
    }
  }
}

/** What of the mesh is still on the host: used by `down` to verify and by tests. */
export async function leftovers(mesh: string, bridge = `zm-${mesh}`.slice(0, 15)): Promise<string[]> {
  const found: string[] = [];
  for (const ns of await listNamespaces(mesh)) found.push(`network namespace ${ns}`);
  if (await tryRun("ip", ["link", "show", bridge])) found.push(`bridge ${bridge}`);
  const rules = await run("iptables", ["-S"]).catch(() => "");
  for (const line of rules.split("\n")) if (line.includes(comment(mesh))) found.push(`iptables rule ${line}`);
  return found;
}
