//! Source coordinates: where an event came from (topic or file, partition, offset), enough to find it
//! again. Dead letters, late-ledger records and raw-archive rows carry them.

/// Where an event came from: enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SourceCoordinates {
    /// Topic, or file path.
    pub source: String,
    /// Kafka partition (0 for files).
    pub partition: i32,
    /// Kafka offset, or 0-based line number.
    pub offset: i64,
}

impl std::fmt::Display for SourceCoordinates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.source, self.partition, self.offset)
    }
}
