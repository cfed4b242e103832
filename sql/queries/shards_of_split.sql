-- The complete (status ok) shards of a split, as the trainer reads them.
-- Optional filter: the variable `split` (unset = every split).
--   duckdb -cmd "SET VARIABLE split = 'train'" catalogue.duckdb < sql/queries/shards_of_split.sql
--   python -m pipelines.catalogue shards_of_split --param split=train
SELECT split, tier, path, n_samples, n_bytes, sha256, codec_id, features_id, augment_id
FROM shards
WHERE status = 'ok'
  AND (getvariable('split') IS NULL OR split = getvariable('split'))
ORDER BY split, tier, path;
