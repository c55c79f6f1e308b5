// A minimal DER reader and writer for the identity hot paths: reading CSRs, writing leaf SVIDs and
// finding a peer certificate's URI SANs. Hand-written because @peculiar/x509 spends ~4 ms per
// signed certificate in its ASN.1 layer, 10x over the CA's budget (2,000 signatures/s per core);
// the library still makes the CA certificates and checks the leaves in tests.

export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  offset: number;
  /** Offset of the first content byte and one past the last. */
  start: number;
  end: number;
}

export class DerError extends Error {}

/** Reads the TLV at `offset`; single-byte tags only (all X.509 needs), definite lengths only. */
export function readTlv(buf: Uint8Array, offset: number, limit = buf.length): Tlv {
  if (offset + 2 > limit) throw new DerError("truncated header");
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError("multi-byte tag");
  let len = buf[offset + 1]!;
  let start = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 3) throw new DerError("unsupported length");
    if (start + n > limit) throw new DerError("truncated length");
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | buf[start + i]!;
    if (len < 0x80 || (n > 1 && len < 1 << (8 * (n - 1)))) throw new DerError("non-minimal length");
    start += n;
  }
  const end = start + len;
  if (end > limit) throw new DerError("truncated content");
  return { tag, offset, start, end };
}

/** The children of a constructed TLV, in order. */
export function children(buf: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  let at = parent.start;
  while (at < parent.end) {
    const t = readTlv(buf, at, parent.end);
    out.push(t);
    at = t.end;
  }
  return out;
}

/** The whole encoding (header and content) of a TLV. */
export function raw(buf: Uint8Array, t: Tlv): Buffer {
  return Buffer.from(buf.buffer, buf.byteOffset + t.offset, t.end - t.offset);
}

export function content(buf: Uint8Array, t: Tlv): Buffer {
  return Buffer.from(buf.buffer, buf.byteOffset + t.start, t.end - t.start);
}

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n < 0x100) return Buffer.from([0x81, n]);
  if (n < 0x10000) return Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
}

/** Encodes a TLV from a tag and its content parts. */
export function tlv(tag: number, ...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), lengthBytes(body.length), body]);
}

export const SEQUENCE = 0x30;
export const SET = 0x31;
export const INTEGER = 0x02;
export const BIT_STRING = 0x03;
export const OCTET_STRING = 0x04;
export const OID = 0x06;
export const UTF8_STRING = 0x0c;
export const UTC_TIME = 0x17;
export const GENERALIZED_TIME = 0x18;
export const BOOLEAN = 0x01;

/** Encodes a dotted OID (content only wrapped with the OID tag). */
export function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const bytes: number[] = [40 * parts[0]! + parts[1]!];
  for (const p of parts.slice(2)) {
    const chunk: number[] = [p & 0x7f];
    for (let v = p >>> 7; v > 0; v >>>= 7) chunk.unshift((v & 0x7f) | 0x80);
    bytes.push(...chunk);
  }
  return tlv(OID, Buffer.from(bytes));
}

/** X.509 Time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5), whole seconds. */
export function time(d: Date): Buffer {
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-:T]/g, "");
  const year = d.getUTCFullYear();
  return year < 2050
    ? tlv(UTC_TIME, Buffer.from(`${digits.slice(2)}Z`, "latin1"))
    : tlv(GENERALIZED_TIME, Buffer.from(`${digits}Z`, "latin1"));
}
