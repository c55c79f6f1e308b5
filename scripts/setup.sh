#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine with Node 20, as root: the system tools the
# local runtime drives (ip, iptables, tcpdump for the capture test, curl for exec), the npm
# dependencies, the native addon and the TypeScript build. Quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "zmesh setup: missing ${need[*]}; run this script as root or install them with apt-get." >&2
    exit 1
  fi
  echo "zmesh setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci only when the lockfile changed since the last install (it also builds native/).
stamp=node_modules/.zmesh-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi
[ -f native/build/Release/original_dst.node ] || node scripts/build-native.mjs
npx tsc -p tsconfig.json
