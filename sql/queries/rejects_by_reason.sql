-- What the stages dropped, grouped by stage, kind of item and reason, most frequent first.
-- Optional filter: the variable `stage` (unset = every stage).
--   duckdb catalogue.duckdb < sql/queries/rejects_by_reason.sql
--   duckdb -cmd "SET VARIABLE stage = 'filter'" catalogue.duckdb < sql/queries/rejects_by_reason.sql
--   python -m pipelines.catalogue rejects_by_reason --param stage=filter
SELECT stage, what, reason,
       count(*) AS n,
       count(DISTINCT source) AS n_sources,
       min(item) AS example_item,
       min(detail) AS example_detail
FROM rejects
WHERE getvariable('stage') IS NULL OR stage = getvariable('stage')
GROUP BY stage, what, reason
ORDER BY n DESC, stage, what, reason;
