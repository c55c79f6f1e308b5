// The protobuf encoding of the four messages of proto/zmesh/v1/mesh.proto (SignRequest,
// SignResponse, ConfigPush, ConfigAck), for both ends of the control plane API.
//
// Hand-written, not @grpc/proto-loader: the loader parses the .proto at run time with protobufjs,
// which costs every sidecar ~4 MB of memory for four messages of strings and one uint32
// (bench/README.md, "Round 4: memory"), and reading the file from the checkout at start-up is one
// more thing that must happen before the proxy drops to uid 1337. The format is small and stable
// (proto3: a varint key per field, strings length-delimited, defaults omitted), and
// codec.test.ts checks, with fast-check, that these bytes and protobufjs's (from mesh.proto
// itself) decode to the same messages both ways, unknown fields included.

/** A malformed message: gRPC turns a throwing deserializer into an INTERNAL status. */
export class CodecError extends Error {}

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

/** Field kinds the API uses. */
type Kind = "string" | "uint32" | "strings";
/** One message: its fields by number, each with its camelCase name (as proto-loader gave them). */
type Schema = Record<number, [name: string, kind: Kind]>;

class Writer {
  private readonly parts: Buffer[] = [];
  private head: number[] = [];

  private flushHead(): void {
    if (this.head.length) this.parts.push(Buffer.from(this.head));
    this.head = [];
  }
  varint(v: number): void {
    let n = v >>> 0;
    while (n > 0x7f) {
      this.head.push((n & 0x7f) | 0x80);
      n >>>= 7;
    }
    this.head.push(n);
  }
  string(field: number, s: string): void {
    const bytes = Buffer.from(s, "utf8");
    this.varint((field << 3) | WIRE_LEN);
    this.varint(bytes.length);
    this.flushHead();
    this.parts.push(bytes);
  }
  done(): Buffer {
    this.flushHead();
    return this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
  }
}

function encode(schema: Schema, msg: Record<string, unknown>): Buffer {
  const w = new Writer();
  for (const [num, [name, kind]] of Object.entries(schema)) {
    const field = Number(num);
    const v = msg[name];
    if (kind === "string") {
      if (typeof v === "string" && v !== "") w.string(field, v);
    } else if (kind === "uint32") {
      const n = Number(v ?? 0) >>> 0;
      if (n !== 0) {
        w.varint((field << 3) | WIRE_VARINT);
        w.varint(n);
      }
    } else if (Array.isArray(v)) {
      for (const s of v) w.string(field, String(s));
    }
  }
  return w.done();
}

/**
 * Reads a varint at `at.pos`. A uint32 value past 32 bits is kept modulo 2^32 (protobuf's uint32
 * semantics); a key or a length (`what`) past 32 bits is refused, as it would otherwise wrap into
 * a small number and misframe everything after it.
 */
function varint(buf: Buffer, at: { pos: number }, what?: string): number {
  let out = 0;
  let over = false;
  for (let i = 0; i < 10; i++) {
    if (at.pos >= buf.length) throw new CodecError("truncated varint");
    const b = buf[at.pos++]!;
    if (i < 5) out = (out | ((b & 0x7f) << (7 * i))) >>> 0;
    // Bits 32 and up: the high three bits of the fifth byte's payload, or any payload after it.
    if ((i === 4 && (b & 0x70) !== 0) || (i > 4 && (b & 0x7f) !== 0)) over = true;
    if ((b & 0x80) === 0) {
      if (over && what !== undefined) throw new CodecError(`${what} does not fit in 32 bits`);
      return out;
    }
  }
  throw new CodecError("varint longer than 10 bytes");
}

function decode(schema: Schema, buf: Buffer): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, kind] of Object.values(schema))
    out[name] = kind === "string" ? "" : kind === "uint32" ? 0 : [];
  const at = { pos: 0 };
  while (at.pos < buf.length) {
    const key = varint(buf, at, "field key");
    const field = key >>> 3;
    const wire = key & 7;
    if (field === 0) throw new CodecError("field number 0");
    const known = schema[field];
    if (wire === WIRE_LEN) {
      const len = varint(buf, at, "field length");
      const end = at.pos + len;
      if (end > buf.length) throw new CodecError("truncated field");
      if (known?.[1] === "uint32") throw new CodecError(`field ${field} is a uint32, not length-delimited`);
      if (known) {
        const s = buf.toString("utf8", at.pos, end);
        if (known[1] === "string") out[known[0]] = s;
        else (out[known[0]] as string[]).push(s);
      }
      at.pos = end;
    } else if (wire === WIRE_VARINT) {
      const n = varint(buf, at);
      if (known?.[1] === "uint32") out[known[0]] = n;
      else if (known) throw new CodecError(`field ${field} is a string, not a varint`);
    } else if (wire === WIRE_I64 || wire === WIRE_I32) {
      if (known) throw new CodecError(`field ${field} has a fixed-width wire type`);
      at.pos += wire === WIRE_I64 ? 8 : 4;
      if (at.pos > buf.length) throw new CodecError("truncated field");
    } else {
      throw new CodecError(`unsupported wire type ${wire}`); // groups (3, 4) are not in proto3
    }
  }
  return out;
}

export const SCHEMAS = {
  SignRequest: { 1: ["csrPem", "string"], 2: ["ttlSeconds", "uint32"] },
  SignResponse: { 1: ["certChainPem", "strings"], 2: ["trustBundlePem", "string"] },
  ConfigPush: { 1: ["version", "string"], 2: ["nonce", "string"], 3: ["snapshotJson", "string"] },
  ConfigAck: { 1: ["version", "string"], 2: ["nonce", "string"], 3: ["error", "string"] },
} satisfies Record<string, Schema>;

export type MessageName = keyof typeof SCHEMAS;

/** Serializes one message of the API (fields by their camelCase names; defaults are omitted). */
export function encodeMessage(name: MessageName, msg: object): Buffer {
  return encode(SCHEMAS[name], msg as Record<string, unknown>);
}

/** Parses one message of the API; missing fields get proto3 defaults, unknown ones are skipped. */
export function decodeMessage<T>(name: MessageName, buf: Buffer): T {
  return decode(SCHEMAS[name], buf) as T;
}
