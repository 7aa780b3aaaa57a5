# Sourced by scripts/test.sh and scripts/compare-etcd.sh: points PROTOC at the protoc vendored by
# our build-dependency protoc-bin-vendored (etcd-client's build script, feature `etcd`, needs one;
# `cargo metadata` fetches it and says where it is). Fails clearly if none runs.
if [[ -z "${PROTOC:-}" ]]; then
  case "$(uname -m)" in
    x86_64) protoc_arch=x86_64 ;;
    aarch64 | arm64) protoc_arch=aarch_64 ;;
    *) protoc_arch=$(uname -m) ;;
  esac
  protoc_manifest=$(cargo metadata --format-version 1 |
    grep -o "\"manifest_path\":\"[^\"]*/protoc-bin-vendored-linux-$protoc_arch-[^\"]*\"" | cut -d'"' -f4 || true)
  [[ -z "$protoc_manifest" ]] || export PROTOC="${protoc_manifest%/Cargo.toml}/bin/protoc"
fi
if ! "${PROTOC:-protoc}" --version >/dev/null 2>&1; then
  echo "no runnable protoc (PROTOC=${PROTOC:-}): none vendored for $(uname -m) in cargo metadata" >&2
  exit 1
fi
