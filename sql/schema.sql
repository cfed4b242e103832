-- TRIA data catalogue (DuckDB). One table per typed row of pipelines/rows.py.
--
-- Written only by pipelines.catalogue.Catalogue (the job driver); read by anyone:
--   duckdb data/catalogue.duckdb < sql/queries/hours_by_source.sql
-- Ids are content-derived (sha1 of source|track|stem...), so every write is an idempotent upsert.
-- Timestamps record the first write; an upsert of the same row leaves them unchanged.
-- Re-running this file is harmless (IF NOT EXISTS everywhere).

CREATE TABLE IF NOT EXISTS catalogue_meta (
    key             VARCHAR PRIMARY KEY,
    value           VARCHAR NOT NULL
);

-- A corpus and what it is (pipelines/sources/*).
CREATE TABLE IF NOT EXISTS sources (
    source          VARCHAR PRIMARY KEY,
    title           VARCHAR NOT NULL,
    licence         VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,          -- isolated | separated | synthetic
    role            VARCHAR NOT NULL,          -- drums | mix | rir | noise
    homepage        VARCHAR,
    manual_download BOOLEAN NOT NULL DEFAULT false,
    description     VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- A file as fetched: a downloaded archive or a file found in a user's folder.
CREATE TABLE IF NOT EXISTS raw_files (
    raw_id          VARCHAR PRIMARY KEY,       -- sha1(source|name)
    source          VARCHAR NOT NULL,
    name            VARCHAR NOT NULL,          -- relative to the source's raw folder
    path            VARCHAR NOT NULL,          -- local path or URI
    size            BIGINT NOT NULL,
    sha256          VARCHAR,
    url             VARCHAR,
    status          VARCHAR NOT NULL,          -- ok | missing | bad
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS tracks (
    track_id        VARCHAR PRIMARY KEY,       -- sha1(source|track)
    source          VARCHAR NOT NULL,
    track           VARCHAR NOT NULL,
    split           VARCHAR NOT NULL,          -- train | val | test
    licence         VARCHAR NOT NULL,
    duration_s      DOUBLE,
    title           VARCHAR,
    meta_json       VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One audio file in the common layout (out/<source>/<split>/<track>/<stem>.wav).
CREATE TABLE IF NOT EXISTS stems (
    stem_id         VARCHAR PRIMARY KEY,       -- sha1(source|track|stem)
    source          VARCHAR NOT NULL,
    track           VARCHAR NOT NULL,
    stem            VARCHAR NOT NULL,
    role            VARCHAR NOT NULL,          -- drums | mix | rir | noise
    tier            VARCHAR NOT NULL,          -- isolated | separated | synthetic
    split           VARCHAR NOT NULL,
    licence         VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    sample_rate     INTEGER NOT NULL,
    n_channels      INTEGER NOT NULL,
    n_samples       BIGINT NOT NULL,
    raw_ids         VARCHAR[],                 -- lineage: the raw files it came from
    parent_stem_id  VARCHAR,                   -- e.g. the mix a Demucs drum stem came from
    sha256          VARCHAR,
    track_id        VARCHAR NOT NULL,
    duration_s      DOUBLE NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- A 6 s window chosen by the filter stage (SPEC 5.2).
CREATE TABLE IF NOT EXISTS excerpts (
    excerpt_id      VARCHAR PRIMARY KEY,       -- sha1(source|track|stem|offset_ms)[:16], the shard key
    source          VARCHAR NOT NULL,
    track           VARCHAR NOT NULL,
    stem            VARCHAR NOT NULL,
    offset_s        DOUBLE NOT NULL,
    duration_s      DOUBLE NOT NULL,
    loudness_db     DOUBLE,
    salience        DOUBLE,
    stem_id         VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Anything a stage dropped, and why.
CREATE TABLE IF NOT EXISTS rejects (
    reject_id       VARCHAR PRIMARY KEY,       -- sha1(what|item|stage|reason)
    what            VARCHAR NOT NULL,          -- raw_file | track | stem | excerpt | shard ...
    item            VARCHAR NOT NULL,          -- its id or path
    stage           VARCHAR NOT NULL,
    reason          VARCHAR NOT NULL,          -- short, groupable ("too_short", "silent")
    detail          VARCHAR,
    source          VARCHAR,
    run_id          VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- A fixed partition of excerpts into shard groups, recorded once (when the group's first shard is
-- registered). Every field set of a group (token shards per codec, prompt shards per features and
-- augmentation config) holds the group's keys in the group's order (pos), so a reader zips them.
CREATE TABLE IF NOT EXISTS shard_groups (
    group_id        VARCHAR PRIMARY KEY,       -- sha1(split|tier|idx)
    split           VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,
    idx             BIGINT NOT NULL,           -- shard-<idx>.tar in every field set's folder
    n_samples       BIGINT NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS group_excerpts (
    group_id        VARCHAR NOT NULL,
    excerpt_id      VARCHAR NOT NULL,
    pos             BIGINT NOT NULL,           -- order inside every shard of the group
    PRIMARY KEY (group_id, excerpt_id)
);

-- A complete WebDataset shard (SHARDS.md), registered after its atomic rename: the tokens of a group
-- for one codec (kind 'tokens', codec_id set) or its rhythm prompts for one features and augmentation
-- config (kind 'prompts', features_id and augment_id set).
CREATE TABLE IF NOT EXISTS shards (
    shard_id        VARCHAR PRIMARY KEY,       -- sha1(path)
    path            VARCHAR NOT NULL,
    split           VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,
    n_samples       BIGINT NOT NULL,
    n_bytes         BIGINT NOT NULL,
    sha256          VARCHAR NOT NULL,
    codec_id        VARCHAR,
    features_id     VARCHAR,
    augment_id      VARCHAR,
    status          VARCHAR NOT NULL,          -- ok | bad
    run_id          VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    kind            VARCHAR DEFAULT '',        -- tokens | prompts ('' = a schema-1 shard holding both)
    group_id        VARCHAR DEFAULT ''
);
-- Catalogues written by schema 1 (one shard held tokens and features together) get the new columns;
-- the pipeline rebuilds their shards as field sets (pipelines.run.drop_legacy_shards).
ALTER TABLE shards ADD COLUMN IF NOT EXISTS kind VARCHAR DEFAULT '';
ALTER TABLE shards ADD COLUMN IF NOT EXISTS group_id VARCHAR DEFAULT '';

CREATE TABLE IF NOT EXISTS shard_excerpts (
    shard_id        VARCHAR NOT NULL,
    excerpt_id      VARCHAR NOT NULL,
    PRIMARY KEY (shard_id, excerpt_id)
);

-- One pipeline job (one config); its id is derived from name and config, so a re-run resumes it.
CREATE TABLE IF NOT EXISTS pipeline_runs (
    run_id          VARCHAR PRIMARY KEY,
    name            VARCHAR NOT NULL,
    config_json     VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,          -- running | done | failed
    started_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at     TIMESTAMP
);

CREATE TABLE IF NOT EXISTS stage_progress (
    run_id          VARCHAR NOT NULL,
    stage           VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,          -- running | done | failed
    n_in            BIGINT,
    n_out           BIGINT,
    n_rejected      BIGINT,
    detail          VARCHAR,
    started_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at     TIMESTAMP,
    PRIMARY KEY (run_id, stage)
);

-- A training run, keyed by its MLflow run id, and the shards it consumed.
CREATE TABLE IF NOT EXISTS training_runs (
    run_id          VARCHAR PRIMARY KEY,
    mlflow_run_id   VARCHAR NOT NULL,
    experiment      VARCHAR,
    name            VARCHAR,
    config_json     VARCHAR,
    status          VARCHAR NOT NULL,          -- running | done | failed
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS training_run_shards (
    run_id          VARCHAR NOT NULL,
    shard_id        VARCHAR NOT NULL,
    PRIMARY KEY (run_id, shard_id)
);

CREATE TABLE IF NOT EXISTS eval_runs (
    eval_id         VARCHAR PRIMARY KEY,       -- sha1(training_run_id|checkpoint|split|config)
    training_run_id VARCHAR NOT NULL,
    checkpoint      VARCHAR NOT NULL,
    split           VARCHAR NOT NULL,
    metrics_json    VARCHAR,
    config_json     VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);
