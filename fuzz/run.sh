#!/bin/sh
# A bounded run of every fuzz target (SECONDS each, default 30) on the committed corpora.
# New inputs go to a scratch directory; a crash is kept in fuzz/artifacts/ and fails the run.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain works with
# RUSTC_BOOTSTRAP=1. The first build instruments pingora and takes several minutes.
set -eu
cd "$(dirname "$0")"
seconds="${1:-30}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in config session_token proxy_header route ws_frames head_end head_rules; do
  mkdir -p "$scratch/$target"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096
done
