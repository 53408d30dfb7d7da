//! The page's data as JSON (`/api/...`); serde_json escapes every string.

use serde_json::{json, Value};

use super::super::metrics::activity::Counts;
use super::view::{PathView, Summary, Usage};
use crate::cache::catalog::{PathLink, PathSummary};

/// One path as lists show it.
pub fn path_summary(p: &PathSummary) -> Value {
    json!({
        "hash": p.hash,
        "name": p.name,
        "narSize": p.nar_size,
        "fileSize": p.file_size,
        "stored": p.stored,
        "signers": p.signers,
    })
}

fn counts(c: &Counts) -> Value {
    json!({
        "uploads": c.uploads,
        "downloads": c.downloads,
        "hits": c.hits,
        "misses": c.misses,
        "hitRate": c.hit_rate(),
    })
}

fn usage(u: &Usage) -> Value {
    json!({
        "url": u.url,
        "storeDir": u.store_dir,
        "priority": u.priority,
        "readAuth": u.read_auth,
        "trustedPublicKeys": u.trusted_keys,
        "signers": u.signers.iter().map(|s| json!({"name": s.name, "paths": s.paths})).collect::<Vec<_>>(),
    })
}

/// `/api/summary`.
pub fn summary(s: &Summary) -> Value {
    json!({
        "usage": usage(&s.usage),
        "figures": {
            "paths": s.figures.paths,
            "narBytes": s.figures.nar_bytes,
            "fileBytes": s.figures.file_bytes,
            "complete": s.figures.complete,
            "quota": s.quota.map(|(stored, max)| json!({"storedBytes": stored, "maxBytes": max})),
        },
        "activity": { "hour": counts(&s.hour), "day": counts(&s.day) },
        "latest": s.latest.iter().map(path_summary).collect::<Vec<_>>(),
    })
}

/// `/api/search`.
pub fn search(query: &str, results: &[PathSummary]) -> Value {
    json!({
        "query": query,
        "results": results.iter().map(path_summary).collect::<Vec<_>>(),
    })
}

fn links(l: &[PathLink]) -> Vec<Value> {
    l.iter()
        .map(|l| json!({"hash": l.hash, "name": l.name}))
        .collect()
}

/// `/api/path/<hash>`.
pub fn path(v: &PathView) -> Value {
    let d = &v.detail;
    let fields: serde_json::Map<String, Value> =
        v.fields
            .iter()
            .fold(serde_json::Map::new(), |mut m, (k, val)| {
                // A field given twice (Sig) becomes a list.
                match m.get_mut(k) {
                    Some(Value::Array(a)) => a.push(json!(val)),
                    Some(one) => *one = json!([one.clone(), val]),
                    None => {
                        m.insert(k.clone(), json!(val));
                    }
                }
                m
            });
    json!({
        "path": path_summary(&d.summary),
        "narinfo": fields,
        "nar": v.nar,
        "references": links(&d.references),
        "referrers": links(&d.referrers),
        "referrersTotal": d.referrers_total,
        "closure": {
            "paths": d.closure.paths,
            "narBytes": d.closure.nar_size,
            "missing": d.closure.missing,
            "complete": d.closure.complete,
        },
    })
}
