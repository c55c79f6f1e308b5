// The app of the gRPC chain benchmark (bench/h2-chain.ts): a grpc-js server whose one unary method
// answers every call with a fixed message (1 KiB unless argv says otherwise), in a process of its
// own so that neither the load generator nor a proxy shares its event loop. Reports its port over IPC.

import * as grpc from "@grpc/grpc-js";
import { ECHO_SERVICE } from "./lib/echo.js";

const size = Number(process.argv[2] ?? 1024);
const reply = Buffer.alloc(size, "z");

{
  const server = new grpc.Server();
  server.addService(ECHO_SERVICE, {
    Get: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, reply),
  });
  server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, port) => {
    if (e) throw e;
    process.send?.({ port });
  });
  // The parent going away (normally or not) ends the app.
  process.on("disconnect", () => process.exit(0));
  process.on("SIGTERM", () => process.exit(0));
}
