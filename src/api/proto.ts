// The gRPC services of proto/zmesh/v1/mesh.proto for both ends of the control plane API, with
// their messages typed and encoded by ./codec.ts (no .proto file is read at run time).

import * as grpc from "@grpc/grpc-js";
import { decodeMessage, encodeMessage, type MessageName } from "./codec.js";

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

/** One method of a service: its path and the codec of each direction. */
function method(
  service: string,
  name: string,
  req: MessageName,
  res: MessageName,
  stream: boolean,
): grpc.MethodDefinition<object, object> {
  return {
    path: `/zmesh.v1.${service}/${name}`,
    requestStream: stream,
    responseStream: stream,
    requestSerialize: (m: object) => encodeMessage(req, m),
    requestDeserialize: (b: Buffer) => decodeMessage(req, b),
    responseSerialize: (m: object) => encodeMessage(res, m),
    responseDeserialize: (b: Buffer) => decodeMessage(res, b),
    originalName: name.charAt(0).toLowerCase() + name.slice(1),
  };
}

// The services of proto/zmesh/v1/mesh.proto; codec.test.ts checks these paths against the file.
const MESH_CA: grpc.ServiceDefinition = {
  Sign: method("MeshCA", "Sign", "SignRequest", "SignResponse", false),
};
const MESH_CONFIG: grpc.ServiceDefinition = {
  Stream: method("MeshConfig", "Stream", "ConfigAck", "ConfigPush", true),
};
const CA_CLIENT = grpc.makeGenericClientConstructor(MESH_CA, "MeshCA");
const CONFIG_CLIENT = grpc.makeGenericClientConstructor(MESH_CONFIG, "MeshConfig");

export const meshCAService = (): grpc.ServiceDefinition => MESH_CA;
export const meshConfigService = (): grpc.ServiceDefinition => MESH_CONFIG;
export const MeshCAClient = (): grpc.ServiceClientConstructor => CA_CLIENT;
export const MeshConfigClient = (): grpc.ServiceClientConstructor => CONFIG_CLIENT;

export const AUTH_METADATA = "authorization";
