// normalizePath: examples of each step, rejections, regressions, and fast-check properties
// (never throws, idempotent, no "//", "/./", "/../" or backslash, always absolute).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { normalizePath } from "./path.js";

function ok(raw: string, opts?: Parameters<typeof normalizePath>[1]): { path: string; query: string } {
  const r = normalizePath(raw, opts);
  assert.ok(r.ok, `expected ${JSON.stringify(raw)} to be accepted, got ${r.ok ? "" : r.reason}`);
  return { path: r.path, query: r.query };
}

function rejected(raw: string): string {
  const r = normalizePath(raw);
  assert.equal(r.ok, false, `expected ${JSON.stringify(raw)} to be rejected`);
  return r.ok ? "" : r.reason;
}

describe("normalizePath", () => {
  test("the example from the contract: dot segment, double slash, query and fragment", () => {
    assert.deepEqual(ok("/a/./b//c?x=1#f"), { path: "/a/b/c", query: "x=1" });
  });

  test("a clean path comes back unchanged with an empty query", () => {
    assert.deepEqual(ok("/api/v1/items"), { path: "/api/v1/items", query: "" });
    assert.deepEqual(ok("/"), { path: "/", query: "" });
  });

  test("query is split at the first '?' and a fragment is dropped", () => {
    assert.deepEqual(ok("/a?b?c"), { path: "/a", query: "b?c" });
    assert.deepEqual(ok("/a?b#c?d"), { path: "/a", query: "b" });
    assert.deepEqual(ok("/a#b?c"), { path: "/a", query: "" });
    assert.deepEqual(ok("/a/../b?x=/../"), { path: "/b", query: "x=/../" });
  });

  test("rejects targets that are not origin-form", () => {
    assert.match(rejected(""), /must start with '\/'/);
    assert.match(rejected("a/b"), /must start with '\/'/);
    assert.match(rejected("http://shop.example/a"), /must start with '\/'/);
    assert.match(rejected("*"), /must start with '\/'/);
  });

  test("rejects NUL, raw or encoded, and control characters anywhere", () => {
    assert.match(rejected("/a%00b"), /NUL/);
    assert.match(rejected("/a?x=%00"), /NUL/);
    assert.match(rejected("/a\u0000b"), /control character/);
    assert.match(rejected("/a\nb"), /control character/);
    assert.match(rejected("/a\rb"), /control character/);
    assert.match(rejected("/a\tb"), /control character/);
    assert.match(rejected("/a\u007fb"), /control character/);
    assert.match(rejected("/a?q=\u0001"), /control character/);
  });

  test("rejects malformed percent-escapes in the path", () => {
    assert.match(rejected("/a%zz"), /malformed percent-escape/);
    assert.match(rejected("/a%4"), /malformed percent-escape/);
    assert.match(rejected("/a%"), /malformed percent-escape/);
    assert.match(rejected("/a%4?x"), /malformed percent-escape/);
    assert.match(rejected("/a%g1"), /malformed percent-escape/);
  });

  test("decodes escaped unreserved characters and upper-cases the other escapes", () => {
    assert.equal(ok("/%61dmin").path, "/admin");
    assert.equal(ok("/%41%5a%30%2d%2E%5f%7e").path, "/AZ0-._~");
    assert.equal(ok("/caf%c3%a9").path, "/caf%C3%A9");
    assert.equal(ok("/a%20b").path, "/a%20b");
    assert.equal(ok("/a%3fb").path, "/a%3Fb");
    assert.equal(ok("/100%25").path, "/100%25");
  });

  test("%25 is decoded only once, so %252e stays an escape and is not a dot", () => {
    assert.equal(ok("/a/%252e%252e/admin").path, "/a/%252e%252e/admin");
  });

  test("backslashes become slashes", () => {
    assert.equal(ok("/a\\b\\..\\c").path, "/a/c");
  });

  test("encoded slashes stay encoded by default and are decoded to '/' on request", () => {
    assert.equal(ok("/a%2fb%5cc").path, "/a%2Fb%5Cc");
    assert.equal(ok("/a%2fb%5cc", { decodeSlashes: true }).path, "/a/b/c");
    assert.equal(ok("/x/..%2f..%2fadmin", { decodeSlashes: true }).path, "/admin");
    assert.equal(ok("/x/..%2f..%2fadmin").path, "/x/..%2F..%2Fadmin");
  });

  test("repeated slashes merge by default and are kept when merging is off", () => {
    assert.equal(ok("//a///b//").path, "/a/b/");
    assert.equal(ok("//").path, "/");
    assert.equal(ok("/a//b", { mergeSlashes: false }).path, "/a//b");
    assert.equal(ok("/a//../b", { mergeSlashes: false }).path, "/a/b");
  });

  test("dot segments are removed per RFC 3986 5.2.4, never above the root", () => {
    assert.equal(ok("/a/b/c/./../../g").path, "/a/g");
    assert.equal(ok("/mid/content=5/../6").path, "/mid/6");
    assert.equal(ok("/a/b/../../../c").path, "/c");
    assert.equal(ok("/..").path, "/");
    assert.equal(ok("/.").path, "/");
    assert.equal(ok("/a/.").path, "/a/");
    assert.equal(ok("/a/..").path, "/");
    assert.equal(ok("/a/./b/.").path, "/a/b/");
  });

  test("names that merely start with dots are ordinary segments", () => {
    assert.equal(ok("/.well-known/x").path, "/.well-known/x");
    assert.equal(ok("/a/...").path, "/a/...");
    assert.equal(ok("/a/..b/.c").path, "/a/..b/.c");
  });

  test("characters outside ASCII pass through", () => {
    assert.equal(ok("/café").path, "/café");
  });

  test("//admin does not bypass a rule on /admin", () => {
    assert.equal(ok("//admin").path, "/admin");
  });

  test("/public/../admin does not bypass a rule on /admin", () => {
    assert.equal(ok("/public/../admin").path, "/admin");
    assert.equal(ok("/public/%2e%2e/admin").path, "/admin");
    assert.equal(ok("/public/.%2E/admin").path, "/admin");
    assert.equal(ok("/public\\..\\admin").path, "/admin");
  });

  test("an encoded letter does not bypass a rule on /admin", () => {
    assert.equal(ok("/%61%64%6d%69%6e").path, "/admin");
  });
});

// Bits that exercise every step; mixed with arbitrary strings below.
const piece = fc.constantFrom(
  "/",
  "//",
  "\\",
  ".",
  "..",
  "/./",
  "/../",
  "%2e",
  "%2E",
  "%2f",
  "%2F",
  "%5c",
  "%5C",
  "%25",
  "%",
  "%4",
  "%41",
  "%7e",
  "%c3%a9",
  "%00",
  "\u0000",
  "\n",
  "a",
  "B",
  "~",
  "é",
  "?",
  "#",
  "=",
);
const pathLike = fc.array(piece, { maxLength: 24 }).map((ps) => "/" + ps.join(""));
const anyString = fc.oneof(
  fc.string({ unit: "binary" }),
  fc.string({ unit: "binary" }).map((s) => "/" + s),
);
const input = fc.oneof(pathLike, anyString);
const options = fc.record({ mergeSlashes: fc.boolean(), decodeSlashes: fc.boolean() });

describe("normalizePath properties", () => {
  test("never throws", () => {
    fc.assert(
      fc.property(input, options, (raw, opts) => {
        normalizePath(raw, opts);
      }),
      { numRuns: 3000 },
    );
  });

  test("output is idempotent", () => {
    fc.assert(
      fc.property(input, options, (raw, opts) => {
        const r = normalizePath(raw, opts);
        if (!r.ok) return;
        const again = normalizePath(r.path, opts);
        assert.ok(again.ok);
        assert.equal(again.path, r.path);
        assert.equal(again.query, "");
      }),
      { numRuns: 3000 },
    );
  });

  test("output starts with '/' and has no dot segment, backslash, query or fragment", () => {
    fc.assert(
      fc.property(input, options, (raw, opts) => {
        const r = normalizePath(raw, opts);
        if (!r.ok) return;
        const p = r.path;
        assert.ok(p.startsWith("/"), p);
        assert.ok(!p.includes("/./") && !p.includes("/../"), p);
        assert.ok(!p.endsWith("/.") && !p.endsWith("/.."), p);
        assert.ok(!p.includes("\\"), p);
        assert.ok(!p.includes("?") && !p.includes("#"), p);
        if (opts.mergeSlashes) assert.ok(!p.includes("//"), p);
        if (opts.decodeSlashes) assert.ok(!/%2F|%5C/i.test(p), p);
      }),
      { numRuns: 3000 },
    );
  });

  test("every escape left in the output is upper-case and not an unreserved character", () => {
    fc.assert(
      fc.property(input, (raw) => {
        const r = normalizePath(raw);
        if (!r.ok) return;
        for (const m of r.path.matchAll(/%(..)/g)) {
          assert.match(m[1]!, /^[0-9A-F]{2}$/);
          assert.doesNotMatch(String.fromCharCode(Number.parseInt(m[1]!, 16)), /[A-Za-z0-9\-._~]/);
        }
      }),
      { numRuns: 3000 },
    );
  });

  test("input with a NUL or control character is always rejected", () => {
    fc.assert(
      fc.property(pathLike, fc.integer({ min: 0, max: 0x1f }), pathLike, (a, c, b) => {
        assert.equal(normalizePath(a + String.fromCharCode(c) + b).ok, false);
      }),
    );
  });
});
