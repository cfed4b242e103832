-- What a training run consumed: its shards per split and tier, and the sources and hours inside.
-- Optional filter: the variable `run_id` (the MLflow run id; unset = every run).
--   duckdb -cmd "SET VARIABLE run_id = 'abc123'" catalogue.duckdb < sql/queries/training_run_inputs.sql
--   python -m pipelines.catalogue training_run_inputs --param run_id=abc123
WITH inputs AS (
    SELECT r.run_id, r.name, s.shard_id, s.split, s.tier, s.n_samples, s.n_bytes, s.status
    FROM training_runs AS r
    JOIN training_run_shards AS rs ON rs.run_id = r.run_id
    JOIN shards AS s ON s.shard_id = rs.shard_id
    WHERE getvariable('run_id') IS NULL OR r.run_id = getvariable('run_id')
),
content AS (
    SELECT i.run_id, i.split, i.tier,
           sum(ex.duration_s) / 3600 AS hours,
           string_agg(DISTINCT ex.source, ', ' ORDER BY ex.source) AS sources
    FROM inputs AS i
    JOIN shard_excerpts AS se ON se.shard_id = i.shard_id
    JOIN excerpts AS ex ON ex.excerpt_id = se.excerpt_id
    GROUP BY i.run_id, i.split, i.tier
),
shard_totals AS (
    SELECT run_id, name, split, tier,
           count(*) AS n_shards,
           count(*) FILTER (WHERE status <> 'ok') AS n_bad_shards,
           sum(n_samples)::BIGINT AS n_samples,
           sum(n_bytes)::BIGINT AS n_bytes
    FROM inputs
    GROUP BY run_id, name, split, tier
)
SELECT t.run_id, t.name, t.split, t.tier, t.n_shards, t.n_bad_shards, t.n_samples, t.n_bytes,
       round(coalesce(c.hours, 0), 4) AS hours,
       coalesce(c.sources, '') AS sources
FROM shard_totals AS t
LEFT JOIN content AS c ON c.run_id = t.run_id AND c.split = t.split AND c.tier = t.tier
ORDER BY t.run_id, t.split, t.tier;
