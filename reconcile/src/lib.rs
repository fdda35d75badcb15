//! tidemark-reconcile (not yet built): will diff the batch view against the serving store per
//! (metric, window, dimensions), explain each difference, apply idempotent corrections with an audit log,
//! and produce the contract report, backfill and lateness advice. See issue "Reconciler, backfill,
//! contract report and lateness advice". It depends on tidemark-core and tidemark-store only, never on
//! tidemark-stream or tidemark-batch.
