#!/bin/bash
# Cluster init script for the GPU training cluster, on every node when the cluster starts: the pinned TensorFlow (CUDA
# build), tf-keras and Petastorm of init/requirements.txt (constrained by requirements/lock.txt), then Horovod 0.28.1
# built on the node against that TensorFlow, with NCCL for GPU collectives and Gloo for the controller (the recipe of
# ../shared/STACK.md with HOROVOD_GPU_OPERATIONS=NCCL). BEHAVIOR_SPARK_FILES (set by the job cluster) is the bundle's
# synced repository folder in the workspace.
set -euo pipefail
PIP=/databricks/python/bin/pip
# The lock's pins except PySpark: the runtime's Spark must not be replaced by a pip one.
grep -v '^pyspark==' "$BEHAVIOR_SPARK_FILES/requirements/lock.txt" > /tmp/behavior-spark-constraints.txt
"$PIP" install --quiet -r "$BEHAVIOR_SPARK_FILES/deploy/databricks/init/requirements.txt" \
  -c /tmp/behavior-spark-constraints.txt
CMAKE_POLICY_VERSION_MINIMUM=3.5 \
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
HOROVOD_WITH_GLOO=1 HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
  "$PIP" install --quiet --no-cache-dir --no-build-isolation "horovod==0.28.1"
TF_USE_LEGACY_KERAS=1 /databricks/python/bin/python -c \
  "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'Horovod built without NCCL'"
