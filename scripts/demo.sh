#!/usr/bin/env bash
# Run the whole pipeline on the embedded default (conf/local.yaml): generated data, local Spark, ./lakehouse.
# The pseudonymisation key comes from BEHAVIOR_SPARK_PSEUDONYM_KEY; for the demo only, a random key is made once
# per machine and kept outside git in .cache/demo-pseudonym-key.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${BEHAVIOR_SPARK_PSEUDONYM_KEY:-}" ]]; then
  key_file=.cache/demo-pseudonym-key
  [[ -s "$key_file" ]] || (umask 077 && .venv/bin/python -c "import secrets; print(secrets.token_hex(32))" > "$key_file")
  BEHAVIOR_SPARK_PSEUDONYM_KEY=$(cat "$key_file")
  export BEHAVIOR_SPARK_PSEUDONYM_KEY
  echo "demo: BEHAVIOR_SPARK_PSEUDONYM_KEY not set; using this machine's random demo key from $key_file"
fi
# The demo generates new raw files each time, so it starts from an empty lakehouse (conf/local.yaml: ./lakehouse);
# generating is its own step (`run` only ever reads the configured input).
rm -rf lakehouse
.venv/bin/behavior-spark generate --conf conf/local.yaml "$@"
exec .venv/bin/behavior-spark run --conf conf/local.yaml "$@"
