//! The OpenAPI 3 description of the HTTP interface, served at `/openapi.json`.
//!
//! It is assembled from the same constants the server answers with (content types
//! from `cache::key::Kind`, NAR extensions from `cache::key`, the statuses of
//! `http::error`), and a unit test checks every example path against the real key
//! parser and every documented route against the metrics router, so the document
//! cannot drift from the code without a test failing. `openapi.json` at the root of
//! the repository is a copy for readers, compared with this one by the same tests.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

mod objects;
mod page;

use objects::{object_path, object_routes};

/// The document, rendered once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_string_pretty(&build()).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
}

fn text(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "text/plain; charset=utf-8": { "schema": { "type": "string" } } }
    })
}

fn empty(description: &str) -> Value {
    json!({ "description": description })
}

/// The answers every cache-object operation may give besides its success.
fn errors(r: &mut Map<String, Value>, codes: &[(&str, &str)]) {
    for (code, why) in codes {
        r.insert((*code).to_owned(), text(why));
    }
}

const AUTH_ERRORS: [(&str, &str); 3] = [
    (
        "401",
        "Credentials are needed (with a `WWW-Authenticate: Basic` challenge) or were wrong",
    ),
    (
        "403",
        "The user may not do this (e.g. the read user uploading)",
    ),
    (
        "429",
        "Too many wrong credentials from this address: retry after `Retry-After` seconds; the credentials sent were not checked",
    ),
];

fn service_path(op: &str, summary: &str, ok: Value, extra: &[(&str, &str)], auth: bool) -> Value {
    let mut get = Map::new();
    get.insert("200".into(), ok);
    errors(&mut get, extra);
    let mut head = Map::new();
    head.insert("200".into(), empty("As GET, without the body"));
    for (code, why) in extra {
        head.insert((*code).to_owned(), empty(why));
    }
    if auth {
        errors(&mut get, &AUTH_ERRORS);
        head.insert("401".into(), empty("Credentials are needed or were wrong"));
        head.insert("403".into(), empty("The user may not read"));
        head.insert(
            "429".into(),
            empty("Too many wrong credentials from this address"),
        );
    }
    let mut get_op = json!({ "summary": summary, "operationId": op, "responses": get });
    let mut head_op =
        json!({ "summary": summary, "operationId": format!("{op}Head"), "responses": head });
    if !auth {
        // Probes and readers need no credentials.
        get_op["security"] = json!([]);
        head_op["security"] = json!([]);
    }
    json!({ "get": get_op, "head": head_op })
}

fn build() -> Value {
    let mut paths = Map::new();
    for route in object_routes() {
        paths.insert(route.template.to_owned(), object_path(&route));
    }
    paths.insert(
        "/metrics".into(),
        service_path(
            "metrics",
            "Prometheus metrics (requests, latency, bytes, rejected uploads, stored objects); 404 when NIX_STORED_METRICS=false",
            json!({ "description": "Metrics in the Prometheus text format",
                    "content": { "text/plain; version=0.0.4; charset=utf-8": { "schema": { "type": "string" } } } }),
            &[("404", "Metrics are turned off")],
            true,
        ),
    );
    paths.insert(
        "/healthz".into(),
        service_path(
            "healthz",
            "Liveness: the process answers",
            text("ok"),
            &[],
            false,
        ),
    );
    paths.insert(
        "/readyz".into(),
        service_path(
            "readyz",
            "Readiness: the storage backend answers a lookup",
            text("ready"),
            &[(
                "503",
                "The storage backend does not answer (one-line reason)",
            )],
            false,
        ),
    );
    paths.insert(
        "/openapi.json".into(),
        service_path(
            "openapi",
            "This document",
            json!({ "description": "The OpenAPI 3 document", "content": { "application/json": { "schema": { "type": "object" } } } }),
            &[],
            false,
        ),
    );
    page::add(&mut paths);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "nix-stored",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A Nix binary cache server: the binary cache protocol as Nix clients use it (GET, HEAD and PUT of cache objects), plus metrics, health, this document, and a page for people (`/`) with its data as JSON (`/api/…`). Other methods are answered 405 with an Allow header."
        },
        "components": {
            "securitySchemes": { "basic": { "type": "http", "scheme": "basic" } }
        },
        // Credentials are optional: reads are public unless a read user is configured,
        // and uploads are anonymous when NIX_STORED_ANONYMOUS_WRITES is on.
        "security": [ { "basic": [] }, {} ],
        "paths": paths
    })
}

#[cfg(test)]
mod tests {
    use super::objects::regex_escape;
    use super::*;
    use crate::cache::key::{ObjectKey, NAR_EXTENSIONS};
    use crate::http::metrics::Route;
    use crate::http::router::Target;

    #[test]
    fn examples_are_keys_of_their_kind() {
        for route in object_routes() {
            let path = match &route.param {
                Some((name, _, example)) => route.template.replace(&format!("{{{name}}}"), example),
                None => route
                    .template
                    .replace("{drv}", "nx73vzmbhpb3836sq4af0c7y7rlw5z6y-hello-2.12.drv")
                    .replace("{output}", "out.doi"),
            };
            let key = ObjectKey::parse(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(key.kind(), route.kind, "{path}");
            assert_ne!(Target::parse(&path).label(), Route::Other, "{path}");
        }
    }

    #[test]
    fn service_paths_are_routed_and_never_keys() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        for path in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/",
            "/api/summary",
            "/api/search",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} undocumented");
            assert!(ObjectKey::parse(path).is_err(), "{path} would shadow a key");
            assert!(
                !matches!(
                    Target::parse(path).label(),
                    Route::Other | Route::NarInfo | Route::Nar
                ),
                "{path}"
            );
        }
        for template in ["/path/{hash}", "/api/path/{hash}"] {
            assert!(
                doc["paths"][template].is_object(),
                "{template} undocumented"
            );
            let path = template.replace("{hash}", "nx73vzmbhpb3836sq4af0c7y7rlw5z6y");
            assert!(
                matches!(Target::parse(&path).label(), Route::Page | Route::Api),
                "{path}"
            );
        }
    }

    #[test]
    fn every_nar_extension_is_documented() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let pattern = doc["paths"]["/nar/{file}"]["parameters"][0]["schema"]["pattern"]
            .as_str()
            .unwrap()
            .to_owned();
        for ext in NAR_EXTENSIONS.iter().filter(|e| !e.is_empty()) {
            assert!(pattern.contains(&regex_escape(ext)), "{ext} in {pattern}");
        }
    }

    /// The copy committed for readers is the document the server serves.
    #[test]
    fn committed_copy_is_current() {
        let committed = include_str!("../../../openapi.json");
        assert_eq!(
            committed.trim_end(),
            document(),
            "openapi.json is stale: run `cargo run -- --print-openapi > openapi.json`"
        );
    }
}
