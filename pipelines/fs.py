"""The filesystem layer, re-exported from the library (`tria.fs`): stages, trainer and reader share it."""

from tria.fs import *  # noqa: F401,F403
