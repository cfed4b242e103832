-- Row counts of every catalogue table, with hours (stems, excerpts) and bytes (raw files, shards).
--   duckdb catalogue.duckdb < sql/queries/summary.sql
SELECT item, n_rows, hours, n_bytes FROM (
    SELECT 1 AS ord, 'sources' AS item, count(*) AS n_rows, NULL::DOUBLE AS hours, NULL::BIGINT AS n_bytes FROM sources
    UNION ALL SELECT 2, 'raw_files', count(*), NULL, coalesce(sum(size), 0)::BIGINT FROM raw_files
    UNION ALL SELECT 3, 'tracks', count(*), NULL, NULL FROM tracks
    UNION ALL SELECT 4, 'stems', count(*), round(coalesce(sum(duration_s), 0) / 3600, 4), NULL FROM stems
    UNION ALL SELECT 5, 'excerpts', count(*), round(coalesce(sum(duration_s), 0) / 3600, 4), NULL FROM excerpts
    UNION ALL SELECT 6, 'rejects', count(*), NULL, NULL FROM rejects
    UNION ALL SELECT 7, 'shards (ok)', count(*), NULL, coalesce(sum(n_bytes), 0)::BIGINT FROM shards WHERE status = 'ok'
    UNION ALL SELECT 8, 'shards (bad)', count(*), NULL, coalesce(sum(n_bytes), 0)::BIGINT FROM shards WHERE status <> 'ok'
    UNION ALL SELECT 9, 'pipeline_runs', count(*), NULL, NULL FROM pipeline_runs
    UNION ALL SELECT 10, 'training_runs', count(*), NULL, NULL FROM training_runs
    UNION ALL SELECT 11, 'eval_runs', count(*), NULL, NULL FROM eval_runs
)
ORDER BY ord;
