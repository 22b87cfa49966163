#!/usr/bin/env bash
# Compile the keyed hash (behavior_spark/jvm) against the Spark of a Python environment into one JAR.
# Usage: scripts/build_jvm.sh <python with pyspark> <output .jar>. Called by scripts/setup.sh (into .cache/jars) and
# by the Databricks bundle's build (into dist/). Needs javac 17 (a JDK, not only a runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
jar_file=$2
command -v javac >/dev/null || { echo "javac not found: the keyed hash needs a JDK 17 to compile" >&2; exit 1; }
spark_jars="$("$python" -c "import pyspark, os; print(os.path.dirname(pyspark.__file__))")/jars"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
javac --release 17 -nowarn -cp "$spark_jars/*" -d "$build" behavior_spark/jvm/behaviorspark/*.java
mkdir -p "$(dirname "$jar_file")"
jar cf "$jar_file" -C "$build" .
