//! The page for people and its JSON API in the document.

use serde_json::{json, Map, Value};

use super::service_path;

fn html(description: &str) -> Value {
    json!({ "description": description, "content": { "text/html; charset=utf-8": { "schema": { "type": "string" } } } })
}

fn json_body(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn path_summary() -> Value {
    json!({
        "type": "object",
        "properties": {
            "hash": { "type": "string", "description": "Store hash (nix32)" },
            "name": { "type": "string", "description": "Name after the hash" },
            "narSize": { "type": "integer" },
            "fileSize": { "type": "integer" },
            "stored": { "type": "integer", "description": "When its narinfo was stored, seconds since the epoch" },
            "signers": { "type": "array", "items": { "type": "string", "nullable": true }, "description": "Key names of its signatures (null: a key beyond the catalog's table of names)" }
        }
    })
}

fn link() -> Value {
    json!({ "type": "object", "properties": {
        "hash": { "type": "string" },
        "name": { "type": "string", "nullable": true, "description": "null when its narinfo is not stored" }
    } })
}

fn counts() -> Value {
    json!({ "type": "object", "properties": {
        "uploads": { "type": "integer" }, "downloads": { "type": "integer" },
        "hits": { "type": "integer" }, "misses": { "type": "integer" },
        "hitRate": { "type": "number", "nullable": true }
    } })
}

fn hash_param() -> Value {
    json!({ "name": "hash", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": "^[0-9a-df-np-sv-z]{32}$" },
            "example": "nx73vzmbhpb3836sq4af0c7y7rlw5z6y" })
}

fn with_params(mut path: Value, params: Value) -> Value {
    path["parameters"] = params;
    path
}

const NOT_FOUND: [(&str, &str); 1] = [("404", "No stored path has this hash")];

/// Adds `/`, `/path/{hash}` and `/api/…`.
pub(super) fn add(paths: &mut Map<String, Value>) {
    let q = json!({ "name": "q", "in": "query", "required": false,
                    "schema": { "type": "string" }, "description": "Part of a store path name (case-sensitive)" });
    paths.insert(
        "/".into(),
        with_params(
            service_path("page", "The page for people: how to use the cache, its figures, the latest uploads and (with `q`) a search by name", html("The page"), &[], true),
            json!([q.clone()]),
        ),
    );
    paths.insert(
        "/path/{hash}".into(),
        with_params(
            service_path("pathPage", "A stored path's page: narinfo fields, references, referrers, closure size and a link to its NAR", html("The path's page"), &NOT_FOUND, true),
            json!([hash_param()]),
        ),
    );
    paths.insert(
        "/api/summary".into(),
        service_path(
            "apiSummary",
            "The page's summary as JSON",
            json_body("How to use the cache, figures, activity and the latest uploads", json!({
                "type": "object",
                "properties": {
                    "usage": { "type": "object", "properties": {
                        "url": { "type": "string" }, "storeDir": { "type": "string" },
                        "priority": { "type": "integer" }, "readAuth": { "type": "boolean" },
                        "trustedPublicKeys": { "type": "array", "items": { "type": "string" } },
                        "signers": { "type": "array", "items": { "type": "object", "properties": {
                            "name": { "type": "string", "nullable": true }, "paths": { "type": "integer" } } } }
                    } },
                    "figures": { "type": "object", "properties": {
                        "paths": { "type": "integer" }, "narBytes": { "type": "integer" },
                        "fileBytes": { "type": "integer" },
                        "complete": { "type": "boolean", "description": "false while the start-up listing runs" },
                        "quota": { "type": "object", "nullable": true, "properties": {
                            "storedBytes": { "type": "integer" }, "maxBytes": { "type": "integer" } } }
                    } },
                    "activity": { "type": "object", "properties": { "hour": counts(), "day": counts() } },
                    "latest": { "type": "array", "items": path_summary() }
                }
            })),
            &[],
            true,
        ),
    );
    let limit = json!({ "name": "limit", "in": "query", "required": false,
                        "schema": { "type": "integer", "minimum": 1, "maximum": 200, "default": 50 } });
    paths.insert(
        "/api/search".into(),
        with_params(
            service_path(
                "apiSearch",
                "Stored paths whose name contains `q`, newest first",
                json_body(
                    "The results",
                    json!({ "type": "object", "properties": {
                    "query": { "type": "string" },
                    "results": { "type": "array", "items": path_summary() } } }),
                ),
                &[("400", "A limit that is no number from 1 to 200")],
                true,
            ),
            json!([q, limit]),
        ),
    );
    paths.insert(
        "/api/path/{hash}".into(),
        with_params(
            service_path(
                "apiPath",
                "A stored path as JSON",
                json_body("The path, its narinfo fields, neighbours and closure", json!({ "type": "object", "properties": {
                    "path": path_summary(),
                    "narinfo": { "type": "object", "additionalProperties": true, "description": "The stored narinfo's fields; a repeated one (Sig) as a list" },
                    "nar": { "type": "string", "nullable": true, "description": "Its NAR's key, relative to the cache's URL" },
                    "references": { "type": "array", "items": link() },
                    "referrers": { "type": "array", "items": link(), "description": "At most 500, newest first" },
                    "referrersTotal": { "type": "integer" },
                    "closure": { "type": "object", "properties": {
                        "paths": { "type": "integer" }, "narBytes": { "type": "integer" },
                        "missing": { "type": "integer", "description": "Paths of the closure not in this cache" },
                        "complete": { "type": "boolean", "description": "false when the closure was walked to 50,000 paths only: the figures are then lower bounds" } } }
                } })),
                &NOT_FOUND,
                true,
            ),
            json!([hash_param()]),
        ),
    );
}
