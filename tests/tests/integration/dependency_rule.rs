//! The crate dependency rules of docs/ARCHITECTURE.md, checked over `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};

use cargo_metadata::{DependencyKind, Metadata, MetadataCommand, PackageId};

fn metadata() -> Metadata {
    MetadataCommand::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .exec()
        .expect("cargo metadata runs")
}

/// Package name -> names of every package it depends on transitively through normal and build
/// dependencies (dev-dependencies do not ship, so they do not count).
fn closures(meta: &Metadata) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = meta.resolve.as_ref().expect("metadata has a resolve graph");
    let name = |id: &PackageId| meta[id].name.to_string();
    let edges: BTreeMap<&PackageId, Vec<&PackageId>> = resolve
        .nodes
        .iter()
        .map(|n| {
            let deps = n
                .deps
                .iter()
                .filter(|d| d.dep_kinds.iter().any(|k| k.kind != DependencyKind::Development))
                .map(|d| &d.pkg)
                .collect();
            (&n.id, deps)
        })
        .collect();
    let mut out = BTreeMap::new();
    for member in &meta.workspace_members {
        let mut seen = BTreeSet::new();
        let mut stack = vec![member];
        while let Some(id) = stack.pop() {
            for dep in edges.get(id).into_iter().flatten() {
                if seen.insert(name(dep)) {
                    stack.push(dep);
                }
            }
        }
        out.insert(name(member), seen);
    }
    out
}

#[test]
fn layers_never_depend_on_each_other() {
    let deps = closures(&metadata());
    let layers = ["tidemark-stream", "tidemark-batch", "tidemark-reconcile"];
    for a in layers {
        let of_a = deps.get(a).unwrap_or_else(|| panic!("{a} is a workspace member"));
        for b in layers.iter().filter(|b| **b != a) {
            assert!(!of_a.contains(*b), "{a} depends on {b}: the layers must stay independent");
        }
    }
}

#[test]
fn core_and_store_stay_below_the_layers() {
    let deps = closures(&metadata());
    let core = &deps["tidemark-core"];
    for heavy in ["tokio", "rdkafka", "polars", "deltalake", "object_store", "tokio-postgres"] {
        assert!(!core.contains(heavy), "tidemark-core must stay pure, but depends on {heavy}");
    }
    assert!(!core.iter().any(|d| d.starts_with("tidemark-")), "tidemark-core depends on {core:?}");
    let store = &deps["tidemark-store"];
    for upper in ["tidemark-stream", "tidemark-batch", "tidemark-reconcile", "tidemark-cli"] {
        assert!(!store.contains(upper), "tidemark-store depends on {upper}");
    }
    // the check itself sees real edges
    assert!(core.contains("serde"), "{core:?}");
}
