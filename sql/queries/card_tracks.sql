-- What a training run saw, one row per track: the input of its dataset card
-- (`python -m pipelines.catalogue card --run RUN`, tria/card.py).
-- Variable `run_id` (required): the run's id in training_runs (its MLflow run id).
-- Each excerpt counts once, however many shards or prompt variants hold it.
--   duckdb -cmd "SET VARIABLE run_id = 'abc123'" catalogue.duckdb < sql/queries/card_tracks.sql
--   python -m pipelines.catalogue card_tracks --param run_id=abc123
WITH run_excerpts AS (
    SELECT DISTINCT se.excerpt_id
    FROM training_run_shards AS rs
    JOIN shard_excerpts AS se ON se.shard_id = rs.shard_id
    WHERE rs.run_id = getvariable('run_id')
)
SELECT st.source, st.track, st.split, st.tier, st.licence,
       coalesce(t.title, st.track) AS title,
       coalesce(t.meta_json, '{}') AS meta_json,
       count(*) AS n_excerpts,
       sum(ex.duration_s) / 3600 AS hours
FROM run_excerpts AS re
JOIN excerpts AS ex ON ex.excerpt_id = re.excerpt_id
JOIN stems AS st ON st.stem_id = ex.stem_id
LEFT JOIN tracks AS t ON t.track_id = st.track_id
GROUP BY ALL
ORDER BY st.source, st.track;
