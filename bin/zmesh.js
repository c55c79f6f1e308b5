#!/usr/bin/env node
// The zmesh CLI entry point: loads the compiled CLI (npm run build, or scripts/setup.sh).
import("../dist/src/cli/main.js").catch((err) => {
  if (err && err.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes("dist/src/cli")) {
    console.error(
      "zmesh: the CLI is not built; run ./scripts/setup.sh (or npm run build) in the checkout first.",
    );
    process.exit(1);
  }
  throw err;
});
