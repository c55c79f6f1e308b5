// `zmesh check --config PATH... --request FILE [-o json|text]`: the offline checker. Decides one
// request against YAML resources with the proxy's own steps (mTLS mode, HTTP checks, path
// normalization, JWT, authorization) and explains it. A contract: exit 0 with a decision, exit 2
// with one sentence on stderr when PATH or FILE is bad.

import { readFile } from "node:fs/promises";
import { METHODS } from "node:http";
import { isIP } from "node:net";
import { Command, Option } from "commander";
import { DEFAULT_ROOT_NAMESPACE, loadConfig, type MeshConfig } from "../../config/index.js";
import { isZmeshError } from "../../errors/index.js";
import { principalOf } from "../../identity/index.js";
import {
  authenticateJwt,
  compilePolicies,
  evaluate,
  normalizePath,
  type RequestAttributes,
  type RequestAuth,
  resolveMtlsMode,
  selectPolicies,
  tcpWarnings,
} from "../../policy/index.js";

/** Bad input in PATH or FILE: becomes one line on stderr and exit code 2. */
class BadInput extends Error {}

interface CheckRequest {
  destination: { namespace: string; labels: Record<string, string>; port: number; ip?: string };
  source: { principal?: string; namespace?: string; ip?: string };
  request: {
    protocol: "http" | "tcp";
    method?: string;
    host?: string;
    path?: string;
    headers: Record<string, string>;
    jwt?: string;
    sni?: string;
  };
}

/** The contract's JSON output, exactly these keys. */
interface Verdict {
  decision: "ALLOW" | "DENY";
  policy: string | null;
  rule: number | null;
  reason: string;
  dryRun: { policy: string; wouldAllow: boolean }[];
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Reads the request FILE; every problem names the file and the field. */
function parseRequest(file: string, text: string): CheckRequest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new BadInput(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const bad = (path: string, msg: string): never => {
    throw new BadInput(`${file}: ${path}: ${msg}`);
  };
  const obj = (v: unknown, path: string, allowed: string[]): Obj => {
    if (!isObj(v)) return bad(path, `must be an object, not ${show(v)}`);
    for (const k of Object.keys(v)) {
      if (!allowed.includes(k))
        bad(`${path}.${k}`, `unknown field; the fields allowed here are ${allowed.join(", ")}`);
    }
    return v;
  };
  const str = (o: Obj, k: string, path: string): string | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") return bad(`${path}.${k}`, `must be a string, not ${show(v)}`);
    return v;
  };
  const ip = (o: Obj, k: string, path: string): string | undefined => {
    const v = str(o, k, path);
    if (v !== undefined && isIP(v) === 0)
      bad(`${path}.${k}`, `${show(v)} is not an IP address, e.g. "198.18.0.5"`);
    return v;
  };
  const strMap = (v: unknown, path: string): Record<string, string> => {
    if (v === undefined || v === null) return {};
    if (!isObj(v)) return bad(path, `must be an object of strings, not ${show(v)}`);
    const out: Record<string, string> = {};
    for (const [k, val] of Object.entries(v)) {
      if (typeof val !== "string") bad(`${path}.${k}`, `must be a string, not ${show(val)}`);
      out[k] = val as string;
    }
    return out;
  };

  const top = obj(raw, "(top level)", ["destination", "source", "request"]);
  if (top["destination"] === undefined) bad("destination", "is required: {namespace, labels, port}");
  const d = obj(top["destination"], "destination", ["namespace", "labels", "port", "ip"]);
  const ns = str(d, "namespace", "destination");
  if (ns === undefined || ns === "") bad("destination.namespace", 'is required, e.g. "shop"');
  const port = d["port"];
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
    bad("destination.port", `must be a port number from 1 to 65535, not ${show(port)}`);
  }
  const destination: CheckRequest["destination"] = {
    namespace: ns!,
    labels: strMap(d["labels"], "destination.labels"),
    port: port as number,
  };
  const dip = ip(d, "ip", "destination");
  if (dip !== undefined) destination.ip = dip;

  const s = obj(top["source"] ?? {}, "source", ["principal", "namespace", "ip"]);
  const source: CheckRequest["source"] = {};
  const principal = str(s, "principal", "source");
  if (principal !== undefined) {
    const uri = principal.startsWith("spiffe://") ? principal : `spiffe://${principal}`;
    try {
      source.principal = principalOf(uri);
    } catch (e) {
      bad("source.principal", (e as Error).message);
    }
  }
  const sns = str(s, "namespace", "source");
  if (sns !== undefined) source.namespace = sns;
  const sip = ip(s, "ip", "source");
  if (sip !== undefined) source.ip = sip;

  if (top["request"] === undefined) bad("request", "is required: {protocol, method, path, ...}");
  const r = obj(top["request"], "request", ["protocol", "method", "host", "path", "headers", "jwt", "sni"]);
  const protocol = str(r, "protocol", "request") ?? "http";
  if (protocol !== "http" && protocol !== "tcp")
    bad("request.protocol", `must be "http" or "tcp", not ${show(protocol)}`);
  const request: CheckRequest["request"] = { protocol: protocol as "http" | "tcp", headers: {} };
  for (const [k, v] of Object.entries(strMap(r["headers"], "request.headers"))) {
    const name = k.toLowerCase();
    if (Object.hasOwn(request.headers, name))
      bad(`request.headers.${k}`, `is given twice (header names are case-insensitive)`);
    request.headers[name] = v;
  }
  for (const k of ["method", "host", "path", "jwt", "sni"] as const) {
    const v = str(r, k, "request");
    if (v !== undefined) request[k] = v;
  }
  if (request.protocol === "http") {
    if (request.method === undefined) bad("request.method", 'is required for an http request, e.g. "GET"');
    if (request.path === undefined) bad("request.path", 'is required for an http request, e.g. "/items?x=1"');
    const hh = request.headers["host"];
    if (request.host !== undefined && hh !== undefined && hh !== request.host) {
      bad("request.host", `differs from request.headers.host (${show(hh)}); give the host once`);
    }
    if (request.jwt !== undefined && request.headers["authorization"] !== undefined) {
      bad("request.jwt", "and request.headers.authorization are both given; put the token in one of them");
    }
  }
  return { destination, source, request };
}

/** The proxy reads the namespace from the peer's principal ("<td>/ns/<ns>/sa/<sa>"). */
function namespaceOfPrincipal(principal: string): string | undefined {
  return /\/ns\/([^/]+)\//.exec(principal)?.[1];
}

const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function refs<T>(items: { meta: { namespace: string; name: string }; spec: T }[]) {
  return items.map((p) => ({ namespace: p.meta.namespace, name: p.meta.name, spec: p.spec }));
}

interface Outcome {
  verdict: Verdict;
  /** Extra lines for people (text output) and warnings (stderr). */
  notes: string[];
  warnings: string[];
}

const denied = (reason: string, policy: string | null = null): Verdict => ({
  decision: "DENY",
  policy,
  rule: null,
  reason,
  dryRun: [],
});

async function decide(config: MeshConfig, req: CheckRequest, root: string): Promise<Outcome> {
  const notes: string[] = [];
  const warnings: string[] = [];
  const dest = { namespace: req.destination.namespace, labels: req.destination.labels };
  const port = req.destination.port;
  const tcp = req.request.protocol === "tcp";

  // 1. Connection: PeerAuthentication decides whether plaintext is accepted on this port.
  const mtls = resolveMtlsMode(refs(config.peerAuthentications), dest, port, root);
  const decidedBy = mtls.source
    ? `PeerAuthentication ${mtls.source}`
    : "zmesh's default (no PeerAuthentication applies)";
  notes.push(`mTLS mode on port ${port}: ${mtls.mode}, from ${decidedBy}`);
  let principal = req.source.principal;
  if (principal === undefined && mtls.mode === "STRICT") {
    const reason = mtls.source
      ? `plaintext refused: PeerAuthentication ${mtls.source} is STRICT on port ${port}`
      : `plaintext refused: no PeerAuthentication applies to port ${port}, and zmesh's default is STRICT`;
    return { verdict: denied(reason, mtls.source ?? null), notes, warnings };
  }
  if (principal !== undefined && mtls.mode === "DISABLE") {
    warnings.push(
      `mTLS is DISABLEd on port ${port} (${decidedBy}), so the proxy does not learn the peer's identity; ${principal} is checked as a plaintext source`,
    );
    principal = undefined;
  }
  if (principal === undefined && req.source.namespace !== undefined) {
    warnings.push(
      "source.namespace is ignored for a plaintext source: only a peer certificate names a namespace",
    );
  }
  const attrs: RequestAttributes = { destinationPort: port };
  if (principal !== undefined) {
    attrs.principal = principal;
    const ns = namespaceOfPrincipal(principal);
    if (req.source.namespace !== undefined && req.source.namespace !== ns) {
      throw new BadInput(
        `source.namespace: ${show(req.source.namespace)} contradicts the principal, whose namespace is ${show(ns ?? null)}; remove source.namespace`,
      );
    }
    if (ns !== undefined) attrs.namespace = ns;
  }
  if (req.source.ip !== undefined) {
    attrs.sourceIp = req.source.ip;
    attrs.remoteIp = req.source.ip; // as the proxy does, until it reads the original client address
  }
  if (req.destination.ip !== undefined) attrs.destinationIp = req.destination.ip;
  if (req.request.sni !== undefined) attrs.sni = req.request.sni;

  const policies = selectPolicies(
    config.policies.map((p) => ({
      namespace: p.meta.namespace,
      name: p.meta.name,
      spec: p.spec,
      dryRun: p.dryRun,
    })),
    dest,
    root,
  );
  if (tcp) {
    for (const w of tcpWarnings(policies)) warnings.push(w);
    const ignored: string[] = (["method", "host", "path", "jwt"] as const).filter(
      (k) => req.request[k] !== undefined,
    );
    if (Object.keys(req.request.headers).length > 0) ignored.push("headers");
    if (ignored.length > 0) {
      warnings.push(
        `a tcp request has only connection attributes; ignored: request.${ignored.join(", request.")}`,
      );
    }
  } else {
    // 2. HTTP: what the proxy's parser refuses with 400 never reaches authorization.
    const method = req.request.method!;
    if (!METHODS.includes(method)) {
      return {
        verdict: denied(
          `bad request (the proxy answers 400): ${show(method)} is not an HTTP method it accepts (methods are upper case)`,
        ),
        notes,
        warnings,
      };
    }
    const badHeader = Object.keys(req.request.headers).find((h) => !HEADER_NAME.test(h));
    if (badHeader !== undefined) {
      return {
        verdict: denied(`bad request (the proxy answers 400): ${show(badHeader)} is not a valid header name`),
        notes,
        warnings,
      };
    }
    const norm = normalizePath(req.request.path!);
    if (!norm.ok) {
      return { verdict: denied(`bad request (the proxy answers 400): ${norm.reason}`), notes, warnings };
    }
    const rawPath = req.request.path!.split(/[?#]/, 1)[0];
    if (norm.path !== rawPath) notes.push(`path normalized: ${show(rawPath)} -> ${show(norm.path)}`);
    const headers: Record<string, string | undefined> = { ...req.request.headers };
    const host = req.request.host ?? headers["host"] ?? "";
    if (host !== "") headers["host"] = host;
    if (req.request.jwt !== undefined) headers["authorization"] = `Bearer ${req.request.jwt}`;

    // 3. JWT: an invalid token is refused with 401; a missing one leaves no request principal.
    const ras = selectPolicies(refs(config.requestAuthentications), dest, root);
    const jwt = await authenticateJwt(ras, { headers, query: norm.query }, new Date());
    if (!jwt.ok) {
      return {
        verdict: denied(`JWT rejected (the proxy answers 401): ${jwt.reason}`, jwt.policy ?? null),
        notes,
        warnings,
      };
    }
    if (ras.length === 0 && req.request.jwt !== undefined) {
      warnings.push("no RequestAuthentication applies to the destination, so request.jwt is not looked at");
    }
    for (const h of jwt.headersToRemove) delete headers[h];
    Object.assign(headers, jwt.headersToSet);
    if (jwt.principal !== undefined || jwt.claims !== undefined) {
      const auth: RequestAuth = {};
      if (jwt.principal !== undefined) auth.principal = jwt.principal;
      if (jwt.audiences !== undefined) auth.audiences = jwt.audiences;
      if (jwt.presenter !== undefined) auth.presenter = jwt.presenter;
      if (jwt.claims !== undefined) auth.claims = jwt.claims;
      attrs.auth = auth;
      notes.push(
        `request principal: ${jwt.principal ?? "(the token has no sub)"}, verified by ${jwt.policy}`,
      );
    }
    attrs.http = { method, path: norm.path, host, headers };
  }

  // 4. Authorization.
  const d = evaluate(compilePolicies(policies), attrs);
  if (d.audits !== undefined) notes.push(`audited by ${d.audits.join(", ")}`);
  return {
    verdict: {
      decision: d.allowed ? "ALLOW" : "DENY",
      policy: d.policy ?? null,
      rule: d.rule ?? null,
      reason: d.reason,
      dryRun: d.dryRun ?? [],
    },
    notes,
    warnings,
  };
}

function text(v: Verdict, notes: string[]): string {
  const lines = [`${v.decision}: ${v.reason}`];
  if (v.policy !== null) lines.push(`  policy: ${v.policy}${v.rule !== null ? `, rule ${v.rule}` : ""}`);
  for (const n of notes) lines.push(`  ${n}`);
  for (const r of v.dryRun) lines.push(`  dry-run: ${r.policy} would ${r.wouldAllow ? "allow" : "deny"}`);
  return `${lines.join("\n")}\n`;
}

function configProblem(e: unknown): string {
  if (!isZmeshError(e)) throw e;
  const problems = (e as { problems?: unknown[] }).problems;
  const [first] = e.message.split("\n");
  const more =
    problems !== undefined && problems.length > 1 ? ` (and ${problems.length - 1} more problems)` : "";
  return `${first}${more}`;
}

export function checkCommand(): Command {
  return new Command("check")
    .description("decide one request offline against YAML resources, as the proxy would, and explain it")
    .requiredOption(
      "--config <path>",
      "a YAML file or a directory of them (repeat for more)",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .requiredOption("--request <file>", "the request, as JSON: {destination, source, request}")
    .addOption(new Option("-o, --output <format>", "output format").choices(["json", "text"]).default("text"))
    .option("--root-namespace <ns>", "mesh root namespace for policies", DEFAULT_ROOT_NAMESPACE)
    .action(
      async (o: { config: string[]; request: string; output: "json" | "text"; rootNamespace: string }) => {
        const fail = (msg: string) => {
          process.stderr.write(`zmesh check: ${msg}\n`);
          process.exitCode = 2;
        };
        let config: MeshConfig;
        try {
          config = await loadConfig(o.config);
        } catch (e) {
          return fail(configProblem(e));
        }
        let outcome: Outcome;
        try {
          let body: string;
          try {
            body = await readFile(o.request, "utf8");
          } catch (e) {
            throw new BadInput(
              `${o.request}: cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
            );
          }
          outcome = await decide(config, parseRequest(o.request, body), o.rootNamespace);
        } catch (e) {
          if (e instanceof BadInput) {
            const msg = e.message.startsWith(`${o.request}: `) ? e.message : `${o.request}: ${e.message}`;
            return fail(msg);
          }
          throw e;
        }
        for (const w of outcome.warnings) process.stderr.write(`zmesh check: warning: ${w}\n`);
        process.stdout.write(
          o.output === "json" ? `${JSON.stringify(outcome.verdict)}\n` : text(outcome.verdict, outcome.notes),
        );
      },
    );
}
