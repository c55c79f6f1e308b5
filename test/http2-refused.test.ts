// REFUSED_STREAM through the mesh: a stream the server refused was never processed (RFC 9113
// section 8.7), so the sidecars send it again once, on a new session, whatever its method and
// with its body. The app here refuses the first two tries of each request: the inbound's own retry
// meets the second refusal and passes it on as REFUSED_STREAM, the outbound tries again on a new
// session, and the third try is answered. An app that always refuses costs exactly four tries
// and ends in a REFUSED_STREAM reset the client can act on, never a hang.
import assert from "node:assert/strict";
import { constants, createServer, type Http2Server } from "node:http2";
import { after, before, describe, it } from "node:test";
import { clientApiMesh, h2Request, h2Session } from "./harness/h2.js";
import type { MeshFixture } from "./harness/index.js";

const vip = { address: "198.19.0.92", port: 8080 };

describe("HTTP/2 REFUSED_STREAM is retried on a new session", { timeout: 60_000 }, () => {
  let mesh: MeshFixture;
  let app: Http2Server;
  let sessions = 0;
  /** Tries of each request (by x-try-id) and the body each try carried. */
  const tries = new Map<string, string[]>();
  let client: import("../src/proxy/index.js").Sidecar;

  before(async () => {
    app = createServer();
    app.on("session", () => sessions++);
    app.on("stream", (s, h) => {
      s.on("error", () => {});
      const id = String(h["x-try-id"]);
      const seen = tries.get(id) ?? [];
      tries.set(id, seen);
      const chunks: Buffer[] = [];
      s.on("data", (c: Buffer) => chunks.push(c));
      s.on("end", () => {
        seen.push(Buffer.concat(chunks).toString());
        if (h[":path"] === "/always" || seen.length <= 2) s.close(constants.NGHTTP2_REFUSED_STREAM);
        else {
          s.respond({ ":status": 200 });
          s.end(`try ${seen.length}: ${h[":method"]} ${Buffer.concat(chunks).toString()}`);
        }
      });
    });
    await new Promise<void>((r) => app.listen(0, "127.0.0.1", r));
    ({ mesh, client } = await clientApiMesh(vip.address, (app.address() as { port: number }).port));
  });
  after(async () => {
    await mesh.close();
    app.close();
  });

  it("a refused POST with a body is answered on the third try, its body intact each time", async () => {
    const s = await h2Session(mesh, client, vip);
    try {
      const body = "x".repeat(20_000);
      const r = await h2Request(s, { ":method": "POST", ":path": "/once", "x-try-id": "post" }, body);
      assert.equal(r.headers[":status"], 200);
      assert.equal(r.body.toString(), `try 3: POST ${body}`);
      assert.deepEqual(tries.get("post"), [body, body, body], "each try carried the whole body");
      assert.ok(sessions >= 2, "the inbound opened a new session to the app");
    } finally {
      s.close();
    }
  });

  it("a stream refused every time ends as REFUSED_STREAM after four tries (two per sidecar)", async () => {
    const s = await h2Session(mesh, client, vip);
    try {
      const err = await h2Request(
        s,
        { ":method": "POST", ":path": "/always", "x-try-id": "always" },
        "b",
      ).then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      assert.ok(err, "the request failed");
      assert.match(err.message, /NGHTTP2_REFUSED_STREAM|code 7/);
      assert.deepEqual(tries.get("always"), ["b", "b", "b", "b"]);
    } finally {
      s.close();
    }
  });
});
