#!/bin/bash
# EMR bootstrap action, on every node: the repository's pinned environment in /opt/behavior-spark/.venv on
# Python 3.12 (AL2023's python3.12 package; Spark 4.0.1 and Delta 4.0.1 from PyPI and Maven Central, run on YARN by
# that venv's spark-submit), with TensorFlow's CUDA libraries and Horovod built with NCCL when the node has a GPU,
# and the `run-stage` wrapper the steps call. The pins are requirements/lock.txt (+ requirements/gpu.txt), as on
# laptops and CI; tests/test_deploy_environments.py resolves them for this Python and platform.
# Args: $1 = S3 URI of the repository archive (git archive --format=tar.gz HEAD), uploaded by deploy/emr/README.md.
set -euo pipefail
SOURCE="$1"
HOME_DIR=/opt/behavior-spark
sudo mkdir -p "$HOME_DIR" && sudo chown "$(id -u)" "$HOME_DIR"
aws s3 cp "$SOURCE" /tmp/behavior-spark.tar.gz
tar -xzf /tmp/behavior-spark.tar.gz -C "$HOME_DIR"
sudo dnf install -y -q python3.12 python3.12-devel gcc-c++ cmake maven java-17-amazon-corretto-devel
if command -v nvidia-smi >/dev/null; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
cd "$HOME_DIR" && PYTHON=python3.12 scripts/setup.sh --node
sudo install -m 0755 deploy/emr/run-stage /usr/local/bin/behavior-spark-stage
