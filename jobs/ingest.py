"""spark-submit entry point: `spark-submit jobs/ingest.py --conf conf/local.yaml [--set section.key=value]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
