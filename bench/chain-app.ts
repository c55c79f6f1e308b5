// The app of the chain benchmark (bench/chain.ts): an HTTP/1.1 server that answers every request
// with a fixed body (1 KiB unless argv says otherwise), in a process of its own so that neither the
// load generator nor a proxy shares its event loop. It reports its port over IPC.

import { createServer } from "node:http";

const size = Number(process.argv[2] ?? 1024);
const body = Buffer.alloc(size, "z");
const head = { "content-type": "application/octet-stream", "content-length": String(size) };

const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  req.resume();
  res.writeHead(200, head);
  res.end(body);
});

server.listen(0, "127.0.0.1", () => {
  const a = server.address();
  process.send?.({ port: typeof a === "object" && a ? a.port : 0 });
});
// The parent going away (normally or not) ends the app.
process.on("disconnect", () => process.exit(0));
process.on("SIGTERM", () => process.exit(0));
