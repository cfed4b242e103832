"""Ray Data pipelines that turn audio corpora into WebDataset shards recorded in a DuckDB catalogue."""

import tria  # noqa: F401  (registers the torchaudio placeholder before dac/audiotools are imported)
