// One side of the `node_pipe` chain of bench/chain.ts: the floor of any Node proxy on this path. No
// HTTP at all: each accepted connection gets one upstream connection of its own and the two are
// joined with `stream.pipe` both ways (the sidecar's own `splice`, as for upgrades). `outbound`
// accepts plaintext and dials mutual TLS 1.3 (ALPN http/1.1, the server's name checked); `inbound`
// accepts mutual TLS 1.3 (client certificate required) and dials the app in plaintext. It cannot
// see a method or path, so it enforces no policy, keeps no pool and writes no log: what it costs
// per request is what Node charges to move a request and its response through two sockets and a TLS
// session, which zmesh's sidecars pay too. Certificates come from the directory bench/chain.ts made
// for HAProxy. It reports its port over IPC.

import { readFileSync } from "node:fs";
import { createServer as createTcpServer, connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { createServer as createTlsServer, connect as tlsConnect } from "node:tls";
import { splice } from "../src/proxy/upgrade.js";

const [role, nextPortArg, dir] = process.argv.slice(2);
const nextPort = Number(nextPortArg);
if ((role !== "outbound" && role !== "inbound") || !Number.isInteger(nextPort) || !dir)
  throw new Error("usage: chain-pipe.js outbound|inbound <next port> <certificate directory>");
const read = (f: string) => readFileSync(join(dir, f));
const ca = read("ca.pem");
const own = role === "outbound" ? "client" : "server";
const cert = read(`${own}.crt`);
const key = read(`${own}.key`);

const server =
  role === "outbound"
    ? createTcpServer({ noDelay: true }, (down) => {
        const up = tlsConnect({
          host: "127.0.0.1",
          port: nextPort,
          servername: "bench-server",
          ca,
          cert,
          key,
          minVersion: "TLSv1.3",
          ALPNProtocols: ["http/1.1"],
        });
        up.setNoDelay(true);
        splice(down, up, () => {});
      })
    : createTlsServer(
        {
          cert,
          key,
          ca,
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: "TLSv1.3",
          ALPNProtocols: ["http/1.1"],
        },
        (down) => {
          down.setNoDelay(true);
          splice(down, tcpConnect({ host: "127.0.0.1", port: nextPort, noDelay: true }), () => {});
        },
      );

server.listen(0, "127.0.0.1", () => {
  const a = server.address();
  process.send?.({ port: typeof a === "object" && a ? a.port : 0 });
});
// The parent going away (normally or not) ends the process.
process.on("disconnect", () => process.exit(0));
process.on("SIGTERM", () => process.exit(0));
