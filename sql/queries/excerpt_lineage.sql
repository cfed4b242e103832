-- One excerpt back to its raw file(s): excerpt -> stem (-> parent stem, e.g. the mix Demucs
-- separated) -> track -> raw files, plus the shards holding it: its group's token shard(s) (one per
-- codec) and prompt shard(s) (one per features + augmentation config). One row per raw file and shard.
-- Parameter: the variable `excerpt_id` (unset = no rows).
--   duckdb -cmd "SET VARIABLE excerpt_id = '0123456789abcdef'" catalogue.duckdb < sql/queries/excerpt_lineage.sql
--   python -m pipelines.catalogue excerpt_lineage --param excerpt_id=0123456789abcdef
SELECT ex.excerpt_id, ex.offset_s, ex.duration_s, ex.loudness_db,
       st.source, st.track, st.stem, st.role, st.tier, st.split, st.licence,
       st.path AS stem_path,
       parent.path AS parent_stem_path,
       rf.name AS raw_name, rf.path AS raw_path, rf.url AS raw_url, rf.sha256 AS raw_sha256,
       sh.kind AS shard_kind, sh.path AS shard_path,
       coalesce(nullif(sh.codec_id, ''), sh.features_id || ' ' || sh.augment_id) AS shard_config
FROM excerpts AS ex
JOIN stems AS st ON st.stem_id = ex.stem_id
LEFT JOIN stems AS parent ON parent.stem_id = st.parent_stem_id
LEFT JOIN raw_files AS rf
       ON list_contains(list_concat(coalesce(st.raw_ids, []::VARCHAR[]),
                                    coalesce(parent.raw_ids, []::VARCHAR[])), rf.raw_id)
LEFT JOIN shard_excerpts AS se ON se.excerpt_id = ex.excerpt_id
LEFT JOIN shards AS sh ON sh.shard_id = se.shard_id
WHERE ex.excerpt_id = getvariable('excerpt_id')
ORDER BY rf.name, sh.kind DESC, sh.path;
