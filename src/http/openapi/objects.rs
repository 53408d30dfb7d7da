//! The cache objects' part of the document: one path template per kind of object,
//! with its parameter's pattern, example and answers.

use serde_json::{json, Map, Value};

use super::{empty, errors, text, AUTH_ERRORS};
use crate::cache::key::{Kind, NAR_EXTENSIONS};

/// A nix32 character class (Nix's base-32 alphabet: no e, o, u, t).
const NIX32: &str = "[0-9a-df-np-sv-z]";
/// What Nix accepts in a store path name after the hash, never starting with a dot.
const NAME: &str = "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,200}";

/// One kind of cache object: a path template with one parameter.
pub(super) struct ObjectRoute {
    pub(super) kind: Kind,
    pub(super) template: &'static str,
    pub(super) param: Option<(&'static str, String, &'static str)>,
    summary: &'static str,
    put: &'static str,
}

pub(super) fn object_routes() -> Vec<ObjectRoute> {
    let exts: Vec<String> = NAR_EXTENSIONS
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| regex_escape(e))
        .collect();
    vec![
        ObjectRoute {
            kind: Kind::CacheInfo,
            template: "/nix-cache-info",
            param: None,
            summary: "The cache's description (StoreDir, WantMassQuery, Priority), generated from the settings",
            put: "Accepted and ignored: the document is generated from the settings",
        },
        ObjectRoute {
            kind: Kind::NarInfo,
            template: "/{hash}.narinfo",
            param: Some((
                "hash",
                format!("^{NIX32}{{32}}$"),
                "nx73vzmbhpb3836sq4af0c7y7rlw5z6y",
            )),
            summary: "A store path's narinfo",
            put: "Stores a narinfo once it parses as Nix parses it, names this hash, points at a NAR of the declared size that the cache has and that decodes to its NarHash and NarSize, and (with trusted keys) is signed",
        },
        ObjectRoute {
            kind: Kind::Listing,
            template: "/{hash}.ls",
            param: Some((
                "hash",
                format!("^{NIX32}{{32}}$"),
                "nx73vzmbhpb3836sq4af0c7y7rlw5z6y",
            )),
            summary: "The file listing of a store path's NAR (JSON)",
            put: "Stores a listing",
        },
        ObjectRoute {
            kind: Kind::Nar,
            template: "/nar/{file}",
            param: Some((
                "file",
                format!("^[01]{NIX32}{{51}}\\.nar({})?$", exts.join("|")),
                "1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p.nar.xz",
            )),
            summary: "A NAR file, named by the nix32 SHA-256 of its (possibly compressed) bytes; supports Range",
            put: "Stores a NAR once its bytes hash to the name and decompress (as the extension says) to one valid NAR",
        },
        ObjectRoute {
            kind: Kind::Log,
            template: "/log/{drv}",
            param: Some((
                "drv",
                format!("^{NIX32}{{32}}-{NAME}\\.drv$"),
                "nx73vzmbhpb3836sq4af0c7y7rlw5z6y-hello-2.12.drv",
            )),
            summary: "The build log of a derivation",
            put: "Stores a build log",
        },
        ObjectRoute {
            kind: Kind::DebugInfo,
            template: "/debuginfo/{id}",
            param: Some((
                "id",
                "^[0-9a-f]{40}\\.debug$".to_owned(),
                "02623eda209c26a59b1a8638ff7752f6b945c26b.debug",
            )),
            summary: "A debug-info link by ELF build id (JSON)",
            put: "Stores a debug-info link (a JSON object)",
        },
        ObjectRoute {
            kind: Kind::Realisation,
            template: "/realisations/{id}",
            param: Some((
                "id",
                format!("^sha256:[0-9a-f]{{64}}!{NAME}\\.doi$"),
                "sha256:5a2bd4f1b6b8b6d4a6ab4e9b1fb66f0a3a8e1f2b7f57d3ac0d2f6b7a4b1c9d0e!out.doi",
            )),
            summary: "A realisation of a content-addressed derivation output (JSON)",
            put: "Stores a realisation (a JSON object)",
        },
        ObjectRoute {
            kind: Kind::Realisation,
            template: "/build-trace-v2/{drv}/{output}",
            param: None,
            summary: "A build trace entry (JSON), the newer form of realisations",
            put: "Stores a build trace entry (a JSON object)",
        },
    ]
}

pub(super) fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

pub(super) fn object_path(route: &ObjectRoute) -> Value {
    let ctype = route.kind.content_type();
    let schema = match route.kind {
        Kind::Listing | Kind::DebugInfo | Kind::Realisation => json!({ "type": "object" }),
        Kind::Nar => json!({ "type": "string", "format": "binary" }),
        Kind::CacheInfo | Kind::NarInfo | Kind::Log => json!({ "type": "string" }),
    };
    let body = json!({ ctype: { "schema": schema } });
    // Uploads are recognised by their path, whatever their Content-Type.
    let mut upload = body.clone();
    if route.kind == Kind::Nar {
        upload["application/octet-stream"] = json!({ "schema": schema });
    }
    if route.kind == Kind::CacheInfo {
        // Ignored whatever it holds.
        upload = json!({ ctype: { "schema": {} } });
    }
    let mut params = Vec::new();
    if let Some((name, pattern, example)) = &route.param {
        params.push(json!({
            "name": name, "in": "path", "required": true,
            "schema": { "type": "string", "pattern": pattern }, "example": example
        }));
    } else if route.template.starts_with("/build-trace-v2/") {
        params.push(json!({
            "name": "drv", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": format!("^{NIX32}{{32}}-{NAME}\\.drv$") },
            "example": "nx73vzmbhpb3836sq4af0c7y7rlw5z6y-hello-2.12.drv"
        }));
        params.push(json!({
            "name": "output", "in": "path", "required": true,
            "schema": { "type": "string", "pattern": format!("^{NAME}\\.doi$") },
            "example": "out.doi"
        }));
    }
    let mut get = Map::new();
    get.insert(
        "200".into(),
        json!({ "description": "The object", "content": body.clone() }),
    );
    if route.kind != Kind::CacheInfo {
        get.insert(
            "206".into(),
            json!({ "description": "The requested byte range (`Range: bytes=…`)", "content": body.clone() }),
        );
        get.insert(
            "416".into(),
            text("The range starts beyond the end of the object"),
        );
        get.insert(
            "304".into(),
            empty("`If-None-Match` names the object's current `ETag`: the copy the client or cache has is current"),
        );
        get.insert(
            "404".into(),
            text("The cache does not have this object (or the path is not a valid key)"),
        );
    }
    errors(&mut get, &AUTH_ERRORS);
    get.insert("500".into(), text("The storage failed to read the object"));
    get.insert("502".into(), text("The storage denied the server access"));
    get.insert(
        "503".into(),
        text("The storage is unavailable; retry after Retry-After seconds"),
    );
    let mut head = Map::new();
    head.insert(
        "200".into(),
        empty("The object exists; `Content-Length` is its size"),
    );
    if route.kind != Kind::CacheInfo {
        head.insert("404".into(), empty("The cache does not have this object"));
        head.insert(
            "304".into(),
            empty("`If-None-Match` names the object's current `ETag`"),
        );
    }
    head.insert("401".into(), empty("Credentials are needed or were wrong"));
    head.insert("403".into(), empty("The user may not read"));
    head.insert(
        "429".into(),
        empty("Too many wrong credentials from this address"),
    );
    head.insert("500".into(), empty("The storage failed"));
    head.insert("502".into(), empty("The storage denied the server access"));
    head.insert("503".into(), empty("The storage is unavailable"));
    let mut put = Map::new();
    if route.kind == Kind::CacheInfo {
        put.insert("204".into(), empty(route.put));
    } else {
        put.insert("201".into(), empty("Stored; the key was new"));
        put.insert(
            "204".into(),
            empty("Stored; it replaced the previous object"),
        );
    }
    errors(
        &mut put,
        &[
            ("400", "The key or the body broke a verification rule (one-line reason); nothing was stored"),
            ("408", "The body stopped arriving; nothing was stored"),
            ("413", "The body is larger than the limit for this kind of object"),
            ("415", "The body is content-encoded; upload it without Content-Encoding"),
            ("500", "The storage failed; nothing was stored"),
            ("502", "The storage denied the server access; nothing was stored"),
            ("503", "The memory budget (NIX_STORED_MEMORY_BUDGET) is taken by other uploads, or the storage is unavailable; nothing was stored, retry after Retry-After seconds"),
            ("507", "The storage is full; nothing was stored"),
        ],
    );
    if route.kind == Kind::NarInfo {
        errors(
            &mut put,
            &[(
                "409",
                "The path is already in this cache with other contents (NarHash, NarSize, References, Deriver or CA); a stored path never changes, only signatures are added",
            )],
        );
    }
    errors(&mut put, &AUTH_ERRORS);
    json!({
        "parameters": params,
        "get": { "summary": route.summary, "operationId": format!("get{}", op_name(route)), "responses": get },
        "head": { "summary": format!("{} (headers only)", route.summary), "operationId": format!("head{}", op_name(route)), "responses": head },
        "put": {
            "summary": route.put, "operationId": format!("put{}", op_name(route)),
            // nix-cache-info uploads are ignored, with or without a body; a build that
            // printed nothing has an empty log.
            "requestBody": {
                "required": !matches!(route.kind, Kind::CacheInfo | Kind::Log),
                "content": upload
            },
            "responses": put
        }
    })
}

fn op_name(route: &ObjectRoute) -> String {
    let name = match route.kind {
        Kind::CacheInfo => "CacheInfo",
        Kind::NarInfo => "NarInfo",
        Kind::Nar => "Nar",
        Kind::Listing => "Listing",
        Kind::Log => "Log",
        Kind::DebugInfo => "DebugInfo",
        Kind::Realisation if route.template.starts_with("/build-trace") => "BuildTrace",
        Kind::Realisation => "Realisation",
    };
    name.to_owned()
}
