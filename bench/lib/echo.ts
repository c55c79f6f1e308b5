// bench/lib/echo.ts: the one-method gRPC service of the gRPC chain bench, shared by its load
// generator (bench/h2-chain.ts) and its app (bench/h2-chain-app.ts): unary /bench.Echo/Get,
// raw bytes both ways (no protobuf, so serialisation costs nothing on either side).

const bytes = (b: Buffer) => b;

export const ECHO_SERVICE = {
  Get: {
    path: "/bench.Echo/Get",
    requestStream: false,
    responseStream: false,
    requestSerialize: bytes,
    requestDeserialize: bytes,
    responseSerialize: bytes,
    responseDeserialize: bytes,
  },
} as const;
