// `zmesh ca init | import | bundle | rotate`: the mesh CA of a local mesh. The store lives in
// the mesh's data directory with its keys sealed under the key-encryption key.

import { readFileSync } from "node:fs";
import { Command } from "commander";
import { readCaStore, writeCaStore } from "../../controlplane/index.js";
import { ZmeshError } from "../../errors/index.js";
import { CertificateAuthority, readKekFile } from "../../identity/index.js";
import { caStoreFile, controlPlaneAdmin, kekFile, loadState } from "../../runtime/index.js";

function readFile(path: string, what: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    throw new ZmeshError("ZMESH_CA_STORE", `${what} ${path} cannot be read; check the path`);
  }
}

async function refuseIfPresent(mesh: string, force: boolean | undefined): Promise<void> {
  if (!force && (await readCaStore(caStoreFile(mesh)))) {
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `mesh ${mesh} already has a CA at ${caStoreFile(mesh)}; pass --force to replace it (workloads of a running mesh would stop trusting each other: use zmesh ca rotate instead)`,
    );
  }
  const running = await loadState(mesh).then(
    () => true,
    () => false,
  );
  if (running)
    throw new ZmeshError(
      "ZMESH_CA_STORE",
      `mesh ${mesh} is up; replace its root with zmesh ca rotate, or bring it down first`,
    );
}

async function store(mesh: string, ca: CertificateAuthority): Promise<void> {
  await writeCaStore(caStoreFile(mesh), ca, readKekFile(await kekFile(mesh)));
  console.log(
    `CA of mesh ${mesh} stored in ${caStoreFile(mesh)} (private keys sealed with AES-256-GCM, mode 0600)`,
  );
  process.stdout.write(ca.trustBundlePem());
}

export function caCommand(): Command {
  const ca = new Command("ca").description("the mesh certificate authority: init, import, bundle, rotate");
  ca.command("init")
    .description("make a new root (10 years) and intermediate for a mesh")
    .option("--name <mesh>", "mesh name", "zmesh")
    .option("--force", "replace an existing CA")
    .action(async (o: { name: string; force?: boolean }) => {
      await refuseIfPresent(o.name, o.force);
      await store(o.name, await CertificateAuthority.create());
    });
  ca.command("import")
    .description(
      "use your own root: with its key (zmesh makes the intermediate) or with an intermediate and its key",
    )
    .requiredOption("--root-cert <file>", "root certificate (PEM)")
    .option("--root-key <file>", "root private key (PEM)")
    .option("--cert <file>", "intermediate certificate (PEM), signed by the root")
    .option("--key <file>", "intermediate private key (PEM)")
    .option("--name <mesh>", "mesh name", "zmesh")
    .option("--force", "replace an existing CA")
    .action(
      async (o: {
        rootCert: string;
        rootKey?: string;
        cert?: string;
        key?: string;
        name: string;
        force?: boolean;
      }) => {
        if ((o.cert === undefined) !== (o.key === undefined)) {
          throw new ZmeshError(
            "ZMESH_CA_STORE",
            "--cert and --key go together: the intermediate certificate and its private key",
          );
        }
        await refuseIfPresent(o.name, o.force);
        const material = {
          rootPem: readFile(o.rootCert, "root certificate"),
          ...(o.rootKey ? { rootKeyPem: readFile(o.rootKey, "root key") } : {}),
          ...(o.cert ? { intermediatePem: readFile(o.cert, "intermediate certificate") } : {}),
          ...(o.key ? { intermediateKeyPem: readFile(o.key, "intermediate key") } : {}),
        };
        await store(o.name, await CertificateAuthority.import(material));
      },
    );
  ca.command("bundle")
    .description("print the trust bundle (PEM): every root workloads trust")
    .option("--name <mesh>", "mesh name", "zmesh")
    .action(async (o: { name: string }) => {
      const state = await loadState(o.name).catch(() => undefined);
      if (state) {
        process.stdout.write((await controlPlaneAdmin(state, "GET", "/bundle")).body);
        return;
      }
      const stored = await readCaStore(caStoreFile(o.name));
      if (!stored)
        throw new ZmeshError(
          "ZMESH_MESH_NOT_FOUND",
          `mesh ${o.name} has no CA yet; run zmesh ca init --name ${o.name} or zmesh up`,
        );
      process.stdout.write(stored.trusted.join(""));
    });
  ca.command("rotate")
    .description(
      "replace the root: add the new one, overlap, move issuance, retire the old one, with no failed request",
    )
    .option("--name <mesh>", "mesh name", "zmesh")
    .option("--overlap <seconds>", "how long both roots are trusted before issuance moves", "5")
    .action(async (o: { name: string; overlap: string }) => {
      const state = await loadState(o.name);
      const seconds = Number(o.overlap);
      if (!Number.isFinite(seconds) || seconds < 0 || seconds > 86_400) {
        throw new ZmeshError(
          "ZMESH_CA_STORE",
          `--overlap ${o.overlap} is not a number of seconds from 0 to 86400`,
        );
      }
      const r = await controlPlaneAdmin(state, "POST", `/ca/rotate?overlapSeconds=${seconds}`, (t) =>
        process.stdout.write(t),
      );
      if (r.status !== 200 || !r.body.includes("rotation complete")) process.exitCode = 1;
    });
  return ca;
}
