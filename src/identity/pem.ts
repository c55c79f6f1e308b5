// Strict PEM reading and writing for the identity part. Untrusted PEM (CSRs from workloads) must be one
// block of the expected label and plain base64, not whatever format a lenient parser would guess.

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)\r?\n?-----END ([A-Z0-9 ]+)-----/g;

export interface PemBlock {
  label: string;
  der: Uint8Array<ArrayBuffer>;
}

/** All PEM blocks in a text, or a reason why it is not clean PEM. Text outside blocks must be blank. */
export function decodePem(text: string): PemBlock[] | string {
  const blocks: PemBlock[] = [];
  let last = 0;
  for (const m of text.matchAll(BLOCK)) {
    const [whole, label = "", body = "", endLabel = ""] = m;
    if (text.slice(last, m.index).trim() !== "") return "it has text outside the PEM blocks";
    if (label !== endLabel) return `its BEGIN ${label} block ends with END ${endLabel}`;
    const b64 = body.replace(/[\r\n]/g, "");
    if (b64.length % 4 !== 0 || /=[^=]/.test(b64)) return `its ${label} block is not valid base64`;
    blocks.push({ label, der: plainBytes(Buffer.from(b64, "base64")) });
    last = m.index + whole.length;
  }
  if (text.slice(last).trim() !== "") return "it has text outside the PEM blocks";
  if (blocks.length === 0) return "it has no PEM block";
  return blocks;
}

export function encodePem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  const lines: string[] = [`-----BEGIN ${label}-----`];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  lines.push(`-----END ${label}-----`, "");
  return lines.join("\n");
}

/** The bytes typed as backed by a plain ArrayBuffer, as @peculiar/x509 wants; copies only shared memory. */
export function plainBytes(u8: Uint8Array): Uint8Array<ArrayBuffer> {
  return u8.buffer instanceof ArrayBuffer ? (u8 as Uint8Array<ArrayBuffer>) : new Uint8Array(u8);
}
