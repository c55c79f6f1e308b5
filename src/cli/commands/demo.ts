// `zmesh demo`: brings up the bundled shop and tells a short story in plain words: normal
// traffic, then a compromised frontend trying lateral movement, then an unmeshed intruder.
// For each attempt: who called whom, what was asked, the decision and the policy behind it.

import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import {
  type AccessEntry,
  addUnmeshed,
  down,
  exec,
  explainEntry,
  findInstance,
  type MeshState,
  proxyLog,
  startCapture,
  up,
} from "../../runtime/index.js";

const EXAMPLE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..", "examples", "shop");

interface Attempt {
  from: string;
  to: string;
  method: string;
  url: string;
  what: string;
  /** Which proxy explains the outcome: the destination's inbound, or the caller's outbound. */
  explainedBy: "destination" | "source";
}

export interface Outcome {
  attempt: Attempt;
  status: number;
  allowed: boolean;
  explanation: string;
}

async function curl(state: MeshState, who: string, a: Attempt, id: string): Promise<number> {
  const r = await exec(
    state,
    who,
    [
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      "--max-time",
      "3",
      "-X",
      a.method,
      "-H",
      `x-request-id: ${id}`,
      a.url,
    ],
    { timeoutMs: 10_000 },
  );
  return Number(r.stdout.trim() || "0");
}

function explain(entries: AccessEntry[], id: string, status: number): string {
  const e = entries.find((x) => x.requestId === id && x.msg === "access");
  const why = e ? explainEntry(e) : "";
  if (why) return why;
  if (status === 0) return "connection closed: the workload only accepts mutual TLS from mesh identities";
  return "";
}

/** Plays the story on a running mesh; returns every outcome (the test checks them too). */
export async function playStory(state: MeshState, print: (l: string) => void): Promise<Outcome[]> {
  const payments = findInstance(state, "payments");
  const intruder = await addUnmeshed(state, "intruder");
  const stopCapture = await startCapture(state, [intruder.address]).catch(() => undefined);
  const outcomes: Outcome[] = [];
  let n = 0;
  const attempt = async (a: Attempt) => {
    const id = `demo-${process.pid}-${++n}`;
    const who = a.from === "intruder" ? "intruder" : a.from;
    const status = await curl(state, who, a, id);
    const logOf = a.explainedBy === "source" ? a.from : a.to;
    // Access logs are written asynchronously: wait (1 s at most) for this request's line.
    let entries: AccessEntry[] = [];
    for (let i = 0; i < 20 && a.from !== "intruder"; i++) {
      entries = await proxyLog(state, logOf);
      if (entries.some((x) => x.requestId === id && x.msg === "access")) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const explanation = explain(entries, id, status);
    const allowed = status >= 200 && status < 400;
    outcomes.push({ attempt: a, status, allowed, explanation });
    const verdict = allowed
      ? `ALLOWED ${status}`
      : status === 0
        ? "STOPPED (no connection)"
        : `STOPPED ${status} (request id ${id})`;
    print(`  ${a.from} -> ${a.to}: ${a.method} ${new URL(a.url).pathname}  ${verdict}`);
    print(`      ${a.what}`);
    if (explanation) print(`      why: ${explanation}`);
  };

  print("\n1. Normal traffic. A shopper opens the frontend; it reads the catalog and places an order,");
  print("   and orders charges payments. Every hop is mutual TLS between sidecars and is authorized.");
  const shop = await exec(state, "frontend", ["curl", "-s", "--max-time", "5", "http://localhost:8080/"], {
    timeoutMs: 10_000,
  });
  print(`  frontend answered: ${shop.stdout.trim()}`);
  await new Promise((r) => setTimeout(r, 100));
  for (const [to, path] of [
    ["catalog", "/items"],
    ["orders", "/orders"],
    ["payments", "/charge"],
  ] as const) {
    const e = (await proxyLog(state, to))
      .filter((x) => x.msg === "access" && x.direction === "inbound" && x.path === path)
      .at(-1);
    if (e) {
      const from = e.source?.split("/sa/")[1] ?? "?";
      print(
        `  ${from} -> ${to}: ${e.method} ${e.path}  ${e.decision === "allow" ? "ALLOWED" : "STOPPED"} ${e.status}  (${e.reason})`,
      );
      outcomes.push({
        attempt: {
          from,
          to,
          method: e.method ?? "",
          url: `http://${to}${path}`,
          what: "normal traffic",
          explainedBy: "destination",
        },
        status: e.status ?? 0,
        allowed: e.decision === "allow",
        explanation: e.reason ?? "",
      });
    }
  }

  print("\n2. The frontend is compromised. The attacker runs code in its pod and tries to move sideways.");
  print("   (With --keep, `zmesh why <request id>` explains any of these requests again later.)");
  await attempt({
    from: "frontend",
    to: "payments",
    method: "POST",
    url: "http://payments/charge",
    what: "charge a card directly, skipping orders",
    explainedBy: "destination",
  });
  await attempt({
    from: "frontend",
    to: "payments",
    method: "GET",
    url: "http://payments/admin",
    what: "open the payments admin page",
    explainedBy: "destination",
  });
  await attempt({
    from: "frontend",
    to: "catalog",
    method: "DELETE",
    url: "http://catalog/items",
    what: "delete the catalog (frontend may only read it)",
    explainedBy: "destination",
  });
  await attempt({
    from: "frontend",
    to: "orders",
    method: "GET",
    url: "http://orders/orders",
    what: "list everyone's orders (frontend may only POST /orders)",
    explainedBy: "destination",
  });
  await attempt({
    from: "frontend",
    to: "payments",
    method: "POST",
    url: `http://${payments.address}:8080/charge`,
    what: "skip the service and call the payments pod's app port directly",
    explainedBy: "source",
  });
  await attempt({
    from: "frontend",
    to: "payments",
    method: "GET",
    url: "http://payments:9090/",
    what: "try a port the payments service does not declare",
    explainedBy: "source",
  });

  print("\n3. An intruder on the same network, outside the mesh, probes the apps in plaintext.");
  await attempt({
    from: "intruder",
    to: "payments",
    method: "POST",
    url: `http://${payments.address}:8080/charge`,
    what: "plaintext HTTP straight to the payments pod",
    explainedBy: "destination",
  });
  await attempt({
    from: "intruder",
    to: "payments",
    method: "GET",
    url: `http://${payments.address}:15000/config_dump`,
    what: "read the sidecar's admin endpoint",
    explainedBy: "destination",
  });

  if (stopCapture) {
    const cap = await stopCapture();
    print(
      "\n4. On the wire. tcpdump watched the bridge between workloads during the story (the intruder's own packets left out).",
    );
    print(
      cap.plaintextHttp.length === 0
        ? `  ${cap.packets} packets, ${cap.payloadBytes} payload bytes, ${cap.tlsRecords} TLS records, no plaintext HTTP: every request between workloads was encrypted.`
        : `  PLAINTEXT SEEN: ${cap.plaintextHttp.slice(0, 3).join(" | ")}`,
    );
  }
  const allowed = outcomes.filter((o) => o.allowed).length;
  print(
    `\nSummary: ${allowed} allowed, ${outcomes.length - allowed} stopped. Every stop above was decided by a policy or by mutual TLS, not by the apps.`,
  );
  return outcomes;
}

export function demoCommand(): Command {
  return new Command("demo")
    .description("bring up the bundled shop and watch zero trust stop a compromised workload")
    .argument("[dir]", "example directory", EXAMPLE)
    .option("--name <mesh>", "mesh name", "demo")
    .option("--keep", "leave the mesh running afterwards to explore")
    .action(async (dir: string, o: { name: string; keep?: boolean }) => {
      console.log(`zmesh demo: bringing up ${resolve(dir)} as mesh "${o.name}"`);
      const state = await up(dir, { name: o.name, log: (l) => console.log(`  ${l}`) });
      try {
        await playStory(state, (l) => console.log(l));
      } finally {
        if (o.keep) {
          console.log(`\nThe mesh "${o.name}" is still up. Try:`);
          console.log(`  npx zmesh exec --name ${o.name} frontend -- curl -s http://catalog/items`);
          console.log(
            `  npx zmesh exec --name ${o.name} frontend -- curl -si -X POST http://payments/charge`,
          );
          console.log(
            `  npx zmesh status --name ${o.name}                 # identities, certificates, config versions, restarts`,
          );
          console.log(`  npx zmesh logs --name ${o.name} payments --proxy  # every decision, explained`);
          console.log(
            `  npx zmesh get --name ${o.name} policies; npx zmesh apply --name ${o.name} -f FILE  # change policies live`,
          );
          console.log(`  npx zmesh certs --name ${o.name} payments; npx zmesh ca rotate --name ${o.name}`);
          console.log(`  npx zmesh down --name ${o.name} --purge`);
        } else {
          await down(o.name, { purge: true });
          console.log(`\nMesh "${o.name}" removed. Run with --keep to explore it yourself.`);
        }
      }
    });
}
