// Body framing without decoding: tells how many of the bytes that follow a head belong to its
// message, so bodies are spliced as they came (chunked stays chunked) and the next message on
// the connection starts at the right byte (the one exception: `data` hands chunk payloads out, to
// de-chunk a response for an HTTP/1.0 client). Chunked framing is checked as strictly as heads are
// (hex sizes, CRLF only, bounded size lines and trailers), since it is where smuggling hides.

const CR = 13;
const LF = 10;
/** Longest chunk-size line (size, extensions) and all trailer lines together. */
const MAX_LINE = 4096;
const MAX_TRAILERS = 16 * 1024;

const HEX = new Int8Array(256).fill(-1);
for (let c = 0; c < 10; c++) HEX[48 + c] = c;
for (let c = 0; c < 6; c++) {
  HEX[65 + c] = 10 + c;
  HEX[97 + c] = 10 + c;
}

enum S {
  Size,
  Ext,
  SizeLF,
  Data,
  DataCR,
  DataLF,
  Trailer,
  TrailerLF,
  Done,
}

export class Framer {
  /** Payload bytes seen (chunk data, or the counted body): what telemetry reports. */
  payload = 0;
  done = false;
  error: string | undefined;
  /** When set, chunked payload ranges of each `feed` are handed here (to de-chunk for an HTTP/1.0 client). */
  data: ((b: Buffer, start: number, end: number) => void) | undefined;
  private remaining: number;
  private s = S.Size;
  private size = 0;
  private digits = 0;
  private line = 0;
  private trailerBytes = 0;
  private trailerLineEmpty = true;

  /** `length` >= 0 counts that many bytes; -1 is chunked; -2 runs until the connection closes. */
  constructor(readonly length: number) {
    this.remaining = length;
    if (length === 0) this.done = true;
  }

  /**
   * How many bytes of `b[from..]` belong to the message; sets `done` at its end (the rest belongs
   * to the next message) and `error` (returning -1) when the framing is invalid.
   */
  feed(b: Buffer, from: number): number {
    const n = b.length - from;
    if (this.done || n <= 0) return 0;
    if (this.length === -2) {
      this.payload += n;
      return n;
    }
    if (this.length >= 0) {
      const take = Math.min(n, this.remaining);
      this.remaining -= take;
      this.payload += take;
      if (this.remaining === 0) this.done = true;
      return take;
    }
    return this.chunked(b, from);
  }

  private bad(why: string): number {
    this.error = why;
    return -1;
  }

  private chunked(b: Buffer, from: number): number {
    let i = from;
    const end = b.length;
    while (i < end) {
      const c = b[i]!;
      switch (this.s) {
        case S.Size: {
          const v = HEX[c]!;
          if (v >= 0) {
            if (++this.digits > 12) return this.bad("chunk size too large");
            this.size = this.size * 16 + v;
            i++;
          } else if (this.digits === 0) return this.bad("invalid chunk size");
          else if (c === CR) {
            this.s = S.SizeLF;
            i++;
          } else if (c === 59 /* ; */ || c === 32 || c === 9) {
            this.s = S.Ext;
            i++;
          } else return this.bad("invalid chunk size line");
          break;
        }
        case S.Ext:
          if (c === CR) this.s = S.SizeLF;
          else if (c === LF || (c < 32 && c !== 9) || c === 127) return this.bad("invalid chunk extension");
          if (++this.line > MAX_LINE) return this.bad("chunk size line too long");
          i++;
          break;
        case S.SizeLF:
          if (c !== LF) return this.bad("chunk size line not ended by CRLF");
          i++;
          this.line = 0;
          this.digits = 0;
          if (this.size === 0) {
            this.s = S.Trailer;
            this.trailerLineEmpty = true;
          } else {
            this.remaining = this.size;
            this.s = S.Data;
          }
          this.size = 0;
          break;
        case S.Data: {
          const avail = end - i;
          const take = Math.min(avail, this.remaining);
          this.remaining -= take;
          this.payload += take;
          if (this.data && take > 0) this.data(b, i, i + take);
          i += take;
          if (this.remaining === 0) this.s = S.DataCR;
          break;
        }
        case S.DataCR:
          if (c !== CR) return this.bad("chunk data not followed by CRLF");
          this.s = S.DataLF;
          i++;
          break;
        case S.DataLF:
          if (c !== LF) return this.bad("chunk data not followed by CRLF");
          this.s = S.Size;
          i++;
          break;
        case S.Trailer:
          if (++this.trailerBytes > MAX_TRAILERS) return this.bad("trailers too long");
          if (c === CR) this.s = S.TrailerLF;
          else if (c === LF || (c < 32 && c !== 9) || c === 127) return this.bad("invalid trailer line");
          else if (this.trailerLineEmpty && (c === 32 || c === 9))
            return this.bad("obsolete line folding in trailers");
          else this.trailerLineEmpty = false;
          i++;
          break;
        case S.TrailerLF:
          if (c !== LF) return this.bad("trailer line not ended by CRLF");
          i++;
          if (this.trailerLineEmpty) {
            this.s = S.Done;
            this.done = true;
            return i - from;
          }
          this.trailerLineEmpty = true;
          this.s = S.Trailer;
          break;
        default:
          return i - from;
      }
    }
    return i - from;
  }
}
