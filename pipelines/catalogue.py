"""The catalogue and its named-query CLI, re-exported from the library (`tria.catalog`).

    python -m pipelines.catalogue hours_by_source --db data/catalogue.duckdb
    python -m pipelines.catalogue excerpt_lineage --db data/catalogue.duckdb --param excerpt_id=0123abcd
"""

import sys

from tria.catalog import *  # noqa: F401,F403
from tria.catalog import main
from tria.rows import stable_id, to_json  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
