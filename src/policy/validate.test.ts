// validateAuthorizationPolicySpec: accepted shapes, and for each kind of mistake the exact field
// path and code (ZMESH_CONFIG_INVALID for mistakes, ZMESH_CONFIG_UNSUPPORTED for Istio features zmesh lacks).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Issue } from "./types.js";
import { formatIssue, validateAuthorizationPolicySpec } from "./validate.js";

const INVALID = "ZMESH_CONFIG_INVALID";
const UNSUPPORTED = "ZMESH_CONFIG_UNSUPPORTED";

/** Asserts exactly one issue, with this path and code, and a message matching `message`. */
function one(spec: unknown, path: string, code: Issue["code"], message?: RegExp): Issue {
  const r = validateAuthorizationPolicySpec(spec);
  assert.equal(r.issues.length, 1, `expected one issue, got ${JSON.stringify(r.issues, null, 1)}`);
  const i = r.issues[0]!;
  assert.equal(i.path, path);
  assert.equal(i.code, code);
  if (message) assert.match(i.message, message);
  assert.equal(r.value, undefined, "a spec with issues has no value");
  return i;
}

const src = (source: unknown) => ({ rules: [{ from: [{ source }] }] });
const op = (operation: unknown) => ({ rules: [{ to: [{ operation }] }] });
const when = (cond: unknown) => ({ rules: [{ when: [cond] }] });

describe("validateAuthorizationPolicySpec: accepted specs", () => {
  test("a spec using every supported field is accepted and copied", () => {
    const spec = {
      selector: { matchLabels: { app: "payments", "app.kubernetes.io/part-of": "shop" } },
      action: "DENY",
      rules: [
        {
          from: [
            {
              source: {
                principals: ["cluster.local/ns/shop/sa/frontend", "*"],
                notPrincipals: ["*/sa/admin"],
                namespaces: ["shop"],
                notNamespaces: ["dev*"],
                ipBlocks: ["198.18.0.0/16", "198.19.0.7"],
                notIpBlocks: ["198.18.9.0/24"],
                requestPrincipals: ["https://issuer.example/alice", "https://issuer.example/*"],
                notRequestPrincipals: ["*/mallory"],
                remoteIpBlocks: ["198.18.0.0/16"],
                notRemoteIpBlocks: ["198.18.7.7"],
              },
            },
          ],
          to: [
            {
              operation: {
                hosts: ["shop.example", "*.shop.example:8080"],
                notHosts: ["admin.shop.example"],
                ports: ["8080"],
                notPorts: ["9090"],
                methods: ["GET", "POST"],
                notMethods: ["DELETE"],
                paths: ["/api/*", "*.png", "*"],
                notPaths: ["/api/admin"],
              },
            },
          ],
          when: [
            { key: "request.headers[X-User]", values: ["alice"], notValues: ["bob"] },
            { key: "source.ip", values: ["198.18.0.0/16"] },
            { key: "source.namespace", notValues: ["dev"] },
            { key: "source.principal", values: ["cluster.local/ns/shop/sa/frontend"] },
            { key: "destination.port", values: ["8080"] },
            { key: "remote.ip", values: ["198.18.0.0/16"] },
            { key: "destination.ip", notValues: ["198.18.0.9"] },
            { key: "connection.sni", values: ["*.shop.svc.cluster.local"] },
            { key: "request.auth.principal", values: ["https://issuer.example/alice"] },
            { key: "request.auth.audiences", values: ["shop"] },
            { key: "request.auth.presenter", notValues: ["evil-client"] },
            { key: "request.auth.claims[groups]", values: ["admins"] },
            { key: "request.auth.claims[realm_access][roles]", values: ["buyer"] },
          ],
        },
      ],
    };
    const r = validateAuthorizationPolicySpec(spec);
    assert.deepEqual(r.issues, []);
    assert.deepEqual(r.value, spec);
    assert.notEqual(r.value, spec, "the value is a copy");
  });

  test("a missing spec (undefined or null) is the empty spec", () => {
    assert.deepEqual(validateAuthorizationPolicySpec(undefined), { value: {}, issues: [] });
    assert.deepEqual(validateAuthorizationPolicySpec(null), { value: {}, issues: [] });
  });

  test("the idioms: {}, rules: [{}], rules: [], when: []", () => {
    assert.deepEqual(validateAuthorizationPolicySpec({}).value, {});
    assert.deepEqual(validateAuthorizationPolicySpec({ action: "DENY", rules: [{}] }).value, {
      action: "DENY",
      rules: [{}],
    });
    assert.deepEqual(validateAuthorizationPolicySpec({ rules: [] }).value, { rules: [] });
    assert.deepEqual(validateAuthorizationPolicySpec({ rules: [{ when: [] }] }).value, { rules: [{}] });
  });

  test("null fields are read as absent, as Istio's proto reader does", () => {
    assert.deepEqual(
      validateAuthorizationPolicySpec({ selector: null, action: null, rules: null }).value,
      {},
    );
    assert.deepEqual(
      validateAuthorizationPolicySpec({
        rules: [{ from: null, to: [{ operation: { methods: ["GET"], paths: null } }] }],
      }).value,
      { rules: [{ to: [{ operation: { methods: ["GET"] } }] }] },
    );
  });

  test("an empty selector or matchLabels is allowed (selects everything in scope)", () => {
    assert.deepEqual(validateAuthorizationPolicySpec({ selector: {} }).value, { selector: {} });
    assert.deepEqual(validateAuthorizationPolicySpec({ selector: { matchLabels: {} } }).value, {
      selector: { matchLabels: {} },
    });
  });
});

describe("validateAuthorizationPolicySpec: unsupported Istio features", () => {
  test("requestPrincipals values that can never match are refused with the fix", () => {
    one(
      src({ requestPrincipals: ["alice"] }),
      "spec.rules[0].from[0].source.requestPrincipals[0]",
      INVALID,
      /<iss>\/<sub>/,
    );
    one(
      when({ key: "request.auth.principal", notValues: ["alice"] }),
      "spec.rules[0].when[0].notValues[0]",
      INVALID,
    );
    assert.deepEqual(
      validateAuthorizationPolicySpec(src({ requestPrincipals: ["*", "alice*", "*alice"] })).issues,
      [],
    );
  });

  test("remoteIpBlocks take IPv4 blocks like ipBlocks", () => {
    one(
      src({ remoteIpBlocks: ["198.18.0.300"] }),
      "spec.rules[0].from[0].source.remoteIpBlocks[0]",
      INVALID,
      /IPv4/,
    );
    one(
      src({ notRemoteIpBlocks: ["fd00::1"] }),
      "spec.rules[0].from[0].source.notRemoteIpBlocks[0]",
      UNSUPPORTED,
    );
    one(when({ key: "destination.ip", values: ["x"] }), "spec.rules[0].when[0].values[0]", INVALID);
    one(when({ key: "remote.ip", values: ["::1"] }), "spec.rules[0].when[0].values[0]", UNSUPPORTED);
  });

  test("action CUSTOM and provider are refused", () => {
    one({ action: "CUSTOM" }, "spec.action", UNSUPPORTED, /CUSTOM/);
    one({ provider: { name: "ext-authz" } }, "spec.provider", UNSUPPORTED, /external authorization/);
    const r = validateAuthorizationPolicySpec({ action: "CUSTOM", provider: { name: "x" }, rules: [{}] });
    assert.deepEqual(
      r.issues.map((i) => [i.path, i.code]),
      [
        ["spec.provider", UNSUPPORTED],
        ["spec.action", UNSUPPORTED],
      ],
    );
  });

  test("targetRef and targetRefs are refused", () => {
    one({ targetRef: { kind: "Gateway", name: "gw" } }, "spec.targetRef", UNSUPPORTED, /selector/);
    one({ targetRefs: [] }, "spec.targetRefs", UNSUPPORTED);
  });

  test("condition keys zmesh does not implement are refused", () => {
    one(
      when({ key: "experimental.envoy.filters.network.mysql_proxy[db.table]", values: ["x"] }),
      "spec.rules[0].when[0].key",
      UNSUPPORTED,
      /Envoy/,
    );
  });

  test("request.auth keys must be one of the four, claims written with brackets", () => {
    for (const key of [
      "request.auth.claims",
      "request.auth.claims[]",
      "request.auth.claims.groups",
      "request.auth.claims[a]b",
    ]) {
      one(
        when({ key, values: ["x"] }),
        "spec.rules[0].when[0].key",
        INVALID,
        /request\.auth\.claims\[NAME\]/,
      );
    }
    one(
      when({ key: "request.auth.subject", values: ["x"] }),
      "spec.rules[0].when[0].key",
      INVALID,
      /request\.auth\.principal/,
    );
  });

  test("IPv6 blocks are refused as unsupported, not as invalid", () => {
    one(src({ ipBlocks: ["fd00::/8"] }), "spec.rules[0].from[0].source.ipBlocks[0]", UNSUPPORTED, /IPv6/);
    one(when({ key: "source.ip", notValues: ["::1"] }), "spec.rules[0].when[0].notValues[0]", UNSUPPORTED);
  });

  test("path templates are refused", () => {
    one(op({ paths: ["/api/{*}/x"] }), "spec.rules[0].to[0].operation.paths[0]", UNSUPPORTED, /template/);
    one(op({ notPaths: ["/api/{**}"] }), "spec.rules[0].to[0].operation.notPaths[0]", UNSUPPORTED);
  });
});

describe("validateAuthorizationPolicySpec: unknown fields", () => {
  test("at every level, naming the field and the allowed ones", () => {
    one(
      { rulez: [] },
      "spec.rulez",
      INVALID,
      /unknown field "rulez" \(did you mean "rules"\?\); .*selector, action, rules/,
    );
    one({ rules: [{ form: [] }] }, "spec.rules[0].form", INVALID, /did you mean "from"\?.*from, to, when/);
    one(
      { rules: [{ from: [{ source: { principals: ["a"] }, sauce: 1 }] }] },
      "spec.rules[0].from[0].sauce",
      INVALID,
    );
    one(
      src({ principal: ["a"] }),
      "spec.rules[0].from[0].source.principal",
      INVALID,
      /did you mean "principals"/,
    );
    one(
      op({ methdos: ["GET"] }),
      "spec.rules[0].to[0].operation.methdos",
      INVALID,
      /unknown field "methdos" \(did you mean "methods"\?\); the fields allowed here are hosts, notHosts, ports, notPorts, methods, notMethods, paths, notPaths/,
    );
    one(
      when({ key: "source.ip", value: ["198.18.0.1"] }),
      "spec.rules[0].when[0].value",
      INVALID,
      /"values"/,
    );
    one({ selector: { matchlabels: { app: "x" } } }, "spec.selector.matchlabels", INVALID, /"matchLabels"/);
  });

  test("no suggestion when nothing is close", () => {
    const i = one({ zzzzzzzz: 1 }, "spec.zzzzzzzz", INVALID);
    assert.doesNotMatch(i.message, /did you mean/);
  });

  test("keys that are not identifiers are quoted in the path", () => {
    one({ "x-y": 1 }, 'spec["x-y"]', INVALID);
  });
});

describe("validateAuthorizationPolicySpec: wrong types and values", () => {
  test("spec, selector and labels", () => {
    one("ALLOW", "spec", INVALID, /must be a map/);
    one([], "spec", INVALID);
    one({ selector: "app=x" }, "spec.selector", INVALID);
    one({ selector: { matchLabels: ["app"] } }, "spec.selector.matchLabels", INVALID);
    one(
      { selector: { matchLabels: { version: 2 } } },
      "spec.selector.matchLabels.version",
      INVALID,
      /quote it: "2"/,
    );
    one(
      { selector: { matchLabels: { "app.kubernetes.io/name": true } } },
      'spec.selector.matchLabels["app.kubernetes.io/name"]',
      INVALID,
    );
  });

  test("action not one of ALLOW, DENY, AUDIT", () => {
    one({ action: "allow" }, "spec.action", INVALID, /upper case: "ALLOW"/);
    one({ action: "PERMIT" }, "spec.action", INVALID, /not one of ALLOW, DENY or AUDIT/);
    one({ action: 1 }, "spec.action", INVALID, /ALLOW, DENY or AUDIT/);
  });

  test("rules, from, to and when of the wrong shape", () => {
    one({ rules: {} }, "spec.rules", INVALID, /list of rules/);
    one({ rules: ["x"] }, "spec.rules[0]", INVALID, /write \{\} to match every request/);
    one({ rules: [{}, null] }, "spec.rules[1]", INVALID);
    one({ rules: [{ from: {} }] }, "spec.rules[0].from", INVALID);
    one({ rules: [{ from: [] }] }, "spec.rules[0].from", INVALID, /empty list/);
    one({ rules: [{ to: [] }] }, "spec.rules[0].to", INVALID, /empty list/);
    one({ rules: [{ from: ["x"] }] }, "spec.rules[0].from[0]", INVALID);
    one({ rules: [{ from: [{}] }] }, "spec.rules[0].from[0].source", INVALID, /is required/);
    one({ rules: [{ to: [{}] }] }, "spec.rules[0].to[0].operation", INVALID, /is required/);
    one({ rules: [{ to: [{ operation: [] }] }] }, "spec.rules[0].to[0].operation", INVALID);
    one(src({}), "spec.rules[0].from[0].source", INVALID, /has no fields/);
    one(op({}), "spec.rules[0].to[0].operation", INVALID, /has no fields/);
    one({ rules: [{ when: {} }] }, "spec.rules[0].when", INVALID);
    one({ rules: [{ when: ["x"] }] }, "spec.rules[0].when[0]", INVALID);
  });

  test("value lists: not a list, empty, non-string or empty element", () => {
    one(
      op({ methods: "GET" }),
      "spec.rules[0].to[0].operation.methods",
      INVALID,
      /list of strings, e\.g\. \["GET"\]/,
    );
    one(op({ methods: [] }), "spec.rules[0].to[0].operation.methods", INVALID, /empty list/);
    one(op({ methods: ["GET", 1] }), "spec.rules[0].to[0].operation.methods[1]", INVALID, /must be a string/);
    one(op({ methods: ["GET", ""] }), "spec.rules[0].to[0].operation.methods[1]", INVALID, /empty string/);
    one(src({ namespaces: [null] }), "spec.rules[0].from[0].source.namespaces[0]", INVALID);
  });

  test("ports must be strings of digits from 1 to 65535", () => {
    one(op({ ports: [8080] }), "spec.rules[0].to[0].operation.ports[0]", INVALID, /quote it: "8080"/);
    for (const bad of ["80a", "0", "65536", "-1", "+80", " 80", "*", "123456"]) {
      one(op({ notPorts: [bad] }), "spec.rules[0].to[0].operation.notPorts[0]", INVALID, /not a port/);
    }
    one(when({ key: "destination.port", values: ["http"] }), "spec.rules[0].when[0].values[0]", INVALID);
  });

  test("ip blocks must be IPv4 addresses or CIDRs", () => {
    for (const bad of ["198.18.0.0/33", "198.18.0", "198.18.0.256", "shop", "198.18.0.0/"]) {
      one(
        src({ ipBlocks: [bad] }),
        "spec.rules[0].from[0].source.ipBlocks[0]",
        INVALID,
        /not an IPv4 address or CIDR/,
      );
    }
    one(src({ notIpBlocks: ["198.18.0.1", "x"] }), "spec.rules[0].from[0].source.notIpBlocks[1]", INVALID);
    one(when({ key: "source.ip", values: ["x"] }), "spec.rules[0].when[0].values[0]", INVALID);
  });

  test("values that can never match are refused with the fix", () => {
    one(
      src({ principals: ["spiffe://cluster.local/ns/a/sa/b"] }),
      "spec.rules[0].from[0].source.principals[0]",
      INVALID,
      /"cluster\.local\/ns\/a\/sa\/b"/,
    );
    one(
      op({ methods: ["get"] }),
      "spec.rules[0].to[0].operation.methods[0]",
      INVALID,
      /case-sensitive; write "GET"/,
    );
    one(op({ paths: ["admin"] }), "spec.rules[0].to[0].operation.paths[0]", INVALID, /write "\/admin"/);
    one(op({ paths: ["/a?b=1"] }), "spec.rules[0].to[0].operation.paths[0]", INVALID, /query/);
  });

  test("custom methods in any case are allowed", () => {
    assert.deepEqual(validateAuthorizationPolicySpec(op({ methods: ["PROPFIND", "purge"] })).issues, []);
  });

  test("conditions: key required and known, values or notValues required", () => {
    one(when({ values: ["x"] }), "spec.rules[0].when[0].key", INVALID, /is required/);
    one(when({ key: 7, values: ["x"] }), "spec.rules[0].when[0].key", INVALID);
    one(when({ key: "source.namespace" }), "spec.rules[0].when[0]", INVALID, /values or notValues/);
    one(
      when({ key: "source.name", values: ["x"] }),
      "spec.rules[0].when[0].key",
      INVALID,
      /unknown condition key "source.name"; the keys supported are request\.headers\[NAME\], source\.ip/,
    );
    one(
      when({ key: "request.headers", values: ["x"] }),
      "spec.rules[0].when[0].key",
      INVALID,
      /request\.headers\[NAME\]/,
    );
    one(
      when({ key: "request.headers[]", values: ["x"] }),
      "spec.rules[0].when[0].key",
      INVALID,
      /header name/,
    );
    one(
      when({ key: "request.headers[a b]", values: ["x"] }),
      "spec.rules[0].when[0].key",
      INVALID,
      /header name/,
    );
    one(when({ key: "source.namespace", values: [] }), "spec.rules[0].when[0].values", INVALID);
  });

  test("every issue is reported, not only the first", () => {
    const r = validateAuthorizationPolicySpec({
      action: "allow",
      rules: [
        { to: [{ operation: { methods: ["GET", 2], ports: ["x"] } }] },
        { to: [{ operation: { paths: ["/a/{*}"] } }], wen: [] },
      ],
    });
    assert.deepEqual(
      r.issues.map((i) => [i.path, i.code]),
      [
        ["spec.action", INVALID],
        ["spec.rules[0].to[0].operation.ports[0]", INVALID],
        ["spec.rules[0].to[0].operation.methods[1]", INVALID],
        ["spec.rules[1].wen", INVALID],
        ["spec.rules[1].to[0].operation.paths[0]", UNSUPPORTED],
      ],
    );
    assert.equal(r.value, undefined);
  });

  test("messages are one sentence without the path; formatIssue prefixes it", () => {
    const r = validateAuthorizationPolicySpec(op({ methods: ["GET", 1] }));
    const i = r.issues[0]!;
    assert.ok(!i.message.includes("spec."));
    assert.equal(formatIssue(i), `spec.rules[0].to[0].operation.methods[1]: ${i.message}`);
  });
});
