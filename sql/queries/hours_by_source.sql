-- Hours of audio per source, split, tier and role: consolidated stems and chosen excerpts.
--   duckdb catalogue.duckdb < sql/queries/hours_by_source.sql
--   python -m pipelines.catalogue hours_by_source --db catalogue.duckdb
WITH stem_hours AS (
    SELECT source, split, tier, role,
           count(DISTINCT track_id) AS n_tracks,
           count(*) AS n_stems,
           sum(duration_s) / 3600 AS stem_hours
    FROM stems
    GROUP BY source, split, tier, role
),
excerpt_hours AS (
    SELECT st.source, st.split, st.tier, st.role,
           count(*) AS n_excerpts,
           sum(ex.duration_s) / 3600 AS excerpt_hours
    FROM excerpts AS ex
    JOIN stems AS st ON st.stem_id = ex.stem_id
    GROUP BY st.source, st.split, st.tier, st.role
)
SELECT source, split, tier, role,
       coalesce(n_tracks, 0) AS n_tracks,
       coalesce(n_stems, 0) AS n_stems,
       round(coalesce(stem_hours, 0), 4) AS stem_hours,
       coalesce(n_excerpts, 0) AS n_excerpts,
       round(coalesce(excerpt_hours, 0), 4) AS excerpt_hours
FROM stem_hours
FULL JOIN excerpt_hours USING (source, split, tier, role)
ORDER BY source, split, tier, role;
