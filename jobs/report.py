"""spark-submit entry point: `spark-submit jobs/report.py --conf conf/local.yaml [--set section.key=value]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
