// Loads proto/zmesh/v1/mesh.proto for both ends of the control plane API and types its messages.

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export interface SignRequest {
  csrPem: string;
  ttlSeconds: number;
}
export interface SignResponse {
  certChainPem: string[];
  trustBundlePem: string;
}
export interface ConfigPush {
  version: string;
  nonce: string;
  snapshotJson: string;
}
export interface ConfigAck {
  version: string;
  nonce: string;
  error: string;
}

const PROTO = join(
  dirname(fileURLToPath(import.meta.url)),
  "..",
  "..",
  "..",
  "proto",
  "zmesh",
  "v1",
  "mesh.proto",
);

let loaded: grpc.GrpcObject | undefined;
/** Reads mesh.proto (once); a process that drops privileges calls it before the drop. */
export function pkg(): grpc.GrpcObject {
  if (!loaded) {
    const def = protoLoader.loadSync(PROTO, { keepCase: false, longs: Number, defaults: true });
    loaded = grpc.loadPackageDefinition(def);
  }
  return loaded;
}

type ServiceCtor = grpc.ServiceClientConstructor;
function service(name: "MeshCA" | "MeshConfig"): ServiceCtor {
  const v1 = (pkg()["zmesh"] as grpc.GrpcObject)["v1"] as grpc.GrpcObject;
  return v1[name] as ServiceCtor;
}

export const meshCAService = (): grpc.ServiceDefinition => service("MeshCA").service;
export const meshConfigService = (): grpc.ServiceDefinition => service("MeshConfig").service;
export const MeshCAClient = (): ServiceCtor => service("MeshCA");
export const MeshConfigClient = (): ServiceCtor => service("MeshConfig");

export const AUTH_METADATA = "authorization";
