//! The page for people, black-box: `GET /`, the path pages, the search and the JSON
//! API with real uploads; read auth; hostile narinfos that must not inject markup;
//! the search and API at 100k paths; and headless Chromium rendering the page on a
//! desktop and a phone (screenshots in `target/page-screenshots/`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A server with the page on (`NIX_STORED_PAGE`: off by default).
fn page_server() -> ServerBuilder {
    ServerBuilder::new().env("NIX_STORED_PAGE", "true")
}

/// On by default, and free until someone opens it: the server keeps no index for
/// it before the first visit, which loads one in the background.
#[test]
fn the_page_is_on_by_default_and_indexed_from_its_first_visit() {
    let s = ServerBuilder::new().start();
    upload(&s, "hello", "hello-2.12.2", &[], None);
    assert!(!s.log().contains("catalog:"), "{}", s.log());
    assert_eq!(get(&s, "/").status, 200);
    let loaded = eventually(Duration::from_secs(20), || {
        let sum = json(&get(&s, "/api/summary"));
        sum["figures"]["paths"] == 1 && sum["figures"]["complete"] == true
    });
    assert!(loaded, "{}", get(&s, "/api/summary").text());
    // Logged once the load is done, which the figures report a moment before.
    assert!(
        eventually(Duration::from_secs(10), || s
            .log()
            .contains("catalog: 1 paths")),
        "{}",
        s.log()
    );
    // Uploads from then on are on it at once.
    let later = upload(&s, "later", "later-1.0", &[], None);
    let r = json(&get(&s, &format!("/api/path/{}", later.hash)));
    assert_eq!(r["path"]["name"], "later-1.0", "{r}");
}

/// Off: `/` and the API answer 404 saying how to turn the page on.
#[test]
fn the_page_can_be_turned_off() {
    let s = ServerBuilder::new().env("NIX_STORED_PAGE", "false").start();
    for path in [
        "/",
        "/api/summary",
        "/api/search?q=x",
        "/path/00000000000000000000000000000000",
    ] {
        let r = get(&s, path);
        assert_eq!(r.status, 404, "{path}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("NIX_STORED_PAGE=true"),
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}
use serde_json::Value;

const STORE: &str = "/nix/store";
const READ_USER: &str = "reader";
const READ_PASS: &str = "read-secret";

/// One uploaded store path.
struct Uploaded {
    hash: String,
    name: String,
    nar_url: String,
}

/// Uploads `name` (NAR from `seed`) referencing `refs`, signed by `signer` if any,
/// with `tweak` applied to the narinfo; returns the narinfo upload's status.
fn upload_with(
    s: &Server,
    auth: &[(&str, &str)],
    seed: &str,
    name: &str,
    refs: &[&Uploaded],
    signer: Option<&str>,
    tweak: impl FnOnce(&mut NarInfo),
) -> (Uploaded, u16) {
    let hash = store_hash(seed);
    let nar = nar_of(format!("contents of {seed}").as_bytes());
    let bases: Vec<String> = refs
        .iter()
        .map(|r| format!("{}-{}", r.hash, r.name))
        .collect();
    let bases: Vec<&str> = bases.iter().map(String::as_str).collect();
    let mut info = NarInfo::uncompressed(STORE, &hash, name, &nar, &bases);
    if let Some(key_name) = signer {
        info.sign(STORE, key_name, &signing_key(7));
    }
    tweak(&mut info);
    let r = send(s.addr, "PUT", &format!("/{}", info.url), auth, &nar);
    assert!(
        matches!(r.status, 201 | 204),
        "NAR: {} {}",
        r.status,
        r.text()
    );
    let r = send(
        s.addr,
        "PUT",
        &format!("/{hash}.narinfo"),
        auth,
        info.render().as_bytes(),
    );
    let up = Uploaded {
        hash,
        name: name.to_owned(),
        nar_url: info.url.clone(),
    };
    (up, r.status)
}

fn upload(
    s: &Server,
    seed: &str,
    name: &str,
    refs: &[&Uploaded],
    signer: Option<&str>,
) -> Uploaded {
    let (up, status) = upload_with(s, &[], seed, name, refs, signer, |_| {});
    assert_eq!(status, 201, "{name}");
    up
}

/// Opens the page (its first visit starts its index) and waits until the index is
/// loaded.
fn open_page(s: &Server, headers: &[(&str, &str)]) {
    let loaded = eventually(Duration::from_secs(20), || {
        let r = send(s.addr, "GET", "/api/summary", headers, b"");
        r.status == 200 && json(&r)["figures"]["complete"] == true
    });
    assert!(loaded, "{}", s.log());
}

fn json(r: &Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("JSON")
}

/// A small cache: glibc, hello (→ glibc), hello-tests (→ hello), two signers.
fn small_cache(s: &Server) -> (Uploaded, Uploaded, Uploaded) {
    let glibc = upload(s, "glibc", "glibc-2.40-66", &[], Some("cache.test-1"));
    let hello = upload(s, "hello", "hello-2.12.2", &[&glibc], Some("cache.test-1"));
    let tests = upload(
        s,
        "hello-tests",
        "hello-tests-2.12.2",
        &[&hello],
        Some("other.test-2"),
    );
    (glibc, hello, tests)
}

#[test]
fn page_shows_usage_figures_latest_uploads_and_search() {
    let s = page_server().start();
    open_page(&s, &[]);
    let (glibc, hello, tests) = small_cache(&s);
    // Two lookups, one found, one not: a 50 % hit rate.
    assert_eq!(get(&s, &format!("/{}.narinfo", hello.hash)).status, 200);
    assert_eq!(
        get(&s, &format!("/{}.narinfo", store_hash("absent"))).status,
        404
    );
    assert_eq!(get(&s, &format!("/{}", hello.nar_url)).status, 200);

    let r = get(&s, "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    let page = r.text();
    assert!(!page.contains("<script"), "the page has no script");
    // How to use it, with the URL the request reached (the test client sends its
    // address as Host).
    let url = s.url();
    assert!(
        page.contains(&format!("extra-substituters = {url}")),
        "{page}"
    );
    assert!(
        page.contains(&format!("substituters = [ \"{url}\" ];")),
        "{page}"
    );
    assert!(page.contains("extra-trusted-public-keys = cache.test-1:&lt;public key&gt; other.test-2:&lt;public key&gt;"), "{page}");
    assert!(
        page.contains("<code>cache.test-1</code> – 2 paths"),
        "{page}"
    );
    assert!(
        page.contains("<code>other.test-2</code> – 1 path"),
        "{page}"
    );
    assert!(!page.contains("netrc"), "no read auth, no netrc");
    // Figures.
    assert!(page.contains("<b>3</b><span>store paths</span>"), "{page}");
    assert!(
        page.contains("<b>3</b><span>uploads, last hour</span>"),
        "{page}"
    );
    assert!(
        page.contains("<b>1</b><span>downloads, last hour</span>"),
        "{page}"
    );
    assert!(
        page.contains("<b>50 %</b><span>hit rate, last hour</span>"),
        "{page}"
    );
    // Latest uploads, newest first, each linking to its page.
    let at = |p: &Uploaded| {
        page.find(&format!("<a href=\"/path/{}\">{}</a>", p.hash, p.name))
            .unwrap_or_else(|| panic!("{} not listed: {page}", p.name))
    };
    assert!(at(&tests) < at(&hello) && at(&hello) < at(&glibc));

    // Search by name.
    let found = get(&s, "/?q=hello").text();
    assert!(
        found.contains("2 paths with <code>hello</code> in their name"),
        "{found}"
    );
    assert!(found.contains("value=\"hello\""));
    let results = &found[..found.find("id=\"use\"").unwrap()];
    assert!(results.contains(&format!("/path/{}", hello.hash)));
    assert!(results.contains(&format!("/path/{}", tests.hash)));
    assert!(!results.contains(&format!("/path/{}", glibc.hash)));
    let none = get(&s, "/?q=%3Cb%3Enothing").text();
    assert!(
        none.contains("No stored path has <code>&lt;b&gt;nothing</code> in its name."),
        "{none}"
    );

    let h = head(&s, "/");
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    // The Host header names the URL shown.
    let raw = raw_request(
        s.addr,
        b"GET / HTTP/1.1\r\nHost: cache.example.org:8443\r\nConnection: close\r\n\r\n",
    );
    assert!(raw
        .text()
        .contains("extra-substituters = http://cache.example.org:8443"));
}

#[test]
fn public_url_trusted_keys_and_quota_are_shown() {
    let key = public_key_line("cache.test-1", &signing_key(7));
    let s = page_server()
        .env("NIX_STORED_PUBLIC_URL", "https://cache.example.org/")
        .env("NIX_STORED_TRUSTED_PUBLIC_KEYS", &key)
        .env("NIX_STORED_MAX_SIZE", "10M")
        .start();
    open_page(&s, &[]);
    upload(&s, "hello", "hello-2.12.2", &[], Some("cache.test-1"));
    let page = get(&s, "/").text();
    assert!(
        page.contains("extra-substituters = https://cache.example.org\n"),
        "{page}"
    );
    // The configured keys, whole: what a client should trust.
    assert!(
        page.contains(&format!("extra-trusted-public-keys = {key}\n")),
        "{page}"
    );
    assert!(!page.contains("&lt;public key&gt;"));
    let sum = json(&get(&s, "/api/summary"));
    assert_eq!(sum["usage"]["trustedPublicKeys"][0], key.as_str());
    assert_eq!(sum["usage"]["url"], "https://cache.example.org");
    // The quota, once retention counted what is stored.
    let counted = eventually(Duration::from_secs(20), || {
        json(&get(&s, "/api/summary"))["figures"]["quota"]["maxBytes"] == 10 << 20
    });
    assert!(counted, "{}", get(&s, "/api/summary").text());
    assert!(get(&s, "/").text().contains("of the 10.0 MiB quota"));
}

#[test]
fn narinfos_another_writer_stores_are_found() {
    if fs_only("the directory is written behind the server's back") {
        return;
    }
    let s = page_server().start();
    // Open, so that what the watch reports is what finds it.
    open_page(&s, &[]);
    upload(&s, "hello", "hello-2.12.2", &[], None);
    let hash = store_hash("other-writer");
    let text = format!(
        "StorePath: {STORE}/{hash}-written-elsewhere-1.0\nURL: nar/{}.nar\nNarSize: 5\nReferences: \n",
        nix32_sha256(b"elsewhere")
    );
    // As `nix copy --to file://` writes: a temporary file renamed into place.
    let tmp = s.dir.join(".tmp-other-writer");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, s.dir.join(format!("{hash}.narinfo"))).unwrap();
    let found = eventually(Duration::from_secs(20), || {
        json(&get(&s, "/api/search?q=elsewhere"))["results"][0]["hash"] == hash
    });
    assert!(found, "{}", s.log());
    assert_eq!(json(&get(&s, "/api/summary"))["figures"]["paths"], 2);
}

#[test]
fn paths_retention_removes_leave_the_page() {
    let s = page_server()
        .env("NIX_STORED_GC_INTERVAL", "1")
        .env("NIX_STORED_MAX_SIZE", "100K")
        .start();
    open_page(&s, &[]);
    wait_passes(&s, 0, 1);
    let mut paths = Vec::new();
    for i in 0..10 {
        let hash = store_hash(&format!("big-{i}"));
        let mut contents = format!("big {i}").into_bytes();
        contents.resize(20_000, b'x');
        let nar = nar_of(&contents);
        let info = NarInfo::uncompressed(STORE, &hash, &format!("big-{i}"), &nar, &[]);
        assert_eq!(put(&s, &format!("/{}", info.url), &nar).status, 201);
        assert_eq!(
            put(&s, &format!("/{hash}.narinfo"), info.render().as_bytes()).status,
            201
        );
        paths.push(hash);
        std::thread::sleep(Duration::from_millis(200));
    }
    let passes = metric(&s, "nix_stored_retention_passes_total");
    wait_passes(&s, passes, 2);
    let stored: Vec<bool> = paths
        .iter()
        .map(|h| get(&s, &format!("/{h}.narinfo")).status == 200)
        .collect();
    assert!(
        stored.contains(&false),
        "the quota removed paths: {}",
        s.log()
    );
    let found = json(&get(&s, "/api/search?q=big-&limit=200"));
    let listed: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hash"].as_str().unwrap())
        .collect();
    for (hash, kept) in paths.iter().zip(&stored) {
        assert_eq!(listed.contains(&hash.as_str()), *kept, "{hash}");
        let page = get(&s, &format!("/path/{hash}")).status;
        assert_eq!(page, if *kept { 200 } else { 404 }, "{hash}");
    }
    let sum = json(&get(&s, "/api/summary"));
    assert_eq!(
        sum["figures"]["paths"],
        stored.iter().filter(|k| **k).count()
    );
}

#[test]
fn path_page_links_references_referrers_and_the_nar() {
    let s = page_server().start();
    open_page(&s, &[]);
    let (glibc, hello, tests) = small_cache(&s);
    let r = get(&s, &format!("/path/{}", hello.hash));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    assert!(
        page.contains(&format!("<code>{STORE}/{}-hello-2.12.2</code>", hello.hash)),
        "{page}"
    );
    assert!(
        page.contains(&format!(
            "<a href=\"/path/{}\">{}-glibc-2.40-66</a>",
            glibc.hash, glibc.hash
        )),
        "{page}"
    );
    assert!(page.contains("<h2>Referrers (1)</h2>"), "{page}");
    assert!(page.contains(&format!(
        "<a href=\"/path/{}\">{}-hello-tests-2.12.2</a>",
        tests.hash, tests.hash
    )));
    assert!(
        page.contains(&format!(
            "<a href=\"/{}\" download>Download the NAR</a>",
            hello.nar_url
        )),
        "{page}"
    );
    assert!(
        page.contains("<b>2</b><span>paths in its closure</span>"),
        "{page}"
    );
    assert!(page.contains("<dt>NarHash</dt>"));
    assert!(page.contains("<dt>Sig</dt><dd><code>cache.test-1:"));
    // The download link works.
    assert_eq!(get(&s, &format!("/{}", hello.nar_url)).status, 200);
    // Unknown or malformed hashes.
    assert_eq!(
        get(&s, &format!("/path/{}", store_hash("nope"))).status,
        404
    );
    assert_eq!(get(&s, "/path/not-a-hash").status, 404);
    for odd in [
        "/path/../../etc/passwd",
        "/path/..%2F..%2Fetc%2Fpasswd",
        "/api/path/%2e%2e",
        "/path/",
    ] {
        let r = get(&s, odd);
        assert_eq!(r.status, 404, "{odd}");
        assert!(!r.text().contains("root:"), "{odd}");
    }
    assert_eq!(put(&s, "/", b"x").status, 405);
}

#[test]
fn json_api_answers_summary_search_and_path() {
    let s = page_server().start();
    open_page(&s, &[]);
    let (glibc, hello, tests) = small_cache(&s);
    let sum = json(&get(&s, "/api/summary"));
    assert_eq!(sum["usage"]["url"], s.url());
    assert_eq!(sum["usage"]["storeDir"], STORE);
    assert_eq!(sum["usage"]["readAuth"], false);
    assert_eq!(sum["figures"]["paths"], 3);
    assert_eq!(sum["figures"]["quota"], Value::Null);
    assert_eq!(sum["activity"]["hour"]["uploads"], 3);
    assert_eq!(sum["latest"][0]["name"], "hello-tests-2.12.2");
    assert_eq!(sum["latest"][0]["signers"][0], "other.test-2");
    assert_eq!(sum["usage"]["signers"][0]["name"], "cache.test-1");
    assert_eq!(sum["usage"]["signers"][0]["paths"], 2);

    let found = json(&get(&s, "/api/search?q=hello&limit=1"));
    assert_eq!(found["results"].as_array().unwrap().len(), 1);
    assert_eq!(found["results"][0]["hash"], tests.hash);
    for bad in ["0", "201", "null", "-1"] {
        assert_eq!(
            get(&s, &format!("/api/search?q=x&limit={bad}")).status,
            400,
            "{bad}"
        );
    }
    let found = json(&get(&s, "/api/search?q=2.40"));
    assert_eq!(found["results"][0]["hash"], glibc.hash);

    let p = json(&get(&s, &format!("/api/path/{}", hello.hash)));
    assert_eq!(p["path"]["name"], "hello-2.12.2");
    assert_eq!(p["references"][0]["hash"], glibc.hash);
    assert_eq!(p["referrers"][0]["name"], "hello-tests-2.12.2");
    assert_eq!(p["referrersTotal"], 1);
    assert_eq!(p["closure"]["paths"], 2);
    assert_eq!(p["nar"], hello.nar_url);
    assert_eq!(
        p["narinfo"]["StorePath"],
        format!("{STORE}/{}-hello-2.12.2", hello.hash)
    );
    assert_eq!(
        get(&s, &format!("/api/path/{}", store_hash("nope"))).status,
        404
    );

    // The OpenAPI document describes them.
    let doc = json(&get(&s, "/openapi.json"));
    for path in [
        "/",
        "/path/{hash}",
        "/api/summary",
        "/api/search",
        "/api/path/{hash}",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
}

#[test]
fn page_and_api_follow_read_auth() {
    let s = page_server()
        .env("NIX_STORED_USER_READ", READ_USER)
        .env("NIX_STORED_USER_READ_PASS", READ_PASS)
        .start();
    let auth = basic(READ_USER, READ_PASS);
    let creds = [("Authorization", auth.as_str())];
    open_page(&s, &creds);
    let (hello, status) = upload_with(&s, &[], "hello", "hello-2.12.2", &[], None, |_| {});
    assert_eq!(status, 201);
    for path in [
        "/".to_owned(),
        "/?q=hello".to_owned(),
        format!("/path/{}", hello.hash),
        "/api/summary".to_owned(),
        "/api/search?q=hello".to_owned(),
        format!("/api/path/{}", hello.hash),
    ] {
        let r = get(&s, &path);
        assert_eq!(r.status, 401, "{path}");
        assert!(!r.text().contains("hello-2.12.2"), "{path}");
        let wrong = basic(READ_USER, "wrong");
        assert_eq!(
            send(s.addr, "GET", &path, &[("Authorization", &wrong)], b"").status,
            401,
            "{path}"
        );
        let r = send(s.addr, "GET", &path, &creds, b"");
        assert_eq!(r.status, 200, "{path}");
        assert!(r.text().contains("hello-2.12.2"), "{path}");
    }
    let page = send(s.addr, "GET", "/", &creds, b"").text();
    assert!(page.contains("netrc-file = /etc/nix/netrc"), "{page}");
    assert!(
        page.contains("machine 127.0.0.1 login &lt;user&gt; password &lt;password&gt;"),
        "{page}"
    );
    assert!(!page.contains(READ_PASS) && !page.contains(READ_USER));
}

#[test]
fn hostile_narinfos_inject_no_markup() {
    let payloads = [
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "' onmouseover='alert(1)",
        "&lt;b&gt;",
    ];
    let dir = temp_dir("page-hostile");
    // Another writer's narinfos (read at start): fields as hostile as a file allows.
    let mut hostile = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let hash = store_hash(&format!("hostile-{i}"));
        let text = format!(
            "StorePath: {STORE}/{hash}-evil-{i}\nURL: nar/{}.nar\nCompression: none\nFileSize: 10\nNarHash: sha256:{p}\nNarSize: 10\nReferences: \nDeriver: {p}\nSig: {p}:{p}\nCA: {p}\n",
            nix32_sha256(p.as_bytes())
        );
        std::fs::write(dir.join(format!("{hash}.narinfo")), text).unwrap();
        hostile.push(hash);
    }
    // A URL that is no NAR file of a cache's layout: left out, as retention leaves
    // it alone, so it is never offered as a link.
    let js = store_hash("javascript-url");
    std::fs::write(
        dir.join(format!("{js}.narinfo")),
        format!("StorePath: {STORE}/{js}-js\nURL: javascript:alert(1)\nNarSize: 1\nReferences: \n"),
    )
    .unwrap();
    // A name Nix refuses never reaches the catalog.
    let bad = store_hash("bad-name");
    std::fs::write(
        dir.join(format!("{bad}.narinfo")),
        format!("StorePath: {STORE}/{bad}-<script>x</script>\nURL: nar/x.nar\nNarSize: 1\nReferences: \n"),
    )
    .unwrap();
    let s = page_server().dir(&dir).start();
    // And uploads through the server: an odd name it accepts, and a signature whose
    // key name is markup (accepted or not, depending on its checks).
    let up = upload(&s, "odd", "odd-name+x?y=z_", &[], None);
    let (sig_up, status) = upload_with(&s, &[], "sig", "sig-path", &[], None, |info| {
        info.sigs.push(format!("{}:c2lnbmF0dXJl", payloads[0]));
    });
    let uploaded_hostile_sig = status == 201;
    let wait = eventually(Duration::from_secs(20), || {
        json(&get(&s, "/api/summary"))["figures"]["complete"] == true
    });
    assert!(wait, "catalog loaded");

    let mut pages = vec![
        get(&s, "/").text(),
        get(&s, "/?q=evil").text(),
        get(&s, &format!("/?q={}", "%3Cscript%3E")).text(),
    ];
    for hash in &hostile {
        let r = get(&s, &format!("/path/{hash}"));
        assert_eq!(r.status, 200, "{}", r.text());
        pages.push(r.text());
    }
    for p in [&up, &sig_up] {
        let r = get(&s, &format!("/path/{}", p.hash));
        assert_eq!(
            r.status,
            if p.hash == sig_up.hash && !uploaded_hostile_sig {
                404
            } else {
                200
            }
        );
        pages.push(r.text());
    }
    for page in &pages {
        // Markup only the page itself writes: no tag, attribute break or link a
        // payload could have opened survives unescaped.
        for bad in [
            "<script",
            "<img",
            "' onmouseover",
            "href=\"javascript",
            "href=\"/javascript",
        ] {
            assert!(!page.to_lowercase().contains(bad), "{bad} in {page}");
        }
    }
    let evil = &pages[3];
    assert!(
        evil.contains(
            "<dt>Deriver</dt><dd><code>&lt;script&gt;alert(1)&lt;/script&gt;</code></dd>"
        ),
        "{evil}"
    );
    assert_eq!(
        get(&s, &format!("/path/{js}")).status,
        404,
        "a foreign URL is no link"
    );
    let quoted = &pages[4];
    assert!(
        quoted.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
        "{quoted}"
    );
    let apos = &pages[5];
    assert!(apos.contains("&#39; onmouseover=&#39;alert(1)"), "{apos}");
    let amp = &pages[6];
    assert!(amp.contains("&amp;lt;b&amp;gt;"), "{amp}");
    // Signer names from hostile Sig lines are escaped on the summary.
    assert!(
        pages[0].contains("<code>&lt;script&gt;alert(1)&lt;/script&gt;</code> – "),
        "{}",
        pages[0]
    );
    assert!(pages[0].contains("odd-name+x?y=z_"));
    eprintln!("hostile signature accepted on upload: {uploaded_hostile_sig}");
    // The JSON carries them as data.
    let p = json(&get(&s, &format!("/api/path/{}", hostile[0])));
    assert_eq!(p["narinfo"]["Deriver"], payloads[0]);
    let nar = format!("nar/{}.nar", nix32_sha256(payloads[0].as_bytes()));
    assert_eq!(p["nar"], nar.as_str());
    assert_eq!(get(&s, &format!("/path/{bad}")).status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `n` narinfos straight into `dir` (as another writer would), all pointing
/// at one NAR (the catalog never reads NARs), path i stored i seconds after an epoch.
fn generate(dir: &std::path::Path, n: usize) -> Vec<String> {
    let nar = nar_of(b"shared");
    let fh = nix32_sha256(&nar);
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(dir.join(format!("nar/{fh}.nar")), &nar).unwrap();
    let mut hashes = Vec::with_capacity(n);
    for i in 0..n {
        let hash = store_hash(&format!("gen-{i}"));
        let refs: Vec<String> = (1..=3usize)
            .filter(|k| i >= k * 5)
            .map(|k| format!("{}-pkg-{}", hashes[i - k * 5], i - k * 5))
            .collect();
        let text = format!(
            "StorePath: {STORE}/{hash}-pkg-{i}\nURL: nar/{fh}.nar\nCompression: none\nFileHash: sha256:{fh}\nFileSize: {}\nNarHash: sha256:{fh}\nNarSize: {}\nReferences: {}\nSig: gen.test-1:c2ln\n",
            nar.len(),
            nar.len(),
            refs.join(" ")
        );
        std::fs::write(dir.join(format!("{hash}.narinfo")), text).unwrap();
        hashes.push(hash);
    }
    hashes
}

/// With retention on, the page reads the graph retention keeps: its first visit
/// labels the paths the first pass loaded, and paths are not counted twice.
#[test]
fn with_retention_the_page_shares_its_graph() {
    if fs_only("narinfos are generated into the directory") {
        return;
    }
    let dir = temp_dir("page-retention-load");
    let hashes = generate(&dir, 50);
    let s = page_server()
        .dir(&dir)
        .env("NIX_STORED_MAX_SIZE", "1G")
        .start();
    wait_passes(&s, 0, 1);
    open_page(&s, &[]);
    assert_eq!(json(&get(&s, "/api/summary"))["figures"]["paths"], 50);
    let p = json(&get(&s, &format!("/api/path/{}", hashes[20])));
    assert_eq!(p["referrersTotal"], 3);
    upload(&s, "hello", "hello-2.12.2", &[], None);
    assert_eq!(json(&get(&s, "/api/summary"))["figures"]["paths"], 51);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn search_and_api_at_100k_paths() {
    if fs_only("narinfos are generated into the directory") {
        return;
    }
    const N: usize = 100_000;
    let dir = temp_dir("page-100k");
    let hashes = generate(&dir, N);
    let s = page_server().dir(&dir).start();
    let loaded = eventually(Duration::from_secs(50), || {
        let sum = json(&get(&s, "/api/summary"));
        sum["figures"]["complete"] == true
    });
    assert!(loaded, "catalog of {N} paths loaded: {}", s.log());
    // The load's log line (reported, not asserted), written just after it completes.
    eventually(Duration::from_secs(5), || s.log().contains("INFO catalog:"));
    let log = s.log();
    eprintln!(
        "{}",
        log.lines().find(|l| l.contains("catalog:")).unwrap_or(&log)
    );
    let sum = json(&get(&s, "/api/summary"));
    assert_eq!(sum["figures"]["paths"], N);
    assert_eq!(sum["usage"]["signers"][0]["paths"], N);
    assert_eq!(sum["latest"].as_array().unwrap().len(), 20);

    // One match among 100k (pkg-12345 only: pkg-123456 does not exist).
    let found = json(&get(&s, "/api/search?q=pkg-12345"));
    let names: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pkg-12345"]);
    // Many matches: limited.
    let found = json(&get(&s, "/api/search?q=pkg-9&limit=200"));
    assert_eq!(found["results"].as_array().unwrap().len(), 200);
    assert_eq!(
        json(&get(&s, "/api/search?q=no-such-name"))["results"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let page = get(&s, "/?q=pkg-4242");
    assert!(page.text().contains(&format!("/path/{}", hashes[4242])));

    // Reported, not asserted (no timed assertions): the answer times at 100k, as the
    // client sees them, debug build included.
    for path in [
        "/",
        "/?q=pkg-4242",
        "/api/search?q=no-such-name",
        "/api/summary",
    ] {
        let started = std::time::Instant::now();
        assert_eq!(get(&s, path).status, 200);
        eprintln!("{N} paths: GET {path} in {:?}", started.elapsed());
    }
    // A path in the middle: its references, referrers and closure.
    let i = 50_000;
    let p = json(&get(&s, &format!("/api/path/{}", hashes[i])));
    assert_eq!(p["path"]["name"], format!("pkg-{i}"));
    assert_eq!(p["references"].as_array().unwrap().len(), 3);
    assert_eq!(p["referrersTotal"], 3);
    let referrers: Vec<&str> = p["referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hash"].as_str().unwrap())
        .collect();
    for k in 1..=3 {
        assert!(referrers.contains(&hashes[i + k * 5].as_str()));
    }
    // Paths reachable by steps of 5 to 15 down from 50000: every earlier one of the
    // same residue mod 5 (10001 of them, itself included).
    assert_eq!(p["closure"]["paths"], i / 5 + 1);
    assert_eq!(p["closure"]["complete"], true);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------
// Headless Chromium.

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
}

fn run_chromium(bin: &std::path::Path, args: &[&str]) -> String {
    let profile = temp_dir("chromium-profile");
    let out = Command::new("timeout")
        .arg("120")
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn chromium_renders_the_page_and_a_path_page() {
    let Some(bin) = chromium() else {
        eprintln!(
            "skipped: chromium is not installed (scripts/test.sh installs Debian's `chromium`)"
        );
        return;
    };
    let s = page_server().start();
    open_page(&s, &[]);
    let (_glibc, hello, _tests) = small_cache(&s);
    for i in 0..12 {
        upload(
            &s,
            &format!("lib-{i}"),
            &format!("libexample-{i}.{i}.0-dev"),
            &[&hello],
            Some("cache.test-1"),
        );
    }
    assert_eq!(get(&s, &format!("/{}.narinfo", hello.hash)).status, 200);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/page-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let home = s.url() + "/";
    let path_page = format!("{}/path/{}", s.url(), hello.hash);
    let search = format!("{}/?q=libexample-1", s.url());

    // The DOM as rendered: text and links.
    let dom = run_chromium(&bin, &["--dump-dom", &home]);
    assert!(dom.contains("Nix binary cache"), "{dom}");
    assert!(
        dom.contains(&format!("extra-substituters = {}", s.url())),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("href=\"/path/{}\"", hello.hash)),
        "{dom}"
    );
    let dom = run_chromium(&bin, &["--dump-dom", &path_page]);
    assert!(dom.contains("Referrers (13)"), "{dom}");
    assert!(dom.contains("Download the NAR"), "{dom}");
    let dom = run_chromium(&bin, &["--dump-dom", &search]);
    assert!(
        dom.contains("libexample-10.10.0-dev") && dom.contains("libexample-1.1.0-dev"),
        "{dom}"
    );

    // Light and dark (`--force-dark-mode` makes `prefers-color-scheme: dark` true).
    let shapes = [
        ("desktop", "1280,900", None),
        ("phone", "390,844", None),
        ("desktop-dark", "1280,900", Some("--force-dark-mode")),
        ("phone-dark", "390,844", Some("--force-dark-mode")),
    ];
    for (label, size, dark) in shapes {
        for (page, url) in [("home", &home), ("path", &path_page), ("search", &search)] {
            let file = shots.join(format!("{page}-{label}.png"));
            let _ = std::fs::remove_file(&file);
            let shot = format!("--screenshot={}", file.display());
            let window = format!("--window-size={size}");
            let mut args = vec![shot.as_str(), window.as_str()];
            args.extend(dark);
            args.push(url.as_str());
            run_chromium(&bin, &args);
            let png = std::fs::read(&file).expect("screenshot written");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 5000,
                "{}",
                file.display()
            );
        }
    }
    // A copy for the lead, when the machine allows.
    let copy = std::path::Path::new("/tmp/page-screenshots");
    if std::fs::create_dir_all(copy).is_ok() {
        for e in std::fs::read_dir(&shots).unwrap().flatten() {
            let _ = std::fs::copy(e.path(), copy.join(e.file_name()));
        }
    }
}
