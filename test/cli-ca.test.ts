// `zmesh ca init | import | bundle` as a user runs them: a CA brought by the user is used as is,
// its keys end up sealed on disk, and replacing a CA needs --force.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

const BIN = join(import.meta.dirname ?? ".", "..", "..", "bin", "zmesh.js");

describe("zmesh ca", () => {
  let dir: string;
  const env = () => ({
    ...process.env,
    ZMESH_DATA_DIR: join(dir, "data"),
    ZMESH_STATE_DIR: join(dir, "state"),
  });
  const zmesh = (...args: string[]) =>
    spawnSync(process.execPath, [BIN, ...args], { env: env(), encoding: "utf8" });
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "zmesh-cli-ca-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("init makes a root, prints it, and refuses to replace it without --force", async () => {
    const first = zmesh("ca", "init", "--name", "one");
    assert.equal(first.status, 0, first.stderr);
    assert.match(first.stdout, /BEGIN CERTIFICATE/);
    const store = join(dir, "data", "one", "ca.json");
    assert.equal((await stat(store)).mode & 0o777, 0o600);
    assert.doesNotMatch(await readFile(store, "utf8"), /PRIVATE KEY/);
    const again = zmesh("ca", "init", "--name", "one");
    assert.equal(again.status, 1);
    assert.match(again.stderr, /already has a CA .* pass --force .*\[ZMESH_CA_STORE\]/);
    const bundle = zmesh("ca", "bundle", "--name", "one");
    assert.equal(bundle.stdout, first.stdout.slice(first.stdout.indexOf("-----BEGIN")));
  });

  it("import takes the user's root and key; zmesh makes the intermediate under it", () => {
    openssl(
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      "root.key",
      "-out",
      "root.pem",
      "-subj",
      "/O=acme/CN=acme root",
      "-days",
      "30",
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    );
    const r = zmesh(
      "ca",
      "import",
      "--name",
      "two",
      "--root-cert",
      join(dir, "root.pem"),
      "--root-key",
      join(dir, "root.key"),
    );
    assert.equal(r.status, 0, r.stderr);
    const bundle = zmesh("ca", "bundle", "--name", "two").stdout;
    const fingerprint = (pem: string) =>
      execFileSync("openssl", ["x509", "-noout", "-fingerprint", "-sha256"], {
        input: pem,
        encoding: "utf8",
      });
    return readFile(join(dir, "root.pem"), "utf8").then((root) =>
      assert.equal(fingerprint(bundle), fingerprint(root)),
    );
  });

  it("bad input gets one sentence and changes nothing", async () => {
    const missing = zmesh(
      "ca",
      "import",
      "--name",
      "three",
      "--root-cert",
      join(dir, "nope.pem"),
      "--root-key",
      join(dir, "root.key"),
    );
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /root certificate .*nope\.pem cannot be read/);
    const half = zmesh(
      "ca",
      "import",
      "--name",
      "three",
      "--root-cert",
      join(dir, "root.pem"),
      "--cert",
      join(dir, "root.pem"),
    );
    assert.match(half.stderr, /--cert and --key go together/);
    const noKey = zmesh("ca", "import", "--name", "three", "--root-cert", join(dir, "root.pem"));
    assert.match(noKey.stderr, /needs the root's key, or an intermediate certificate and its key/);
    await assert.rejects(stat(join(dir, "data", "three", "ca.json")));
  });
});
