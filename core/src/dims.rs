//! Dimension values of a metric row and their canonical encoding.
//!
//! Both layers must produce byte-identical keys for the same row, so dimensions have exactly one text
//! form: `name=value` pairs sorted by name, joined by `&`, with `%`, `&`, `=` and NUL in values written as
//! `%25`, `%26`, `%3D` and `%00` (names are identifiers and need no escaping; NUL is escaped because
//! Postgres text cannot hold it, and a value that decodes must never be unstorable). No dimensions
//! encode as `""`.
//! Example: `country=DE&page=/a%26b`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// The dimension values of a row, sorted by dimension name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dimensions(Vec<(String, String)>);

impl Dimensions {
    /// Dimensions from `(name, value)` pairs in any order. Names must be distinct (the spec guarantees it
    /// for the dimensions of a metric); a repeated name keeps its first value.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut v: Vec<(String, String)> = pairs.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, first| later.0 == first.0);
        Dimensions(v)
    }

    /// No dimensions.
    pub fn none() -> Self {
        Dimensions(Vec::new())
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of dimension `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The canonical text form.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            escape_into(value, &mut out);
        }
        out
    }

    /// Parses the canonical text form.
    pub fn decode(key: &str) -> Result<Self, Error> {
        if key.is_empty() {
            return Ok(Dimensions::none());
        }
        let bad = |reason| Error::DimensionKey { key: key.to_owned(), reason };
        let mut pairs = Vec::new();
        for part in key.split('&') {
            let (name, value) = part.split_once('=').ok_or_else(|| bad("a pair has no '='"))?;
            pairs.push((name.to_owned(), unescape(value).ok_or_else(|| bad("bad %-escape"))?));
        }
        let dims = Dimensions(pairs);
        if !dims.0.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(bad("names are not sorted and distinct"));
        }
        Ok(dims)
    }
}

/// Appends `value` with `%`, `&`, `=` escaped.
pub fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '%' => out.push_str("%25"),
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "26" => '&',
            "3D" => '=',
            "00" => '\0',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    if rest.contains('&') || rest.contains('=') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

impl fmt::Display for Dimensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl Serialize for Dimensions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Dimensions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dimensions::decode(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_regardless_of_input_order() {
        let a = Dimensions::new([("page".into(), "/a&b=c%".into()), ("country".into(), "DE".into())]);
        let b = Dimensions::new([("country".into(), "DE".into()), ("page".into(), "/a&b=c%".into())]);
        assert_eq!(a.encode(), "country=DE&page=/a%26b%3Dc%25");
        assert_eq!(a.encode(), b.encode());
        assert_eq!(Dimensions::decode(&a.encode()).unwrap(), a);
        assert_eq!(Dimensions::none().encode(), "");
        assert_eq!(a.get("page"), Some("/a&b=c%"));
    }

    /// Found by the hostile-values test (issue 8): a NUL in a dimension value decoded, but the stores refuse
    /// NUL in stored text, so one such event stopped the stream service at every flush.
    #[test]
    fn issue_8_nul_in_a_value_is_escaped() {
        let d = Dimensions::new([("page".into(), "/a\0b%00".into())]);
        assert_eq!(d.encode(), "page=/a%00b%2500");
        assert!(!d.encode().contains('\0'));
        assert_eq!(Dimensions::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn malformed_keys_are_errors() {
        for bad in ["country", "b=1&a=2", "a=%2", "a=%41", "a=1&a=2"] {
            assert!(Dimensions::decode(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn encoding_round_trips(values in prop::collection::btree_map("[a-z_][a-z0-9_]{0,8}", "(.|\\x00)*", 0..5)) {
            let dims = Dimensions::new(values.clone());
            let decoded = Dimensions::decode(&dims.encode()).unwrap();
            prop_assert_eq!(decoded.pairs(), dims.pairs());
            prop_assert_eq!(dims.pairs().len(), values.len());
        }
    }
}
