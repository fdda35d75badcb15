//! The Delta and object-store tables beside the serving store: the raw event archive the stream service
//! appends to and the batch layer reads, the batch view the batch layer writes and the reconciler reads,
//! and the dead-letter store. They share the crate's Delta plumbing, never a serving-store driver.

pub(crate) mod archive;
pub(crate) mod batch_view;
pub(crate) mod dead_letter;
