// Builds the Node-API addon in native/ with the node-gyp that npm bundles, against
// the headers of the Node that runs this script (no download: the machine may be offline).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const nodedir = process.env.npm_config_nodedir || dirname(dirname(process.execPath));
if (!existsSync(join(nodedir, "include", "node", "node_api.h"))) {
  console.error(
    `zmesh: Node headers not found under ${nodedir}/include/node; set npm_config_nodedir to a Node source or headers directory.`,
  );
  process.exit(1);
}
const npmDir = join(dirname(process.execPath), "..", "lib", "node_modules", "npm");
const gyp = process.env.npm_config_node_gyp || join(npmDir, "node_modules", "node-gyp", "bin", "node-gyp.js");
execFileSync(process.execPath, [gyp, "rebuild", `--nodedir=${nodedir}`, "--silent"], {
  cwd: join(root, "native"),
  stdio: "inherit",
});
