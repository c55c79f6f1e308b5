// The hand-written codec of the control plane API against the .proto itself: @grpc/proto-loader
// (protobufjs) reads proto/zmesh/v1/mesh.proto and its serializers are the reference. Messages
// must survive both directions, unknown fields must be skipped, and any bytes must either decode
// or fail with a CodecError (gRPC then answers INTERNAL), never with anything else.

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import type { MethodDefinition } from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import fc from "fast-check";
import { CodecError, decodeMessage, encodeMessage, type MessageName } from "./codec.js";
import { meshCAService, meshConfigService } from "./proto.js";

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
const ref = protoLoader.loadSync(PROTO, { keepCase: false, longs: Number, defaults: true });
type Ref = MethodDefinition<object, object>;
const refMethod = (path: string) => {
  const [, service, method] = path.split("/");
  return (ref[service!] as unknown as Record<string, Ref>)[method!]!;
};
const REF_SIGN = refMethod("/zmesh.v1.MeshCA/Sign");
const REF_STREAM = refMethod("/zmesh.v1.MeshConfig/Stream");

/** The reference encoder and decoder of each message, from the method that carries it. */
const REF: Record<MessageName, { enc: (m: object) => Buffer; dec: (b: Buffer) => object }> = {
  SignRequest: { enc: REF_SIGN.requestSerialize, dec: REF_SIGN.requestDeserialize },
  SignResponse: { enc: REF_SIGN.responseSerialize, dec: REF_SIGN.responseDeserialize },
  ConfigAck: { enc: REF_STREAM.requestSerialize, dec: REF_STREAM.requestDeserialize },
  ConfigPush: { enc: REF_STREAM.responseSerialize, dec: REF_STREAM.responseDeserialize },
};

const text = fc.string({ unit: "grapheme", maxLength: 40 });
const MESSAGES: Record<MessageName, fc.Arbitrary<object>> = {
  SignRequest: fc.record({ csrPem: text, ttlSeconds: fc.nat({ max: 2 ** 32 - 1 }) }),
  SignResponse: fc.record({ certChainPem: fc.array(text, { maxLength: 4 }), trustBundlePem: text }),
  ConfigPush: fc.record({ version: text, nonce: text, snapshotJson: text }),
  ConfigAck: fc.record({ version: text, nonce: text, error: text }),
};
const NAMES = Object.keys(MESSAGES) as MessageName[];
/** Compared as plain objects (fast-check's records have no prototype). */
const plain = (o: object) => ({ ...o });

/** A field this version does not know (numbers 4 and up), in any proto3 wire type. */
const unknownField = fc
  .record({
    field: fc.integer({ min: 4, max: 2_000 }),
    wire: fc.constantFrom(0, 1, 2, 5),
    value: fc.uint8Array({ maxLength: 12 }),
    n: fc.nat(),
  })
  .map(({ field, wire, value, n }) => {
    const varint = (x: number) => {
      const out: number[] = [];
      let v = x >>> 0;
      while (v > 0x7f) {
        out.push((v & 0x7f) | 0x80);
        v >>>= 7;
      }
      out.push(v);
      return out;
    };
    const key = varint((field << 3) | wire);
    if (wire === 0) return Buffer.from([...key, ...varint(n)]);
    if (wire === 1) return Buffer.from([...key, ...new Uint8Array(8).fill(n & 0xff)]);
    if (wire === 5) return Buffer.from([...key, ...new Uint8Array(4).fill(n & 0xff)]);
    return Buffer.from([...key, ...varint(value.length), ...value]);
  });

describe("control plane API codec", () => {
  it("serves the services and paths of mesh.proto", () => {
    const mine = { ...meshCAService(), ...meshConfigService() } as Record<string, Ref>;
    const theirs = { Sign: REF_SIGN, Stream: REF_STREAM };
    for (const [name, m] of Object.entries(theirs)) {
      assert.equal(mine[name]?.path, m.path);
      assert.equal(mine[name]?.requestStream, m.requestStream);
      assert.equal(mine[name]?.responseStream, m.responseStream);
    }
    assert.deepEqual(
      Object.keys(ref).filter((k) => k.startsWith("zmesh.v1.") && "format" in ref[k]!),
      ["zmesh.v1.SignRequest", "zmesh.v1.SignResponse", "zmesh.v1.ConfigPush", "zmesh.v1.ConfigAck"],
    );
  });

  for (const name of NAMES) {
    it(`${name}: what protobufjs encodes decodes the same, and the other way round`, () => {
      fc.assert(
        fc.property(MESSAGES[name], (m) => {
          const theirs = REF[name].enc(m);
          assert.deepEqual(decodeMessage(name, theirs), plain(REF[name].dec(theirs)));
          assert.deepEqual(decodeMessage(name, theirs), plain(m));
          assert.deepEqual(plain(REF[name].dec(encodeMessage(name, m))), plain(m));
        }),
      );
    });

    it(`${name}: unknown fields are skipped wherever they are`, () => {
      fc.assert(
        fc.property(MESSAGES[name], fc.array(unknownField, { maxLength: 4 }), fc.nat(), (m, extra, at) => {
          const known = encodeMessage(name, m);
          // Between whole fields only: at the start, or at the end, of the known fields.
          const bytes = at % 2 ? Buffer.concat([...extra, known]) : Buffer.concat([known, ...extra]);
          assert.deepEqual(decodeMessage(name, bytes), plain(REF[name].dec(bytes)));
          assert.deepEqual(decodeMessage(name, bytes), plain(m));
        }),
      );
    });

    it(`${name}: any bytes decode or fail with a CodecError`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
          try {
            decodeMessage(name, Buffer.from(bytes));
          } catch (e) {
            assert.ok(e instanceof CodecError, `not a CodecError: ${e}`);
          }
        }),
      );
    });
  }

  it("refuses truncated messages and fields of the wrong wire type", () => {
    const push = encodeMessage("ConfigPush", { version: "v1", nonce: "n", snapshotJson: "{}" });
    for (let cut = 1; cut < push.length; cut++)
      if (cut !== 4 && cut !== 7)
        assert.throws(() => decodeMessage("ConfigPush", push.subarray(0, cut)), CodecError);
    assert.throws(() => decodeMessage("SignRequest", Buffer.from([0x10, 0x02, 0x01, 0x02])), CodecError);
    assert.throws(() => decodeMessage("SignRequest", Buffer.from([0x08, 0x05])), CodecError);
    assert.deepEqual(decodeMessage("SignRequest", Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x0f])), {
      csrPem: "",
      ttlSeconds: 2 ** 32 - 1,
    });
  });

  it("refuses a length or a key past 32 bits, which would wrap into a small number, and keeps uint32 values modulo 2^32", () => {
    // csrPem (field 1, length-delimited) with length 2^32 + 1 followed by one byte: wrapped, it
    // would read as a 1-byte string.
    const longLength = Buffer.from([0x0a, 0x81, 0x80, 0x80, 0x80, 0x10, 0x41]);
    assert.throws(() => decodeMessage("SignRequest", longLength), /field length does not fit in 32 bits/);
    // A key past 32 bits (2^33 + 8: field 2^30 + 1, wire type 0).
    const longKey = Buffer.from([0x88, 0x80, 0x80, 0x80, 0x20, 0x05]);
    assert.throws(() => decodeMessage("SignRequest", longKey), /field key does not fit in 32 bits/);
    // ttlSeconds = 2^32 + 7: uint32 keeps the low 32 bits, as protobufjs does.
    const wideValue = Buffer.from([0x10, 0x87, 0x80, 0x80, 0x80, 0x10]);
    assert.equal((decodeMessage("SignRequest", wideValue) as { ttlSeconds: number }).ttlSeconds, 7);
    const fromProtobufjs = REF.SignRequest.dec(wideValue) as { ttlSeconds: number };
    assert.equal(fromProtobufjs.ttlSeconds, 7);
  });
});
