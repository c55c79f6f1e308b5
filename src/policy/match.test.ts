// Value matchers: each value form, hosts (case, ports), IPv4 blocks and ports, plus a fast-check
// property that the compiled matcher agrees with a one-line reference definition of Istio's forms.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import {
  compileHosts,
  compileIpBlocks,
  compilePorts,
  compileValues,
  hostNameEnd,
  hostValueHasPort,
  parseIPv4,
  parseIPv4Block,
  stripHostDot,
} from "./match.js";

/** Reference: "*" = present and non-empty; "*x" = ends with x; "x*" = starts with x; else equal. */
function reference(value: string, s: string | undefined): boolean {
  if (s === undefined) return false;
  if (value === "*") return s.length > 0;
  if (value.startsWith("*")) return s.endsWith(value.slice(1));
  if (value.endsWith("*")) return s.startsWith(value.slice(0, -1));
  return s === value;
}

describe("compileValues", () => {
  test("exact", () => {
    const m = compileValues(["GET"]);
    assert.equal(m("GET"), true);
    assert.equal(m("get"), false);
    assert.equal(m("GETX"), false);
    assert.equal(m(undefined), false);
  });

  test("prefix*", () => {
    const m = compileValues(["/api/*"]);
    assert.equal(m("/api/"), true);
    assert.equal(m("/api/items"), true);
    assert.equal(m("/api"), false);
  });

  test("*suffix", () => {
    const m = compileValues(["*/sa/admin"]);
    assert.equal(m("cluster.local/ns/ops/sa/admin"), true);
    assert.equal(m("/sa/admin"), true);
    assert.equal(m("cluster.local/ns/ops/sa/admin2"), false);
  });

  test("'*' alone means present and non-empty", () => {
    const m = compileValues(["*"]);
    assert.equal(m("x"), true);
    assert.equal(m(""), false);
    assert.equal(m(undefined), false);
  });

  test("values within a list OR", () => {
    const m = compileValues(["a", "b*", "*c"]);
    for (const s of ["a", "bx", "xc"]) assert.equal(m(s), true, s);
    for (const s of ["x", "ab", "cb"]) assert.equal(m(s), false, s);
  });

  test("a '*' inside a value is literal, as in Istio", () => {
    const m = compileValues(["/a/*/b"]);
    assert.equal(m("/a/*/b"), true);
    assert.equal(m("/a/x/b"), false);
  });

  test("agrees with the reference definition (property)", () => {
    const alphabet = fc.constantFrom("a", "b", "/", "*", "");
    const str = fc.string({ unit: alphabet, maxLength: 6 });
    fc.assert(
      fc.property(fc.array(str, { maxLength: 4 }), fc.option(str, { nil: undefined }), (values, s) => {
        const expected = values.some((v) => reference(v, s));
        assert.equal(compileValues(values)(s), expected);
      }),
      { numRuns: 5000 },
    );
  });
});

describe("compileHosts", () => {
  test("compares case-insensitively", () => {
    const m = compileHosts(["Shop.Example"]);
    assert.equal(m("shop.example"), true);
    assert.equal(m("SHOP.EXAMPLE"), true);
    assert.equal(m("shop.example.evil"), false);
  });

  test("a value without a port ignores the request's port", () => {
    const m = compileHosts(["shop.example"]);
    assert.equal(m("shop.example:8080"), true);
    assert.equal(m("shop.example:"), false);
  });

  test("a value with a port compares the whole host", () => {
    const m = compileHosts(["shop.example:8080"]);
    assert.equal(m("shop.example:8080"), true);
    assert.equal(m("shop.example"), false);
    assert.equal(m("shop.example:9090"), false);
  });

  test("wildcard forms, with and without a request port", () => {
    const m = compileHosts(["*.shop.example", "api.*"]);
    assert.equal(m("a.shop.example:80"), true);
    assert.equal(m("A.SHOP.EXAMPLE"), true);
    assert.equal(m("api.anything"), true);
    assert.equal(m("shop.example"), false);
    const any = compileHosts(["*"]);
    assert.equal(any("x"), true);
    assert.equal(any(""), false);
    assert.equal(any(undefined), false);
  });

  test("a Host with a trailing dot names the same host (attack: DENY bypass by 'secret.shop.')", () => {
    const m = compileHosts(["secret.shop", "api.shop:8080"]);
    assert.equal(m("secret.shop."), true);
    assert.equal(m("SECRET.shop.:80"), true);
    assert.equal(m("api.shop.:8080"), true);
    assert.equal(m("secret.shop.."), false);
    assert.equal(compileHosts(["*."])("x"), false, "a pattern's dot is kept");
  });

  test("IPv6 literal hosts", () => {
    assert.equal(compileHosts(["[::1]"])("[::1]:8080"), true);
    assert.equal(compileHosts(["[::1]:8080"])("[::1]:8080"), true);
    assert.equal(compileHosts(["[::1]:8080"])("[::1]"), false);
  });

  test("hostNameEnd and hostValueHasPort", () => {
    assert.equal(hostNameEnd("a:80"), 1);
    assert.equal(hostNameEnd("a"), 1);
    assert.equal(hostNameEnd("a:"), 2);
    assert.equal(hostNameEnd("[::1]:80"), 5);
    assert.equal(hostNameEnd("[::1]"), 5);
    assert.equal(hostNameEnd("::1"), 3);
    assert.equal(hostValueHasPort("a:80"), true);
    assert.equal(hostValueHasPort("*:80"), true);
    assert.equal(hostValueHasPort("[::1]"), false);
    assert.equal(hostValueHasPort("*.a"), false);
  });

  test("agrees with the reference on lower-cased, port-stripped hosts (property)", () => {
    const label = fc.string({ unit: fc.constantFrom("a", "B", ".", "*"), minLength: 1, maxLength: 5 });
    const port = fc.option(fc.constantFrom(":80", ":8080"), { nil: "" });
    fc.assert(
      fc.property(fc.array(label, { minLength: 1, maxLength: 3 }), label, port, (values, h, p) => {
        const host = h + p;
        const expected = values.some((v) =>
          reference(stripHostDot(v).toLowerCase(), stripHostDot(h).toLowerCase()),
        );
        assert.equal(compileHosts(values)(host), expected);
      }),
      { numRuns: 3000 },
    );
  });
});

describe("IPv4 blocks", () => {
  test("parseIPv4 is strict", () => {
    assert.equal(parseIPv4("198.18.0.7"), (198 * 2 ** 24 + 18 * 2 ** 16 + 7) >>> 0);
    assert.equal(parseIPv4("255.255.255.255"), 0xffffffff);
    for (const bad of [
      "",
      "1.2.3",
      "1.2.3.4.5",
      "256.0.0.1",
      "01.2.3.4",
      "1.2.3.4 ",
      "1..2.3",
      "a.b.c.d",
      "1.2.3.4/8",
    ]) {
      assert.equal(parseIPv4(bad), -1, bad);
    }
  });

  test("parseIPv4Block accepts CIDRs and single addresses and masks host bits", () => {
    assert.deepEqual(parseIPv4Block("198.18.0.0/16"), { base: parseIPv4("198.18.0.0"), mask: 0xffff0000 });
    assert.deepEqual(parseIPv4Block("198.18.3.4/16"), { base: parseIPv4("198.18.0.0"), mask: 0xffff0000 });
    assert.deepEqual(parseIPv4Block("198.18.0.7"), { base: parseIPv4("198.18.0.7"), mask: 0xffffffff });
    assert.deepEqual(parseIPv4Block("0.0.0.0/0"), { base: 0, mask: 0 });
    for (const bad of ["198.18.0.0/33", "198.18.0.0/", "198.18.0.0/016", "198.18.0.0/-1", "::1", "x/8"]) {
      assert.equal(parseIPv4Block(bad), undefined, bad);
    }
  });

  test("compileIpBlocks matches addresses inside any block", () => {
    const m = compileIpBlocks(["198.18.0.0/16", "198.19.0.5"]);
    assert.equal(m("198.18.200.1"), true);
    assert.equal(m("198.19.0.5"), true);
    assert.equal(m("198.19.0.6"), false);
    assert.equal(m(undefined), false);
    assert.equal(m("not-an-ip"), false);
    assert.equal(m("fe80::1"), false);
    assert.equal(compileIpBlocks(["0.0.0.0/0"])("255.255.255.255"), true);
  });

  test("an IPv4-mapped IPv6 source address matches IPv4 blocks", () => {
    const m = compileIpBlocks(["198.18.0.0/16"]);
    assert.equal(m("::ffff:198.18.0.9"), true);
    assert.equal(m("::FFFF:198.18.0.9"), true);
    assert.equal(m("::ffff:198.20.0.9"), false);
  });

  test("agrees with a bit-by-bit reference (property)", () => {
    const octet = fc.integer({ min: 0, max: 255 });
    const ip = fc.tuple(octet, octet, octet, octet);
    fc.assert(
      fc.property(ip, fc.integer({ min: 0, max: 32 }), ip, (net, bits, addr) => {
        const toBits = (o: number[]) => o.map((x) => x.toString(2).padStart(8, "0")).join("");
        const expected = toBits(net).slice(0, bits) === toBits(addr).slice(0, bits);
        assert.equal(compileIpBlocks([`${net.join(".")}/${bits}`])(addr.join(".")), expected);
      }),
      { numRuns: 3000 },
    );
  });
});

describe("compilePorts", () => {
  test("matches the destination port numerically", () => {
    assert.equal(compilePorts(["8080"])(8080), true);
    assert.equal(compilePorts(["8080"])(80), false);
    const m = compilePorts(["80", "443"]);
    assert.equal(m(443), true);
    assert.equal(m(8443), false);
  });
});
