#!/usr/bin/env bash
# The main job on the embedded default (memory://, no services): build, then
# enqueue the sample lyrics to in-process workers and print their analyses.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
if [ ! -f build/build.ninja ]; then
	meson setup build --buildtype=release >/dev/null
fi
ninja -C build >/dev/null
exec build/examples/aiqueue-demo --workers 2 examples/lyrics/*.txt
