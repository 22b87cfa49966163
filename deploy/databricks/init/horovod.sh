#!/bin/bash
# Cluster init script for the GPU training cluster: the pinned TensorFlow and Petastorm, and Horovod 0.28.1 built
# on the node against that TensorFlow, with NCCL for GPU collectives and Gloo for the controller
# (the recipe of ../shared/STACK.md with HOROVOD_GPU_OPERATIONS=NCCL). Runs on every node when the cluster starts.
set -euo pipefail
PIP=/databricks/python/bin/pip
"$PIP" install --quiet "tensorflow==2.15.1" "petastorm==0.13.1" "pyarrow==14.0.2"
CMAKE_POLICY_VERSION_MINIMUM=3.5 \
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
HOROVOD_WITH_GLOO=1 HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED \
  "$PIP" install --quiet --no-cache-dir --no-build-isolation "horovod[spark]==0.28.1"
/databricks/python/bin/python -c "import horovod.tensorflow as hvd; assert hvd.nccl_built(), 'Horovod built without NCCL'"
