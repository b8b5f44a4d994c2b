#!/usr/bin/env bash
# Build the AssemblyScript proxy-wasm guests into OUT_DIR (release, optimized):
#
#   OUT_DIR/as_filter.wasm             assembly/filter.ts (ours)
#   OUT_DIR/as_readme_add_header.wasm  the "Hello, World" filter of the SDK's README, taken from
#                                      node_modules/@solo-io/proxy-runtime/README.md at build
#                                      time (the npm tarball ships no example source file).
#
# Dependencies come from package-lock.json through `npm ci` (whatever registry npm is
# configured for; the lockfile carries only integrity hashes). `npm ci` is skipped while the
# lockfile's hash matches the stamp written after the last install, and a module is not
# recompiled while its inputs (source, lockfile, flags) hash to the value recorded next to it.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR" >&2; exit 2; }
[ $# -eq 1 ] || usage

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: '$tool' not found on PATH; the AssemblyScript guests need Node.js (>= 16) and npm" >&2
    exit 127
  fi
done

hash_of() { # hash of stdin
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
  else node -e 'let h=require("crypto").createHash("sha256");process.stdin.on("data",d=>h.update(d)).on("end",()=>console.log(h.digest("hex")))'
  fi
}

cd "$here"
lock_hash="$( (cat package-lock.json; node --version) | hash_of)"
stamp=node_modules/.dfp-lock-stamp
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_hash" ]; then
  echo "build.sh: npm ci" >&2
  if ! npm ci --silent --no-audit --no-fund >/tmp/dfp-as-npm-ci.$$.log 2>&1; then
    cat /tmp/dfp-as-npm-ci.$$.log >&2
    rm -f /tmp/dfp-as-npm-ci.$$.log
    echo "error: npm ci failed in $here" >&2
    exit 1
  fi
  rm -f /tmp/dfp-as-npm-ci.$$.log
  echo "$lock_hash" >"$stamp"
fi

# The SDK README's example, extracted from the installed package (never kept in this repository).
# It goes under node_modules so that its `@solo-io/proxy-runtime` imports resolve.
readme=node_modules/@solo-io/proxy-runtime/README.md
extracted=node_modules/.dfp-extracted
mkdir -p "$extracted"
awk '/^Copy this into assembly\/index.ts/{f=1; next} f && /^```ts/{g=1; next} g && /^```/{exit} g{print}' \
  "$readme" >"$extracted/readme_add_header.ts.new"
if ! grep -q registerRootContext "$extracted/readme_add_header.ts.new"; then
  echo "error: no example filter found in $readme (expected a \`\`\`ts block after 'Copy this into assembly/index.ts')" >&2
  exit 1
fi
mv "$extracted/readme_add_header.ts.new" "$extracted/readme_add_header.ts"

# As the SDK's README says: abort goes to its abort_proc_exit; --optimize as its asbuild:optimized.
asc_flags=(--use abort=abort_proc_exit --optimize --noColors)

compile() { # NAME SOURCE
  local name="$1" src="$2" target="$out/$1.wasm" inputs
  inputs="$( (cat "$src"; echo "$lock_hash"; echo "${asc_flags[*]}") | hash_of)"
  if [ -f "$target" ] && [ -f "$out/.$name.wasm.inputs" ] && [ "$(cat "$out/.$name.wasm.inputs")" = "$inputs" ]; then
    return 0
  fi
  echo "build.sh: asc $src -> $target" >&2
  if ! node node_modules/assemblyscript/bin/asc "$src" -b "$target.tmp" "${asc_flags[@]}" >"$target.log" 2>&1; then
    cat "$target.log" >&2
    rm -f "$target.tmp" "$target.log" "$target" "$out/.$name.wasm.inputs"
    echo "error: asc failed on $src" >&2
    exit 1
  fi
  rm -f "$target.log"
  mv "$target.tmp" "$target"
  echo "$inputs" >"$out/.$name.wasm.inputs"
}

compile as_filter assembly/filter.ts
compile as_readme_add_header "$extracted/readme_add_header.ts"
