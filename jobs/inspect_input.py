"""spark-submit entry point: `spark-submit jobs/inspect_input.py --conf conf/local.yaml [--sample 0.1]`: what
ingest would do with the raw files, written nowhere. (Not `jobs/inspect.py`: a script's folder comes first on the
module path, and that name would hide Python's own `inspect` module.)"""

import sys

from behavior_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
