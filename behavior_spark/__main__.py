import sys

from behavior_spark.cli import main

sys.exit(main())
