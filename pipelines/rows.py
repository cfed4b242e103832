"""The catalogue rows, re-exported from the library (`tria.rows`), where trainer and evaluator read them."""

from tria.rows import *  # noqa: F401,F403
