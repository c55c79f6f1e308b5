// Property tests of the SPIFFE ID parser (an untrusted-input parser: peers choose their certificates'
// URIs), plus examples of the builders. Each invalid family breaks exactly one rule of the standard.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { isZmeshError } from "../errors/index.js";
import { namespaceOf, parseSpiffeId, principalOf, workloadId } from "./index.js";
import { SpiffeRule } from "./spiffe-id.js";

const LOWER = "abcdefghijklmnopqrstuvwxyz";
const DIGITS = "0123456789";
const TD_CHARS = [...`${LOWER}${DIGITS}.-_`];
const SEGMENT_CHARS = [...`${LOWER}${LOWER.toUpperCase()}${DIGITS}.-_`];
// Characters no part of a SPIFFE ID allows and that no earlier rule (query, fragment, percent,
// userinfo, port, path separator) claims first.
const FORBIDDEN = [..."!$&'()*+,;=~ \"<>[]\\^`{|}\t\n\u00e9\u00df\u4e2d\u{1f600}"];

const trustDomain = fc.string({ unit: fc.constantFrom(...TD_CHARS), minLength: 1, maxLength: 40 });
const segment = fc
  .string({ unit: fc.constantFrom(...SEGMENT_CHARS), minLength: 1, maxLength: 20 })
  .filter((s) => s !== "." && s !== "..");
const segments = fc.array(segment, { maxLength: 6 });
const pathOf = (segs: readonly string[]) => segs.map((s) => `/${s}`).join("");
const validId = fc.tuple(trustDomain, segments).map(([td, segs]) => ({ td, path: pathOf(segs) }));

/** Inserts `bad` into `s` at a position chosen by `at` (0..1). */
function insertAt(s: string, bad: string, at: number): string {
  const i = Math.min(s.length, Math.floor(at * (s.length + 1)));
  return s.slice(0, i) + bad + s.slice(i);
}
const position = fc.double({ min: 0, max: 1, noNaN: true });

function assertRejected(s: string, rule: string): void {
  assert.throws(
    () => parseSpiffeId(s),
    (e: unknown) => {
      assert.ok(isZmeshError(e, "ZMESH_SPIFFE_ID"), `expected ZmeshError ZMESH_SPIFFE_ID, got ${String(e)}`);
      assert.match(e.message, /is not a SPIFFE ID: /);
      assert.ok(
        e.message.endsWith(`: ${rule}`),
        `${JSON.stringify(s)}: expected rule "${rule}", got "${e.message}"`,
      );
      return true;
    },
  );
}

describe("parseSpiffeId accepts the grammar", () => {
  test("every ID built from the valid grammar parses and round-trips", () => {
    fc.assert(
      fc.property(validId, ({ td, path }) => {
        const uri = `spiffe://${td}${path}`;
        const id = parseSpiffeId(uri);
        assert.deepEqual(id, { trustDomain: td, path, uri });
        assert.deepEqual(parseSpiffeId(id.uri), id);
        assert.equal(principalOf(uri), `${td}${path}`);
      }),
      { numRuns: 2000 },
    );
  });

  test("examples", () => {
    assert.deepEqual(parseSpiffeId("spiffe://cluster.local/ns/shop/sa/orders"), {
      trustDomain: "cluster.local",
      path: "/ns/shop/sa/orders",
      uri: "spiffe://cluster.local/ns/shop/sa/orders",
    });
    assert.deepEqual(parseSpiffeId("spiffe://example.org"), {
      trustDomain: "example.org",
      path: "",
      uri: "spiffe://example.org",
    });
    // Upper case is fine in the path, and dots inside a segment are not dot segments.
    assert.equal(parseSpiffeId("spiffe://td/A.b/..c/...").path, "/A.b/..c/...");
  });

  test("exactly 2048 bytes is accepted, 2049 is not", () => {
    const prefix = "spiffe://td/";
    const ok = prefix + "a".repeat(2048 - prefix.length);
    assert.equal(parseSpiffeId(ok).uri, ok);
    assertRejected(`${ok}b`, SpiffeRule.tooLong);
  });
});

describe("parseSpiffeId rejects each broken rule and names it", () => {
  test("the brief's example message, exactly", () => {
    assert.throws(() => parseSpiffeId("spiffe://Example.org/a"), {
      name: "ZmeshError",
      code: "ZMESH_SPIFFE_ID",
      message: `"spiffe://Example.org/a" is not a SPIFFE ID: the trust domain may contain only lower-case letters, digits, '.', '-' and '_'`,
    });
  });

  test("a forbidden or upper-case character in the trust domain", () => {
    const bad = fc.constantFrom(...FORBIDDEN, ...LOWER.toUpperCase());
    fc.assert(
      fc.property(validId, bad, position, ({ td, path }, c, at) => {
        assertRejected(`spiffe://${insertAt(td, c, at)}${path}`, SpiffeRule.trustDomainChars);
      }),
    );
  });

  test("a forbidden character in a path segment", () => {
    fc.assert(
      fc.property(validId, segment, fc.constantFrom(...FORBIDDEN), position, ({ td, path }, seg, c, at) => {
        assertRejected(`spiffe://${td}${path}/${insertAt(seg, c, at)}`, SpiffeRule.segmentChars);
      }),
    );
  });

  test("'.' and '..' segments", () => {
    fc.assert(
      fc.property(trustDomain, segments, segments, fc.constantFrom(".", ".."), (td, before, after, dots) => {
        assertRejected(`spiffe://${td}${pathOf(before)}/${dots}${pathOf(after)}`, SpiffeRule.dotSegment);
      }),
    );
  });

  test("empty segments", () => {
    fc.assert(
      fc.property(
        trustDomain,
        segments,
        fc.array(segment, { minLength: 1, maxLength: 4 }),
        (td, before, after) => {
          assertRejected(`spiffe://${td}${pathOf(before)}/${pathOf(after)}`, SpiffeRule.emptySegment);
        },
      ),
    );
  });

  test("a trailing slash", () => {
    fc.assert(
      fc.property(validId, ({ td, path }) => {
        assertRejected(`spiffe://${td}${path}/`, SpiffeRule.trailingSlash);
      }),
    );
  });

  test("percent signs anywhere after the scheme", () => {
    const hex = fc.string({ unit: fc.constantFrom(..."0123456789abcdefABCDEF"), minLength: 0, maxLength: 2 });
    fc.assert(
      fc.property(validId, hex, position, ({ td, path }, h, at) => {
        const uri = `spiffe://${td}${path}`;
        const i = "spiffe://".length + Math.floor(at * (uri.length - "spiffe://".length + 1));
        assertRejected(uri.slice(0, i) + `%${h}` + uri.slice(i), SpiffeRule.percent);
      }),
    );
  });

  test("a scheme that is not lower-case 'spiffe'", () => {
    const scheme = fc
      .tuple(...[..."spiffe"].map((c) => fc.constantFrom(c, c.toUpperCase())))
      .map((cs) => cs.join(""))
      .filter((s) => s !== "spiffe");
    fc.assert(
      fc.property(validId, scheme, ({ td, path }, sch) => {
        assertRejected(`${sch}://${td}${path}`, SpiffeRule.schemeCase);
      }),
    );
    for (const s of ["https://td/a", "spiffe:/td/a", "spiffe:td", "//td/a", "td/ns/a/sa/b"]) {
      assertRejected(s, SpiffeRule.scheme);
    }
  });

  test("a port", () => {
    fc.assert(
      fc.property(validId, fc.nat({ max: 65535 }), fc.boolean(), ({ td, path }, port, empty) => {
        assertRejected(`spiffe://${td}:${empty ? "" : port}${path}`, SpiffeRule.port);
      }),
    );
  });

  test("userinfo", () => {
    const user = fc.string({ unit: fc.constantFrom(...SEGMENT_CHARS, ":"), maxLength: 12 });
    fc.assert(
      fc.property(validId, user, ({ td, path }, u) => {
        assertRejected(`spiffe://${u}@${td}${path}`, SpiffeRule.userinfo);
      }),
    );
  });

  test("queries and fragments", () => {
    fc.assert(
      fc.property(validId, segment, ({ td, path }, rest) => {
        assertRejected(`spiffe://${td}${path}?${rest}`, SpiffeRule.query);
        assertRejected(`spiffe://${td}${path}#${rest}`, SpiffeRule.fragment);
      }),
    );
  });

  test("a missing trust domain, an empty string, and one past 2048 bytes of multi-byte text", () => {
    assertRejected("spiffe://", SpiffeRule.trustDomainMissing);
    assertRejected("spiffe:///ns/a", SpiffeRule.trustDomainMissing);
    assertRejected("", SpiffeRule.empty);
    assertRejected(`spiffe://td/${"\u00e9".repeat(1100)}`, SpiffeRule.tooLong);
  });

  test("never throws anything but ZmeshError, and what it accepts is well-formed", () => {
    const anyText = fc.oneof(
      fc.string({ unit: "binary", maxLength: 80 }),
      fc.string({ unit: "binary-ascii", maxLength: 80 }).map((s) => `spiffe://${s}`),
      fc
        .string({
          unit: fc.constantFrom(...TD_CHARS, ...FORBIDDEN, "/", ":", "@", "%", "?", "#", "A"),
          maxLength: 60,
        })
        .map((s) => `spiffe://${s}`),
    );
    fc.assert(
      fc.property(anyText, (s) => {
        try {
          const id = parseSpiffeId(s);
          assert.equal(id.uri, s);
          assert.match(id.trustDomain, /^[a-z0-9._-]+$/);
          assert.match(id.path, /^(\/[A-Za-z0-9._-]+)*$/);
          assert.ok(!id.path.split("/").includes(".") && !id.path.split("/").includes(".."));
        } catch (e) {
          if (!isZmeshError(e, "ZMESH_SPIFFE_ID")) throw e;
        }
      }),
      { numRuns: 3000 },
    );
    for (const v of [undefined, null, 42, {}, ["spiffe://td"]]) {
      assert.throws(() => parseSpiffeId(v as unknown as string), { code: "ZMESH_SPIFFE_ID" });
    }
  });
});

describe("workloadId, principalOf, namespaceOf", () => {
  test("build the conventional workload ID", () => {
    assert.equal(workloadId("cluster.local", "shop", "orders"), "spiffe://cluster.local/ns/shop/sa/orders");
    assert.equal(principalOf("spiffe://cluster.local/ns/shop/sa/orders"), "cluster.local/ns/shop/sa/orders");
  });

  test("workloadId refuses parts that would change the shape of the path", () => {
    for (const [td, ns, sa] of [
      ["Cluster.local", "shop", "orders"],
      ["", "shop", "orders"],
      ["cluster.local", "a/b", "orders"],
      ["cluster.local", "shop", ""],
      ["cluster.local", "..", "orders"],
      ["cluster.local", "shop", "orders/"],
    ] as const) {
      assert.throws(() => workloadId(td, ns, sa), { code: "ZMESH_SPIFFE_ID" }, `${td} ${ns} ${sa}`);
    }
    assert.throws(() => workloadId("cluster.local", "a/b", "orders"), {
      message: `The namespace "a/b" cannot be part of a SPIFFE ID: it may contain only letters, digits, '.', '-' and '_'.`,
    });
  });

  test("principalOf validates", () => {
    assert.throws(() => principalOf("cluster.local/ns/a/sa/b"), { code: "ZMESH_SPIFFE_ID" });
  });

  test("namespaceOf reads only /ns/<ns>/sa/<sa> paths", () => {
    assert.equal(namespaceOf(parseSpiffeId("spiffe://cluster.local/ns/shop/sa/orders")), "shop");
    assert.equal(namespaceOf(parseSpiffeId("spiffe://cluster.local/ns/shop")), undefined);
    assert.equal(namespaceOf(parseSpiffeId("spiffe://cluster.local/ns/shop/sa/orders/x")), undefined);
    assert.equal(namespaceOf(parseSpiffeId("spiffe://cluster.local/sa/orders/ns/shop")), undefined);
    assert.equal(namespaceOf(parseSpiffeId("spiffe://cluster.local")), undefined);
  });
});
