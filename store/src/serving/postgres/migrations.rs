//! The Postgres serving store's schema: the versioned migrations `init` applies under an advisory lock,
//! and the least-privilege role layout.

use super::PostgresStore;
use crate::error::{Error, Result};

/// The versioned migrations; `{s}` is the quoted schema.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "serving rows, deltas, progress, corrections",
        r#"
CREATE TABLE {s}.serving_rows (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    layer text NOT NULL CHECK (layer IN ('speed', 'batch')),
    revision bigint,
    pane text,
    watermark timestamptz,
    batch_run_id text,
    batch_epoch bigint,
    computed_at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (metric, window_start, window_end, dims),
    CHECK ((layer = 'speed') = (revision IS NOT NULL)),
    CHECK ((layer = 'batch') = (batch_epoch IS NOT NULL))
) WITH (fillfactor = 80);
CREATE INDEX serving_rows_window ON {s}.serving_rows (window_start);
CREATE TABLE {s}.serving_deltas (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    revision bigint NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    pane text,
    watermark timestamptz,
    computed_at timestamptz NOT NULL,
    PRIMARY KEY (metric, window_start, window_end, dims, revision)
);
CREATE TABLE {s}.progress (
    pipeline text PRIMARY KEY,
    fence_epoch bigint NOT NULL,
    writer_epoch bigint NOT NULL,
    sequence bigint NOT NULL,
    offsets jsonb,
    checkpoint bytea,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.correction_batches (
    batch_id text PRIMARY KEY,
    run_id text NOT NULL,
    epoch bigint NOT NULL,
    changes bigint NOT NULL,
    applied_at timestamptz NOT NULL
);
CREATE TABLE {s}.corrections_audit (
    batch_id text NOT NULL REFERENCES {s}.correction_batches (batch_id),
    seq integer NOT NULL,
    run_id text NOT NULL,
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    aggregate text NOT NULL,
    old_value jsonb,
    new_value jsonb,
    cause text NOT NULL,
    applied_at timestamptz NOT NULL,
    PRIMARY KEY (batch_id, seq)
);
"#,
    ),
    (
        2,
        "emission log",
        r#"
CREATE TABLE {s}.emissions (
    metric text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    dims text NOT NULL,
    revision bigint NOT NULL,
    delta boolean NOT NULL,
    agg_values jsonb NOT NULL,
    events bigint NOT NULL,
    pane text NOT NULL,
    watermark timestamptz NOT NULL,
    writer_epoch bigint NOT NULL,
    emitted_at timestamptz NOT NULL
);
CREATE INDEX emissions_window ON {s}.emissions (metric, window_start);
"#,
    ),
    (
        3,
        "room for HOT updates of serving rows",
        r#"
ALTER TABLE {s}.serving_rows SET (fillfactor = 70);
"#,
    ),
    (
        4,
        "HOT updates when a flush rewrites whole pages; a BRIN index for the emission log",
        // A flush rewrites the rows of the windows it touched, which were inserted together, so whole pages are
        // rewritten at once: only with half of each page free do all the new versions fit beside the old ones
        // (a HOT update: no index entries; 1M-row updates measured 2x faster). The emission log is appended
        // in window order and read by window range, which a BRIN index serves at a fraction of a b-tree's
        // per-row cost (the old index led with `metric`, which the range read does not constrain).
        r#"
ALTER TABLE {s}.serving_rows SET (fillfactor = 50);
DROP INDEX IF EXISTS {s}.emissions_window;
CREATE INDEX emissions_window_brin ON {s}.emissions USING brin (window_start);
"#,
    ),
    (
        5,
        "a BRIN index for range reads of serving rows",
        // Rows are inserted roughly in window order (the speed layer writes windows as they open; updates are
        // HOT, in place), so a BRIN index serves the range reads; the b-tree cost every new row a second
        // index insertion. Point lookups and single-metric ranges use the primary key.
        r#"
DROP INDEX IF EXISTS {s}.serving_rows_window;
CREATE INDEX serving_rows_window_brin ON {s}.serving_rows USING brin (window_start);
"#,
    ),
];

impl PostgresStore {
    /// SQL that creates a least-privilege role layout for this schema: `tidemark_stream` may insert and
    /// update speed rows, deltas and progress (and append to the emission log) but never create or change a batch row (a trigger refuses it,
    /// even for hand-written SQL) and may delete nothing; `tidemark_reconciler` may write any row and the
    /// correction tables; `tidemark_reader` may only read. Run it as the schema owner, then grant the roles
    /// to login users. Idempotent.
    pub fn role_setup_sql(&self) -> String {
        self.sql(
            r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_reader') THEN CREATE ROLE tidemark_reader; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_stream') THEN CREATE ROLE tidemark_stream; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tidemark_reconciler') THEN CREATE ROLE tidemark_reconciler; END IF;
END $$;
GRANT USAGE ON SCHEMA {s} TO tidemark_reader, tidemark_stream, tidemark_reconciler;
GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO tidemark_reader, tidemark_stream, tidemark_reconciler;
GRANT INSERT, UPDATE ON {s}.serving_rows, {s}.serving_deltas, {s}.progress TO tidemark_stream;
GRANT INSERT ON {s}.emissions TO tidemark_stream;
GRANT INSERT, UPDATE ON {s}.serving_rows, {s}.correction_batches, {s}.corrections_audit TO tidemark_reconciler;
CREATE OR REPLACE FUNCTION {s}.tidemark_guard_batch_rows() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF (NEW.layer = 'batch' OR (TG_OP = 'UPDATE' AND OLD.layer = 'batch'))
     AND pg_has_role(current_user, 'tidemark_stream', 'MEMBER')
     AND NOT pg_has_role(current_user, 'tidemark_reconciler', 'MEMBER') THEN
    RAISE EXCEPTION 'role % may not create or change batch-layer rows', current_user USING ERRCODE = '42501';
  END IF;
  RETURN NEW;
END $f$;
DROP TRIGGER IF EXISTS guard_batch_rows ON {s}.serving_rows;
CREATE TRIGGER guard_batch_rows BEFORE INSERT OR UPDATE ON {s}.serving_rows
  FOR EACH ROW EXECUTE FUNCTION {s}.tidemark_guard_batch_rows();
"#,
        )
    }

    pub(super) async fn migrate(&self) -> Result<Vec<i32>> {
        let mut guard = self.client().await?;
        let client = guard.as_mut().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let tx = client.transaction().await.map_err(Error::pg("beginning migration"))?;
        let lock_key = format!("tidemark-store:{}", self.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
            .await
            .map_err(Error::pg("taking the migration lock"))?;
        tx.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
        ))
        .await
        .map_err(Error::pg("creating the migrations table"))?;
        let done: Vec<i32> = tx
            .query(&self.sql("SELECT version FROM {s}.schema_migrations"), &[])
            .await
            .map_err(Error::pg("reading applied migrations"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut applied = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(&self.sql(sql)).await.map_err(Error::pg("applying a migration"))?;
            tx.execute(
                &self.sql("INSERT INTO {s}.schema_migrations (version, name) VALUES ($1, $2)"),
                &[version, name],
            )
            .await
            .map_err(Error::pg("recording a migration"))?;
            applied.push(*version);
        }
        tx.commit().await.map_err(Error::pg("committing migrations"))?;
        Ok(applied)
    }

    /// Applied migration versions, ascending.
    pub async fn migrations(&self) -> Result<Vec<i32>> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::Corrupt("no connection".into()))?;
        let rows = client
            .query(&self.sql("SELECT version FROM {s}.schema_migrations ORDER BY version"), &[])
            .await
            .map_err(Error::pg("reading migrations"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
