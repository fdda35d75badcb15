//! Source progress as both serving-store drivers persist it: the checks every write's progress passes, and
//! the JSON codec of its offsets (a list of `{topic, partition, offset}`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::{self, SourceProgress, TopicPartition};

pub(crate) fn check_progress(p: &SourceProgress) -> Result<()> {
    model::check_id("pipeline", &p.pipeline)?;
    if p.writer_epoch == 0 || p.writer_epoch > u64::from(u32::MAX >> 1) {
        return Err(Error::invalid("writer epoch", "must be from claim_writer (1 ..= 2^31 - 1)"));
    }
    if p.sequence == 0 || p.sequence > u64::from(u32::MAX) {
        return Err(Error::invalid("sequence", "must be 1 ..= 2^32 - 1"));
    }
    for tp in p.offsets.keys() {
        model::check_text("topic", &tp.topic)?;
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OffsetJson {
    topic: String,
    partition: i32,
    offset: i64,
}

pub(crate) fn offsets_to_json(offsets: &BTreeMap<TopicPartition, i64>) -> String {
    let list: Vec<OffsetJson> = offsets
        .iter()
        .map(|(tp, o)| OffsetJson { topic: tp.topic.clone(), partition: tp.partition, offset: *o })
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn offsets_from_json(s: &str) -> Result<BTreeMap<TopicPartition, i64>> {
    let list: Vec<OffsetJson> = serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("offsets: {e}")))?;
    Ok(list.into_iter().map(|o| (TopicPartition::new(o.topic, o.partition), o.offset)).collect())
}
