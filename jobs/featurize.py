"""spark-submit entry point for the `featurize` stage: `spark-submit jobs/featurize.py --conf conf/local.yaml [--set k=v]`."""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
