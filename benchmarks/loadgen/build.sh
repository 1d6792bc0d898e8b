#!/usr/bin/env bash
# Builds build/loadgen from protos/inference/*.proto and loadgen.cc (Debian: libgrpc++-dev,
# protobuf-compiler-grpc, libprotobuf-dev, protobuf-compiler; installed here when apt can be used).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/loadgen.d
if ! command -v grpc_cpp_plugin >/dev/null || ! pkg-config --exists grpc++ 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler pkg-config) >/dev/null 2>&1
  else
    echo "loadgen needs libgrpc++-dev and protobuf-compiler-grpc (apt-get install them)" >&2; exit 2
  fi
fi
mkdir -p "$out"
[ build/loadgen -nt benchmarks/loadgen/loadgen.cc ] && [ build/loadgen -nt protos/inference/grpc_service.proto ] && exit 0
protoc -I protos --cpp_out="$out" --grpc_out="$out" --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" \
  inference/grpc_service.proto inference/model_config.proto
g++ -O2 -std=c++17 -I"$out" benchmarks/loadgen/loadgen.cc "$out"/inference/*.pb.cc -o build/loadgen \
  $(pkg-config --cflags --libs grpc++ protobuf) -lpthread
echo "built build/loadgen"
