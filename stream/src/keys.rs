//! Dimension keys of one metric, interned: an event's key is looked up by a compact encoding of its
//! dimension values without allocating, and rows refer to it by a small id.

use foldhash::HashMap;
use tidemark_core::{CompiledMetric, Dimensions, Event};

#[derive(Debug, Clone)]
struct Slot {
    encoded: Box<[u8]>,
    dims: Dimensions,
    /// Live rows using the key.
    rows: u32,
}

/// The live dimension keys of one metric. A key is freed (and its id reused) when its last row is purged.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyTable {
    ids: HashMap<Box<[u8]>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    buf: Vec<u8>,
}

impl KeyTable {
    /// The id of the event's key for `metric`, created if new (with no rows: call [`KeyTable::settle`]
    /// after routing).
    pub(crate) fn intern(&mut self, metric: &CompiledMetric, event: &Event) -> u32 {
        self.encode(metric.dims.iter().map(|(_, i)| &*event.dims[*i]));
        self.lookup_or_insert(|| metric.dimensions_of(event))
    }

    /// The id of a key given by its dimensions (restoring a checkpoint), created if new.
    pub(crate) fn intern_dims(&mut self, metric: &CompiledMetric, dims: &Dimensions) -> u32 {
        self.encode(metric.dims.iter().map(|(n, _)| dims.get(n).unwrap_or("")));
        self.lookup_or_insert(|| dims.clone())
    }

    /// Writes the values into `buf`, each after its length (8 bytes), so the encoding is unambiguous for
    /// any values.
    fn encode<'a>(&mut self, values: impl Iterator<Item = &'a str>) {
        self.buf.clear();
        for v in values {
            self.buf.extend_from_slice(&(v.len() as u64).to_le_bytes());
            self.buf.extend_from_slice(v.as_bytes());
        }
    }

    fn lookup_or_insert(&mut self, dims: impl FnOnce() -> Dimensions) -> u32 {
        if let Some(&id) = self.ids.get(self.buf.as_slice()) {
            return id;
        }
        let encoded: Box<[u8]> = self.buf.as_slice().into();
        let slot = Slot { encoded: encoded.clone(), dims: dims(), rows: 0 };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 live keys")
            }
        };
        self.ids.insert(encoded, id);
        id
    }

    /// The dimensions of a live key (rows only hold ids of live keys).
    pub(crate) fn dims(&self, id: u32) -> &Dimensions {
        match self.slots.get(id as usize) {
            Some(Some(s)) => &s.dims,
            _ => panic!("key {id} is not live"),
        }
    }

    /// One more live row uses the key.
    pub(crate) fn retain(&mut self, id: u32) {
        if let Some(Some(s)) = self.slots.get_mut(id as usize) {
            s.rows += 1;
        }
    }

    /// One row using the key was purged.
    pub(crate) fn release(&mut self, id: u32) {
        if let Some(Some(s)) = self.slots.get_mut(id as usize) {
            s.rows = s.rows.saturating_sub(1);
        }
        self.settle(id);
    }

    /// Frees the key if no row uses it.
    pub(crate) fn settle(&mut self, id: u32) {
        if let Some(slot) = self.slots.get_mut(id as usize)
            && slot.as_ref().is_some_and(|s| s.rows == 0)
            && let Some(s) = slot.take()
        {
            self.ids.remove(&s.encoded);
            self.free.push(id);
        }
    }

    /// Number of live keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_core::{EventTime, PipelineSpec};

    fn metric() -> CompiledMetric {
        let text = r#"version = 1
name = "t"
[source]
type = "file"
path = "/x.jsonl"
[event]
id = "id"
time = { field = "ts", format = "epoch_s" }
dimensions = ["a", "b"]
[[metrics]]
name = "m"
dimensions = ["b", "a"]
window = { type = "tumbling", size = "1m" }
aggregates = [{ name = "n", fn = "count" }]
[stores]
raw_archive = "memory://r"
serving = "memory://s"
dead_letter = "memory://d"
batch_view = "memory://b"
"#;
        PipelineSpec::parse(text, "t.toml", None).unwrap().metrics()[0].clone()
    }

    fn event(a: &str, b: &str) -> Event {
        Event { id: "x".into(), time: EventTime::UNIX_EPOCH, dims: vec![a.into(), b.into()], values: vec![] }
    }

    #[test]
    fn keys_are_unambiguous_and_freed_with_their_last_row() {
        let m = metric();
        let mut t = KeyTable::default();
        let k1 = t.intern(&m, &event("1:x", "y"));
        let k2 = t.intern(&m, &event("x", "y1:"));
        assert_ne!(k1, k2, "length prefixes keep look-alike values apart");
        assert_eq!(t.intern(&m, &event("1:x", "y")), k1);
        assert_eq!(t.dims(k1).encode(), "a=1:x&b=y");
        t.retain(k1);
        t.settle(k2);
        assert_eq!(t.len(), 1, "a key no row uses is freed");
        let k3 = t.intern(&m, &event("z", "z"));
        assert_eq!(k3, k2, "ids are reused");
        t.release(k1);
        assert_eq!(t.len(), 1);
    }
}
