// `zmesh certs WORKLOAD [-o text|json|pem]`: the certificate a workload's proxy holds now, read
// from its admin endpoint (the private key never leaves the proxy).

import { X509Certificate } from "node:crypto";
import { Command } from "commander";
import { ZmeshError } from "../../errors/index.js";
import { loadState, proxyAdmin } from "../../runtime/index.js";

interface CertView {
  spiffeId: string;
  serial: string;
  notBefore: string;
  notAfter: string;
  issuer: string;
  issuerId: string;
  chainPem: string[];
  trustBundlePem: string;
}

function text(v: CertView): string {
  const left = Math.round((Date.parse(v.notAfter) - Date.now()) / 60_000);
  const inter = v.chainPem[1] ? new X509Certificate(v.chainPem[1]) : undefined;
  return [
    `SPIFFE ID   ${v.spiffeId}`,
    `serial      ${v.serial}`,
    `valid       ${v.notBefore} to ${v.notAfter} (${left >= 0 ? `expires in ${left} min` : "EXPIRED"})`,
    `issuer      ${v.issuer}${inter ? ` (intermediate, valid to ${new Date(inter.validTo).toISOString()})` : ""}`,
    `chain       ${v.chainPem.length} certificates, leaf first; roots trusted: ${v.trustBundlePem.match(/BEGIN CERTIFICATE/g)?.length ?? 0}`,
  ].join("\n");
}

export function certsCommand(): Command {
  return new Command("certs")
    .description("show a workload's current certificate")
    .argument("<workload>", "workload name, or namespace/name")
    .option("-o, --output <format>", "text, json or pem", "text")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (workload: string, o: { output: string; name: string }) => {
      if (!["text", "json", "pem"].includes(o.output)) {
        throw new ZmeshError("ZMESH_RUNTIME", `-o ${o.output} is not a format; use text, json or pem`);
      }
      const state = await loadState(o.name);
      const r = await proxyAdmin(state, workload, "/certs");
      if (r.status !== 200)
        throw new ZmeshError("ZMESH_NOT_READY", `the proxy of ${workload} has no certificate yet`);
      const v = JSON.parse(r.body) as CertView;
      if (o.output === "pem") process.stdout.write(v.chainPem.join(""));
      else if (o.output === "json") {
        const { chainPem: _c, trustBundlePem: _t, ...rest } = v;
        console.log(JSON.stringify(rest, null, 2));
      } else console.log(text(v));
    });
}
