#!/bin/bash
# EMR bootstrap action, on every node: the repository's pinned environment in /opt/behavior-spark/.venv
# (Spark 4.0.1 and Delta 4.0.1 from PyPI and Maven Central, run on YARN by that venv's spark-submit), Horovod built
# against its TensorFlow (NCCL when the node has a GPU), and the `run-stage` wrapper the steps call.
# Args: $1 = S3 URI of the repository archive (git archive --format=tar.gz HEAD), uploaded by deploy/emr/README.md.
set -euo pipefail
SOURCE="$1"
HOME_DIR=/opt/behavior-spark
sudo mkdir -p "$HOME_DIR" && sudo chown "$(id -u)" "$HOME_DIR"
aws s3 cp "$SOURCE" /tmp/behavior-spark.tar.gz
tar -xzf /tmp/behavior-spark.tar.gz -C "$HOME_DIR"
sudo yum install -y -q python3.11 python3.11-devel gcc-c++ cmake maven java-17-amazon-corretto-headless
if command -v nvidia-smi >/dev/null; then export HOROVOD_GPU_OPERATIONS=NCCL; fi
cd "$HOME_DIR" && PYTHON=python3.11 scripts/setup.sh --no-system-packages
sudo install -m 0755 deploy/emr/run-stage /usr/local/bin/behavior-spark-stage
