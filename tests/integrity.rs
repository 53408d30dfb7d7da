//! What the server refuses to store, and that nothing partial is ever left behind:
//! NAR hashes, every narinfo rule, trusted signatures, size limits, idle bodies,
//! concurrent writers, crashes and shutdown.

mod common;

use std::io::{BufReader, ErrorKind, Write};
use std::time::Duration;

use common::*;

const STORE: &str = "/nix/store";

/// Asserts that the store holds nothing but `nix-cache-info` and `keep`.
fn assert_only(s: &Server, keep: &[&str]) {
    let mut expected: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
    expected.push("nix-cache-info".into());
    expected.sort();
    assert!(
        eventually(Duration::from_secs(10), || s.store.files() == expected),
        "store should hold exactly {expected:?}, holds {:?}",
        s.store.files()
    );
}

fn nar_key(nar: &[u8]) -> String {
    format!("nar/{}.nar", nix32_sha256(nar))
}

/// A server with one uploaded NAR; returns the server, the NAR and its key.
fn with_nar(contents: &[u8]) -> (Server, Vec<u8>, String) {
    let s = ServerBuilder::new().start();
    let nar = nar_of(contents);
    let key = nar_key(&nar);
    let r = put(&s, &format!("/{key}"), &nar);
    assert_eq!(r.status, 201, "{}", r.text());
    (s, nar, key)
}

/// PUTs `body` as `<h>.narinfo`, expects 400 with a reason, and checks nothing was stored.
fn refused(s: &Server, h: &str, body: &[u8], why: &str, keep: &[&str]) {
    let path = format!("/{h}.narinfo");
    let r = put(s, &path, body);
    assert_eq!(
        r.status,
        400,
        "{why}: expected 400, got {} {:?}\n{}",
        r.status,
        r.text(),
        String::from_utf8_lossy(body)
    );
    assert!(
        !r.text().trim().is_empty(),
        "{why}: the reason is in the body"
    );
    assert_eq!(
        get(s, &path).status,
        404,
        "{why}: narinfo must not be served"
    );
    assert!(!s.store.exists(&format!("{h}.narinfo")), "{why}: stored");
    assert_only(s, keep);
}

fn accepted(s: &Server, h: &str, body: &[u8], why: &str) {
    let path = format!("/{h}.narinfo");
    let r = put(s, &path, body);
    assert!(
        matches!(r.status, 201 | 204),
        "{why}: expected 201, got {} {:?}\n{}",
        r.status,
        r.text(),
        String::from_utf8_lossy(body)
    );
    let g = get(s, &path);
    assert_eq!(g.status, 200, "{why}");
    assert_eq!(g.body, body, "{why}: served as uploaded");
}

/// One narinfo rule: the broken variant is refused, nothing is stored, and the correct
/// narinfo is then accepted (so the defect was the reason).
fn check_rule(why: &str, breaks: impl FnOnce(&mut NarInfo) -> String) {
    let (s, nar, key) = with_nar(why.as_bytes());
    let h = store_hash(why);
    let good = NarInfo::uncompressed(STORE, &h, "path", &nar, &[]);
    let mut bad = good.clone();
    let text = breaks(&mut bad);
    refused(&s, &h, text.as_bytes(), why, &[&key]);
    accepted(&s, &h, good.render().as_bytes(), why);
}

// ---------------------------------------------------------------------------------
// NARs.

#[test]
fn a_nar_must_hash_to_its_name() {
    let s = ServerBuilder::new().start();
    let plain = nar_of(b"the real contents");
    let other = nar_of(b"other contents");
    for &(compression, ext) in [("none", "")].iter().chain(COMPRESSIONS) {
        // Valid compressed NARs: only the name is wrong.
        let nar = compress(&plain, compression);
        let key = format!(
            "/nar/{}.nar{ext}",
            nix32_sha256(&compress(&other, compression))
        );
        let r = put(&s, &key, &nar);
        assert_eq!(r.status, 400, "{key}: {}", r.text());
        assert_eq!(get(&s, &key).status, 404, "{key}");
        assert_eq!(head(&s, &key).status, 404, "{key}");
        // A prefix or an extension of the right body is not it either.
        let right = format!("/nar/{}.nar{ext}", nix32_sha256(&nar));
        assert_eq!(
            put(&s, &right, &nar[..nar.len() - 1]).status,
            400,
            "{right}"
        );
        let mut longer = nar.clone();
        longer.push(0);
        assert_eq!(put(&s, &right, &longer).status, 400, "{right}");
        assert_eq!(put(&s, &right, b"").status, 400, "{right} empty");
        assert_eq!(head(&s, &right).status, 404, "{right}");
    }
    assert_only(&s, &[]);
    assert!(s.pending().is_empty());
    // The right body under its own name is accepted.
    let key = format!("/{}", nar_key(&plain));
    assert_eq!(put(&s, &key, &plain).status, 201);
    assert_eq!(get(&s, &key).body, plain);
}

/// PUTs `body` at `key`, expects 400 with a reason containing `why`, and checks
/// nothing was stored under it.
fn nar_refused(s: &Server, key: &str, body: &[u8], why: &str) {
    let r = put(s, key, body);
    assert_eq!(r.status, 400, "{key}: {}", r.text());
    let text = r.text();
    assert!(text.contains(why), "{key}: {text:?} does not say {why:?}");
    assert_eq!(text.trim().lines().count(), 1, "{text:?}");
    assert_eq!(head(s, key).status, 404, "{key}");
    assert!(s.pending().is_empty());
}

fn key_of(file: &[u8], ext: &str) -> String {
    format!("/nar/{}.nar{ext}", nix32_sha256(file))
}

#[test]
fn garbage_under_a_compressed_name_is_refused_and_its_narinfo_too() {
    let s = ServerBuilder::new().start();
    for (compression, ext) in COMPRESSIONS {
        let garbage = format!("garbage, not {compression} at all")
            .repeat(50)
            .into_bytes();
        let key = key_of(&garbage, ext);
        nar_refused(&s, &key, &garbage, compression);
        // Its narinfo, claiming a NAR of 4 EiB, finds no NAR to describe.
        let h = store_hash(&format!("garbage {compression}"));
        let mut info = NarInfo::compressed(STORE, &h, "g", &garbage, &garbage, compression, ext);
        info.nar_size = "4611686018427387904".into();
        refused(&s, &h, info.render().as_bytes(), "garbage NAR", &[]);
    }
}

#[test]
fn a_compressed_file_that_is_not_a_nar_is_refused() {
    let s = ServerBuilder::new().start();
    for (compression, ext) in COMPRESSIONS {
        let file = compress(b"hello, a text file and not an archive", compression);
        nar_refused(&s, &key_of(&file, ext), &file, "not a valid NAR");
        // Nor a NAR followed by more data inside the compressed stream.
        let mut longer = nar_of(b"x");
        longer.extend_from_slice(&[0; 8]);
        let file = compress(&longer, compression);
        nar_refused(&s, &key_of(&file, ext), &file, "after the end");
        // Nor a compressed NAR followed by more data after the compressed stream.
        let mut file = compress(&nar_of(b"y"), compression);
        file.extend_from_slice(b"tail");
        nar_refused(&s, &key_of(&file, ext), &file, compression);
    }
    assert_only(&s, &[]);
}

#[test]
fn an_uncompressed_body_that_is_not_a_nar_is_refused() {
    let s = ServerBuilder::new().start();
    for body in [&b"hello"[..], b"", b"\x0d\0\0\0\0\0\0\0nix-archive-2\0\0\0"] {
        nar_refused(&s, &key_of(body, ""), body, "NAR");
    }
    // Names out of order in a directory.
    let mut nar = Vec::new();
    for tok in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"b",
        b"node",
        b"(",
        b"type",
        b"symlink",
        b"target",
        b"x",
        b")",
        b")",
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
        b"(",
        b"type",
        b"symlink",
        b"target",
        b"x",
        b")",
        b")",
        b")",
    ] {
        nar.extend_from_slice(&(tok.len() as u64).to_le_bytes());
        nar.extend_from_slice(tok);
        nar.resize(nar.len() + (8 - tok.len() % 8) % 8, 0);
    }
    nar_refused(&s, &key_of(&nar, ""), &nar, "not sorted");
    assert_only(&s, &[]);
}

#[test]
fn a_truncated_nar_is_refused() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(&vec![3u8; 100_000]);
    for cut in [8, 100, nar.len() / 2, nar.len() - 8] {
        let short = &nar[..cut];
        nar_refused(&s, &key_of(short, ""), short, "truncated");
        for (compression, ext) in COMPRESSIONS {
            // A complete compressed stream of a truncated NAR...
            let file = compress(short, compression);
            nar_refused(&s, &key_of(&file, ext), &file, "truncated");
        }
    }
    for (compression, ext) in COMPRESSIONS {
        // ...and a truncated compressed stream of a complete NAR.
        let file = compress(&nar, compression);
        let short = &file[..file.len() - 3];
        nar_refused(&s, &key_of(short, ext), short, compression);
    }
    assert_only(&s, &[]);
}

#[test]
fn every_compression_is_accepted_end_to_end() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(&b"some file contents ".repeat(10_000));
    for (compression, _) in COMPRESSIONS {
        let h = store_hash(&format!("e2e {compression}"));
        let (info, file) = NarInfo::packed(STORE, &h, "p", &nar, compression);
        let url = format!("/{}", info.url);
        let r = put(&s, &url, &file);
        assert_eq!(r.status, 201, "{compression}: {}", r.text());
        accepted(&s, &h, info.render().as_bytes(), compression);
        assert_eq!(get(&s, &url).body, file, "{compression}");
    }
}

#[test]
fn a_narinfo_lying_about_its_nar_is_refused() {
    // (For an uncompressed NAR, NarHash/NarSize must equal FileHash/FileSize, which
    // the file name and the stored size already pin down.)
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"what the NAR really holds");
    let other = nar_of(b"what the narinfo says it holds");
    for (compression, _) in COMPRESSIONS {
        let h = store_hash(&format!("liar {compression}"));
        let (honest, file) = NarInfo::packed(STORE, &h, "p", &nar, compression);
        assert_eq!(put(&s, &format!("/{}", honest.url), &file).status, 201);
        let mut wrong_hash = honest.clone();
        wrong_hash.nar_hash = format!("sha256:{}", nix32_sha256(&other));
        let r = put(&s, &format!("/{h}.narinfo"), wrong_hash.render().as_bytes());
        assert_eq!(r.status, 400, "{compression}: {}", r.text());
        assert!(r.text().contains("NarHash"), "{compression}: {}", r.text());
        let mut wrong_size = honest.clone();
        wrong_size.nar_size = (nar.len() + 8).to_string();
        let r = put(&s, &format!("/{h}.narinfo"), wrong_size.render().as_bytes());
        assert_eq!(r.status, 400, "{compression}: {}", r.text());
        assert!(r.text().contains("NarSize"), "{compression}: {}", r.text());
        assert_eq!(head(&s, &format!("/{h}.narinfo")).status, 404);
        accepted(&s, &h, honest.render().as_bytes(), compression);
    }
}

#[test]
fn a_nar_needing_too_much_decoder_memory_is_refused() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"small");
    // xz with a 128 MiB dictionary: the header says how much decoding takes.
    let mut opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
    opts.dict_size(128 << 20);
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma2(&opts);
    let stream =
        liblzma::stream::Stream::new_stream_encoder(&filters, liblzma::stream::Check::Crc64)
            .unwrap();
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    e.write_all(&nar).unwrap();
    let xz = e.finish().unwrap();
    nar_refused(&s, &key_of(&xz, ".xz"), &xz, "decoder memory");
    // zstd with a 256 MiB window.
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    e.set_parameter(zstd::zstd_safe::CParameter::WindowLog(28))
        .unwrap();
    e.include_contentsize(false).unwrap();
    e.write_all(&nar).unwrap();
    let zst = e.finish().unwrap();
    nar_refused(&s, &key_of(&zst, ".zst"), &zst, "decoder memory");
    assert_only(&s, &[]);
}

#[test]
fn after_a_restart_a_narinfo_is_checked_against_the_stored_nar() {
    let store = Store::fresh("redecode");
    let nar = nar_of(&b"kept across restarts ".repeat(1000));
    let h = store_hash("restart");
    let (honest, file) = NarInfo::packed(STORE, &h, "p", &nar, "xz");
    let mut s = ServerBuilder::new().store(&store).start();
    assert_eq!(put(&s, &format!("/{}", honest.url), &file).status, 201);
    s.terminate();
    let s = ServerBuilder::new().store(&store).start();
    let mut lying = honest.clone();
    lying.nar_size = (nar.len() - 8).to_string();
    let keep = [honest.url.as_str()];
    refused(
        &s,
        &h,
        lying.render().as_bytes(),
        "NarSize after restart",
        &keep,
    );
    accepted(&s, &h, honest.render().as_bytes(), "after restart");
    // A NAR another writer put into the storage is decoded too: garbage is refused.
    let garbage = b"not xz, written behind the server's back".to_vec();
    let bad_key = key_of(&garbage, ".xz");
    store.write(&bad_key[1..], &garbage);
    let h2 = store_hash("behind its back");
    let info = NarInfo::compressed(STORE, &h2, "p", &nar, &garbage, "xz", ".xz");
    let r = put(&s, &format!("/{h2}.narinfo"), info.render().as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("is not valid"), "{}", r.text());
}

#[test]
fn nar_uploads_beyond_the_memory_budget_wait_their_turn() {
    // 40 MiB: 30 MiB for decoders, three uncompressed verifications (8 MiB each) at
    // once. Twelve parallel uploads must all succeed: the others wait, none is refused.
    let s = ServerBuilder::new()
        .env("NIX_STORED_MEMORY_BUDGET", "40M")
        .start();
    let nars: Vec<Vec<u8>> = (0..12u8)
        .map(|i| nar_of(&vec![i; (4 << 20) + usize::from(i)]))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = nars
            .iter()
            .map(|nar| {
                let s = &s;
                scope.spawn(move || put(s, &format!("/{}", nar_key(nar)), nar).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&st| st == 201), "{statuses:?}");
    assert_eq!(s.store.nars().len(), 12);
    // A decoder that can never fit is refused at once with 503, not after a wait.
    let tiny = ServerBuilder::new()
        .env("NIX_STORED_MEMORY_BUDGET", "8M")
        .start();
    let nar = nar_of(b"no room for its verification");
    let r = put(&tiny, &format!("/{}", nar_key(&nar)), &nar);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
}

#[test]
fn more_nar_uploads_at_once_than_the_blocking_pool_has_threads() {
    // Each NAR upload has a verifier thread for as long as its body lasts. Were they
    // on tokio's blocking pool (512 threads), on which the directory backend writes
    // each MiB, 512 started uploads would leave no thread for the writes they wait on.
    if fs_only("the directory backend writes on the blocking pool") {
        return;
    }
    const N: usize = 520;
    const HEAD: usize = 1024;
    // A budget that lets every verification start at once (8 MiB each, within the
    // three quarters decoders may take): the budget is accounting, not allocation.
    let s = ServerBuilder::new()
        .env("NIX_STORED_MEMORY_BUDGET", "8G")
        .env("NIX_STORED_MAX_CONNECTIONS_PER_ADDRESS", "1000")
        .start();
    // Distinct NARs of 2 MiB, made again when needed rather than all kept.
    let nar = |i: usize| nar_of(&vec![i as u8 ^ (i >> 8) as u8; (2 << 20) + i]);
    let conns: Vec<_> = (0..N)
        .map(|i| {
            let nar = nar(i);
            let mut c = connect(s.addr);
            let key = format!("/{}", nar_key(&nar));
            c.write_all(&request_head(
                s.addr,
                "PUT",
                &key,
                &[],
                Some(nar.len() as u64),
            ))
            .unwrap();
            c.write_all(&nar[..HEAD]).unwrap();
            c
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || s.pending().len() == N),
        "{} uploads under way",
        s.pending().len()
    );
    // Every upload now needs a write before its verifier can end.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                scope.spawn(move || {
                    let nar = nar(i);
                    c.write_all(&nar[HEAD..]).unwrap();
                    read_response(&mut BufReader::new(c), false).unwrap().status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&st| st == 201), "{statuses:?}");
    assert_eq!(s.store.nars().len(), N);
}

#[test]
fn a_cancelled_upload_leaves_nothing() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(&vec![7u8; 256 * 1024]);
    let key = format!("/{}", nar_key(&nar));
    {
        let mut stream = connect(s.addr);
        stream
            .write_all(&request_head(
                s.addr,
                "PUT",
                &key,
                &[],
                Some(nar.len() as u64),
            ))
            .unwrap();
        stream.write_all(&nar[..nar.len() / 2]).unwrap();
        // Dropped: the client went away in the middle of the body.
    }
    assert!(
        eventually(Duration::from_secs(10), || s.pending().is_empty()),
        "temporary file left behind: {:?}",
        s.store.files()
    );
    assert_eq!(head(&s, &key).status, 404);
    assert_only(&s, &[]);
    assert_eq!(put(&s, &key, &nar).status, 201);
}

// ---------------------------------------------------------------------------------
// narinfo rules.

#[test]
fn narinfo_correct_variants_are_accepted() {
    let s = ServerBuilder::new().start();
    // Compression: none.
    let nar = nar_of(b"plain");
    assert_eq!(put(&s, &format!("/{}", nar_key(&nar)), &nar).status, 201);
    let dep = store_hash("dep");
    accepted(
        &s,
        &dep,
        NarInfo::uncompressed(STORE, &dep, "dep", &nar, &[])
            .render()
            .as_bytes(),
        "plain",
    );
    // Every compression with its extension; NarHash/NarSize describe the uncompressed
    // NAR and need not equal FileHash/FileSize.
    for (compression, _) in COMPRESSIONS {
        let h = store_hash(compression);
        let (info, file) = NarInfo::packed(STORE, &h, "c", &nar, compression);
        assert_eq!(
            put(&s, &format!("/{}", info.url), &file).status,
            201,
            "{}",
            info.url
        );
        accepted(&s, &h, info.render().as_bytes(), compression);
    }
    // References present in the cache, and a reference to itself.
    let top = store_hash("top");
    let refs = [format!("{dep}-dep"), format!("{top}-top")];
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut info = NarInfo::uncompressed(STORE, &top, "top", &nar, &refs);
    info.deriver = Some(format!("{}-top.drv", store_hash("drv")));
    accepted(&s, &top, info.render().as_bytes(), "with references");
    // Fields in another order are still Nix syntax.
    let h = store_hash("reordered");
    let text = NarInfo::uncompressed(STORE, &h, "r", &nar, &[]).render();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.reverse();
    let reordered = lines.join("\n") + "\n";
    accepted(&s, &h, reordered.as_bytes(), "reordered fields");
    assert!(s.pending().is_empty());
}

#[test]
fn narinfo_without_compression() {
    check_rule("missing Compression", |n| {
        n.compression = None;
        n.render()
    });
}

#[test]
fn narinfo_with_crlf() {
    check_rule("CRLF line endings", |n| n.render().replace('\n', "\r\n"));
}

#[test]
fn narinfo_without_trailing_newline() {
    check_rule("no trailing newline", |n| {
        n.render().trim_end_matches('\n').to_owned()
    });
}

#[test]
fn narinfo_with_blank_line() {
    check_rule("blank line", |n| {
        n.render().replacen("\nNarHash", "\n\nNarHash", 1)
    });
}

#[test]
fn narinfo_store_path_hash_differs_from_key() {
    check_rule("StorePath hash != key", |n| {
        n.store_path = format!("{STORE}/{}-path", store_hash("another path"));
        n.render()
    });
}

#[test]
fn narinfo_in_another_store_dir() {
    check_rule("wrong store dir", |n| {
        n.store_path = n.store_path.replace("/nix/store/", "/gnu/store/");
        n.render()
    });
    // The configured store dir is the one required.
    let s = ServerBuilder::new()
        .env("NIX_STORED_STORE_DIR", "/gnu/store")
        .start();
    let nar = nar_of(b"gnu");
    let key = nar_key(&nar);
    assert_eq!(put(&s, &format!("/{key}"), &nar).status, 201);
    let h = store_hash("gnu");
    let nix = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]).render();
    refused(
        &s,
        &h,
        nix.as_bytes(),
        "/nix/store path on a /gnu/store cache",
        &[&key],
    );
    let gnu = NarInfo::uncompressed("/gnu/store", &h, "p", &nar, &[]).render();
    accepted(&s, &h, gnu.as_bytes(), "/gnu/store path");
}

#[test]
fn narinfo_pointing_at_an_absent_nar() {
    let s = ServerBuilder::new().start();
    let nar = nar_of(b"never uploaded");
    let h = store_hash("absent nar");
    let text = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]).render();
    refused(&s, &h, text.as_bytes(), "URL to an absent NAR", &[]);
    // Once the NAR is there, the same narinfo is fine.
    let key = nar_key(&nar);
    assert_eq!(put(&s, &format!("/{key}"), &nar).status, 201);
    accepted(&s, &h, text.as_bytes(), "after the NAR");
}

#[test]
fn narinfo_url_must_be_a_relative_nar_key() {
    let (s, nar, key) = with_nar(b"url");
    let h = store_hash("url");
    let good = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);
    let fh = nix32_sha256(&nar);
    for url in [
        format!("/{key}"),
        format!("http://example.org/{key}"),
        format!("nar/../{key}"),
        format!("nar/{fh}"),
        format!("nar/{fh}.narinfo"),
        format!("x/{fh}.nar"),
        format!("nar/{}.nar", fh.to_uppercase()),
        String::new(),
    ] {
        let mut bad = good.clone();
        bad.url = url.clone();
        refused(
            &s,
            &h,
            bad.render().as_bytes(),
            &format!("URL {url:?}"),
            &[&key],
        );
    }
    accepted(&s, &h, good.render().as_bytes(), "good URL");
}

#[test]
fn narinfo_file_hash_mismatch() {
    check_rule("FileHash != file hash of URL", |n| {
        // NarHash follows, so that FileHash vs the URL is the only defect.
        n.file_hash = Some(format!("sha256:{}", nix32_sha256(b"not the nar")));
        n.nar_hash = n.file_hash.clone().unwrap();
        n.render()
    });
}

#[test]
fn narinfo_file_size_mismatch() {
    check_rule("FileSize != stored size", |n| {
        let size: u64 = n.file_size.as_ref().unwrap().parse().unwrap();
        n.file_size = Some((size + 8).to_string());
        n.nar_size = (size + 8).to_string();
        n.render()
    });
}

#[test]
fn narinfo_without_file_hash() {
    check_rule("missing FileHash", |n| {
        n.file_hash = None;
        n.render()
    });
}

#[test]
fn narinfo_without_file_size() {
    check_rule("missing FileSize", |n| {
        n.file_size = None;
        n.render()
    });
}

#[test]
fn narinfo_extension_inconsistent_with_compression() {
    let s = ServerBuilder::new().start();
    let mut keep = Vec::new();
    let cases = [
        ("xz", ".zst"),
        ("zstd", ".xz"),
        ("zstd", ""),
        ("xz", ""),
        ("bzip2", ".br"),
        ("none", ".xz"),
        ("gzip", ".xz"),
        ("lz4", ".lzip"),
    ];
    for (i, (compression, ext)) in cases.into_iter().enumerate() {
        // A file really compressed as its extension says, so only the narinfo is wrong.
        let nar = nar_of(format!("uncompressed {i}").as_bytes());
        let actual = COMPRESSIONS
            .iter()
            .find(|(_, e)| *e == ext)
            .map_or("none", |(c, _)| c);
        let file = compress(&nar, actual);
        let key = format!("nar/{}.nar{ext}", nix32_sha256(&file));
        assert_eq!(put(&s, &format!("/{key}"), &file).status, 201);
        keep.push(key);
        let h = store_hash(&format!("ext {i}"));
        let info = NarInfo::compressed(STORE, &h, "p", &nar, &file, compression, ext);
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        refused(
            &s,
            &h,
            info.render().as_bytes(),
            &format!("Compression {compression} with URL extension {ext:?}"),
            &keep,
        );
    }
}

#[test]
fn narinfo_uncompressed_nar_hash_must_equal_file_hash() {
    check_rule("Compression none, NarHash != FileHash", |n| {
        n.nar_hash = format!("sha256:{}", nix32_sha256(b"something else"));
        n.render()
    });
}

#[test]
fn narinfo_uncompressed_nar_size_must_equal_file_size() {
    check_rule("Compression none, NarSize != FileSize", |n| {
        let size: u64 = n.nar_size.parse().unwrap();
        n.nar_size = (size + 8).to_string();
        n.render()
    });
}

#[test]
fn narinfo_reference_missing_from_the_cache() {
    let (s, nar, key) = with_nar(b"refs");
    let dep = store_hash("missing dep");
    let h = store_hash("has refs");
    let dep_ref = format!("{dep}-dep");
    let info = NarInfo::uncompressed(STORE, &h, "top", &nar, &[&dep_ref]);
    refused(
        &s,
        &h,
        info.render().as_bytes(),
        "reference missing",
        &[&key],
    );
    // Upload the reference first, as Nix does: then it is accepted.
    let dep_info = NarInfo::uncompressed(STORE, &dep, "dep", &nar, &[]);
    accepted(&s, &dep, dep_info.render().as_bytes(), "the reference");
    accepted(&s, &h, info.render().as_bytes(), "after its reference");
}

#[test]
fn narinfo_garbage_is_refused() {
    let (s, nar, key) = with_nar(b"garbage");
    let h = store_hash("garbage");
    let good = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]).render();
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\n".to_vec(),
        b"hello world\n".to_vec(),
        b"\x00\xff\xfe garbage \x01\x02\n".to_vec(),
        vec![0xff; 300],
        br#"{"StorePath":"/nix/store/x"}"#.to_vec(),
        // Key:value without the space loses the value's first character in Nix.
        good.replace(": ", ":").into_bytes(),
        // The narinfo of another path entirely.
        b"StorePath: /nix/store/x\n".to_vec(),
        // Valid lines, then junk.
        format!("{good}this is not a field\n").into_bytes(),
        // A truncated narinfo.
        good.as_bytes()[..good.len() / 2].to_vec(),
    ];
    for body in bodies {
        refused(&s, &h, &body, "garbage", &[&key]);
    }
    accepted(&s, &h, good.as_bytes(), "good");
}

#[test]
fn narinfo_over_one_mib_is_refused() {
    let (s, nar, key) = with_nar(b"big narinfo");
    let h = store_hash("big narinfo");
    let mut info = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);
    info.deriver = Some(format!("{}-{}.drv", store_hash("d"), "x".repeat(150)));
    let mut text = info.render();
    // Unknown fields are legal Nix syntax; only the size is wrong.
    let filler = format!("X-Padding: {}\n", "a".repeat(1000));
    while text.len() <= 1024 * 1024 {
        text.push_str(&filler);
    }
    let r = put(&s, &format!("/{h}.narinfo"), text.as_bytes());
    assert!(
        matches!(r.status, 400 | 413),
        "narinfo over 1 MiB: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(get(&s, &format!("/{h}.narinfo")).status, 404);
    assert_only(&s, &[&key]);
}

#[test]
fn narinfo_with_a_malformed_sig_line() {
    for sig in ["no-colon-here", ":AAAA", "name:not base64!!", "name:"] {
        check_rule(&format!("Sig {sig:?}"), |n| {
            n.sigs.push(sig.to_owned());
            n.render()
        });
    }
}

#[test]
fn realisations_and_debuginfo_must_be_json_objects() {
    let s = ServerBuilder::new().start();
    let h = store_hash("json");
    let paths = [
        format!("/realisations/sha256:{}!out.doi", "ab".repeat(32)),
        format!("/build-trace-v2/{h}-x.drv/out.doi"),
        "/debuginfo/02623eda209c26a59b1a8638ff7752f6b945c26b.debug".to_owned(),
    ];
    let mut big = br#"{"x":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    big.extend_from_slice(br#""}"#);
    for path in &paths {
        for body in [
            &b""[..],
            b"not json",
            b"{",
            b"[1,2,3]",
            b"\"a string\"",
            b"42",
            b"null",
            b"{\"a\":1} trailing",
            &big,
        ] {
            let r = put(&s, path, body);
            assert!(
                r.status == 400 || (body.len() > 1024 * 1024 && r.status == 413),
                "{path} {:?}: {} {}",
                String::from_utf8_lossy(&body[..body.len().min(40)]),
                r.status,
                r.text()
            );
            assert_eq!(get(&s, path).status, 404);
        }
    }
    assert_only(&s, &[]);
    for path in &paths {
        assert_eq!(put(&s, path, br#"{"ok":true}"#).status, 201, "{path}");
    }
}

#[test]
fn listings_must_be_json_objects() {
    let s = ServerBuilder::new().start();
    let path = format!("/{}.ls", store_hash("listing"));
    for body in [&b""[..], b"not json", b"{", b"[1]", b"{\"a\":1} trailing"] {
        let r = put(&s, &path, body);
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            r.text()
        );
    }
    assert_only(&s, &[]);
    let listing = br#" {"version":1,"root":{"type":"directory","entries":{}}}"#;
    assert_eq!(put(&s, &path, listing).status, 201);
    assert_eq!(get(&s, &path).body, listing);
}

/// Listings are checked as they stream to storage: one broken deep inside megabytes
/// (invalid UTF-8 in a name, a stray bracket, a second document) is refused with 400, leaves nothing
/// pending, and does not touch the listing already stored under its key.
#[test]
fn a_listing_broken_after_megabytes_changes_nothing() {
    let s = ServerBuilder::new().start();
    let path = format!("/{}.ls", store_hash("long listing"));
    let entries: String = (0..100_000)
        .map(|n| format!("\"f{n:06}\":{{\"type\":\"regular\",\"size\":{n}}},"))
        .collect();
    let valid = format!("{{\"version\":1,\"root\":{{\"type\":\"directory\",\"entries\":{{{entries}\"z\":{{\"type\":\"symlink\",\"target\":\"x\"}}}}}}}}");
    assert_eq!(put(&s, &path, valid.as_bytes()).status, 201);
    // Half-way, where a key starts (megabytes into the body).
    let key = valid.find("\"f050000\"").expect("the entry is there");
    let with = |at: usize, bytes: &[u8]| {
        [&valid.as_bytes()[..at], bytes, &valid.as_bytes()[at..]].concat()
    };
    let broken = [
        with(key + 2, b"\xff"),
        with(key, b"]"),
        with(valid.len(), b"{}"),
    ];
    for body in &broken {
        let r = put(&s, &path, body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("JSON object"), "{}", r.text());
    }
    assert_eq!(
        get(&s, &path).body,
        valid.as_bytes(),
        "the stored listing is intact"
    );
    assert!(s.pending().is_empty(), "{:?}", s.pending());
}

#[test]
fn content_encoding_is_refused() {
    let s = ServerBuilder::new().start();
    let h = store_hash("encoded");
    for (path, body) in [
        (format!("/{h}.ls"), br#"{"version":1}"#.to_vec()),
        (format!("/log/{h}-x.drv"), b"log\n".to_vec()),
    ] {
        for enc in ["gzip", "br", "zstd", "xz"] {
            let r = send(s.addr, "PUT", &path, &[("Content-Encoding", enc)], &body);
            assert_eq!(r.status, 415, "{path} {enc}: {}", r.text());
        }
    }
    assert_only(&s, &[]);
}

// ---------------------------------------------------------------------------------
// Trusted public keys.

/// A server trusting `test-key-1`; returns it with the key and an uploaded NAR.
fn trusting() -> (Server, ed25519_dalek::SigningKey, Vec<u8>, String) {
    let key = signing_key(1);
    let s = ServerBuilder::new()
        .env(
            "NIX_STORED_TRUSTED_PUBLIC_KEYS",
            &format!(
                "{} {}",
                public_key_line("unrelated-1", &signing_key(9)),
                public_key_line("test-key-1", &key)
            ),
        )
        .start();
    let nar = nar_of(b"signed contents");
    let nk = nar_key(&nar);
    assert_eq!(put(&s, &format!("/{nk}"), &nar).status, 201);
    (s, key, nar, nk)
}

#[test]
fn trusted_keys_require_a_valid_signature() {
    let (s, key, nar, nk) = trusting();
    let h = store_hash("signed");
    let info = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);

    refused(&s, &h, info.render().as_bytes(), "unsigned", &[&nk]);

    let mut other = info.clone();
    other.sign(STORE, "other-key-1", &signing_key(2));
    refused(
        &s,
        &h,
        other.render().as_bytes(),
        "signed by an untrusted key",
        &[&nk],
    );

    let mut wrong_name = info.clone();
    wrong_name.sign(STORE, "other-key-1", &key);
    refused(
        &s,
        &h,
        wrong_name.render().as_bytes(),
        "trusted key under another name",
        &[&nk],
    );

    let mut impostor = info.clone();
    impostor.sign(STORE, "test-key-1", &signing_key(2));
    refused(
        &s,
        &h,
        impostor.render().as_bytes(),
        "trusted name, wrong key",
        &[&nk],
    );

    // A signature over another path does not carry over.
    let mut elsewhere = NarInfo::uncompressed(STORE, &store_hash("elsewhere"), "p", &nar, &[]);
    elsewhere.sign(STORE, "test-key-1", &key);
    let mut stolen = info.clone();
    stolen.sigs = elsewhere.sigs.clone();
    refused(
        &s,
        &h,
        stolen.render().as_bytes(),
        "signature of another path",
        &[&nk],
    );

    let mut signed = info.clone();
    signed.sign(STORE, "test-key-1", &key);
    // Tampering after signing breaks it.
    let mut tampered = signed.clone();
    tampered.store_path = format!("{STORE}/{h}-renamed");
    refused(
        &s,
        &h,
        tampered.render().as_bytes(),
        "tampered StorePath",
        &[&nk],
    );

    accepted(
        &s,
        &h,
        signed.render().as_bytes(),
        "signed by the trusted key",
    );

    // An untrusted signature next to a trusted one is fine.
    let mut both = info.clone();
    both.sign(STORE, "other-key-1", &signing_key(2));
    both.sign(STORE, "test-key-1", &key);
    accepted(&s, &h, both.render().as_bytes(), "two signatures");
}

#[test]
fn trusted_signature_covers_sorted_full_reference_paths() {
    let (s, key, nar, _) = trusting();
    // Two references, listed in the narinfo out of order.
    let a = store_hash("ref a");
    let b = store_hash("ref b");
    let (first, second) = if a < b { (a, b) } else { (b, a) };
    for (h, name) in [(&first, "first"), (&second, "second")] {
        let mut dep = NarInfo::uncompressed(STORE, h, name, &nar, &[]);
        dep.sign(STORE, "test-key-1", &key);
        accepted(&s, h, dep.render().as_bytes(), name);
    }
    let top = store_hash("top");
    let refs = [format!("{second}-second"), format!("{first}-first")];
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut info = NarInfo::uncompressed(STORE, &top, "top", &nar, &refs);
    info.sign(STORE, "test-key-1", &key);
    assert!(info
        .fingerprint(STORE)
        .ends_with(&format!(";{STORE}/{first}-first,{STORE}/{second}-second")));
    accepted(&s, &top, info.render().as_bytes(), "signed with references");
}

// The paths, NAR and signature below were produced by Nix 2.8 (see the protocol notes):
// text file "hello" named a-dep, and b-top, which references it.
const A_DEP: &str = "5xf4hlminf1vnpb5awkarlb8wxix6mca";
const A_DEP_CA: &str = "text:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic";
const B_TOP: &str = "nx73vzmbhpb3836sq4af0c7y7rlw5z6y";
const B_TOP_CONTENTS: &[u8] = b"uses /nix/store/5xf4hlminf1vnpb5awkarlb8wxix6mca-a-dep";
const B_TOP_NAR_HASH: &str = "1s5nqwqlnw6zdnqzjfcc78w50vlwxm1rb005xl3y7z5fd9165z2p";
const B_TOP_CA: &str = "text:sha256:0aljj4maffkd8av2clqmf6m2l64pl90mg8r1vbqbj0gdh1ihp9d3";
const NIX_KEY: &str = "test-cache-1:DZFFwF/5PPclp0cIqjJCty5ElDaVKFCiNBqWUhBOK08=";
const NIX_SIG: &str = "test-cache-1:JYPd+r3BW12yJxfmNEGc7i2Tzg4qqMv359bEix3iF4iDAr/UH8gv3JWOk2mpg+NCqp4uZX+BGFuExX/mwvXDDQ==";

fn nix_server() -> Server {
    let s = ServerBuilder::new()
        .env("NIX_STORED_TRUSTED_PUBLIC_KEYS", NIX_KEY)
        .start();
    for contents in [&b"hello"[..], B_TOP_CONTENTS] {
        let nar = nar_of(contents);
        assert_eq!(put(&s, &format!("/{}", nar_key(&nar)), &nar).status, 201);
    }
    s
}

fn b_top_info() -> NarInfo {
    let nar = nar_of(B_TOP_CONTENTS);
    assert_eq!(nar.len(), 168, "fixture: the NAR Nix 2.8 produced");
    assert_eq!(nix32_sha256(&nar), B_TOP_NAR_HASH, "fixture");
    NarInfo::uncompressed(STORE, B_TOP, "b-top", &nar, &[&format!("{A_DEP}-a-dep")])
}

#[test]
fn trusted_keys_accept_a_signature_made_by_nix() {
    let s = nix_server();
    // a-dep has no signature but a content address that reproduces its store path.
    let mut dep = NarInfo::uncompressed(STORE, A_DEP, "a-dep", &nar_of(b"hello"), &[]);
    dep.ca = Some(A_DEP_CA.into());
    accepted(&s, A_DEP, dep.render().as_bytes(), "a-dep by CA");

    // b-top with Nix's signature and without its CA line: only the signature vouches.
    let mut top = b_top_info();
    refused(
        &s,
        B_TOP,
        top.render().as_bytes(),
        "b-top unsigned, no CA",
        &[
            &nar_key(&nar_of(b"hello")),
            &nar_key(&nar_of(B_TOP_CONTENTS)),
            &format!("{A_DEP}.narinfo"),
        ],
    );
    top.sigs.push(NIX_SIG.into());
    accepted(&s, B_TOP, top.render().as_bytes(), "b-top signed by Nix");

    // And exactly the narinfo Nix wrote (signature and CA).
    top.ca = Some(B_TOP_CA.into());
    accepted(&s, B_TOP, top.render().as_bytes(), "b-top as Nix wrote it");
}

#[test]
fn trusted_keys_refuse_a_content_address_that_does_not_match() {
    let s = nix_server();
    let keep = [nar_key(&nar_of(b"hello")), nar_key(&nar_of(B_TOP_CONTENTS))];
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    let mut dep = NarInfo::uncompressed(STORE, A_DEP, "a-dep", &nar_of(b"hello"), &[]);
    // The CA of another content.
    dep.ca = Some(B_TOP_CA.into());
    refused(
        &s,
        A_DEP,
        dep.render().as_bytes(),
        "CA of other contents",
        &keep,
    );
    // The right CA under another name does not reproduce the path.
    let mut renamed = NarInfo::uncompressed(STORE, A_DEP, "a-dep2", &nar_of(b"hello"), &[]);
    renamed.ca = Some(A_DEP_CA.into());
    refused(
        &s,
        A_DEP,
        renamed.render().as_bytes(),
        "CA with another name",
        &keep,
    );
    dep.ca = Some(A_DEP_CA.into());
    accepted(&s, A_DEP, dep.render().as_bytes(), "right CA");
}

// ---------------------------------------------------------------------------------
// Sizes and timeouts.

#[test]
fn declared_size_over_the_limit_is_413_before_the_body() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "1K")
        .start();
    let big = nar_of(&vec![1u8; 2000]);
    let key = format!("/{}", nar_key(&big));

    // With Expect: 100-continue the refusal comes instead of `100 Continue`.
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[("Expect", "100-continue")],
            Some(big.len() as u64),
        ))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let first = read_head(&mut reader).expect("an answer without sending the body");
    assert_eq!(
        first.status, 413,
        "expected 413 without `100 Continue`, got {} {:?}",
        first.status, first.headers
    );
    drop(reader);
    drop(stream);

    // Without Expect, the answer still comes before the body is sent.
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[],
            Some(big.len() as u64),
        ))
        .unwrap();
    let r = read_response(&mut BufReader::new(stream), false).expect("413 before the body is sent");
    assert_eq!(r.status, 413, "{}", r.text());

    // The whole body, sent anyway.
    let r = put(&s, &key, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_only(&s, &[]);

    // At the limit is fine.
    let small = nar_of(&vec![2u8; 1024 - nar_of(b"").len()]);
    assert_eq!(small.len(), 1024);
    let r = put(&s, &format!("/{}", nar_key(&small)), &small);
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn chunked_body_over_the_limit_is_refused() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_MAX_UPLOAD_SIZE", "1K")
        .start();
    let big = nar_of(&vec![3u8; 1500]);
    let key = format!("/{}", nar_key(&big));
    let mut req = format!(
        "PUT {key} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.addr
    )
    .into_bytes();
    for chunk in big.chunks(256) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(s.addr, &req);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(head(&s, &key).status, 404);
    assert_only(&s, &[]);
}

#[test]
fn a_stalled_body_times_out_and_stores_nothing() {
    let s = ServerBuilder::new()
        .env("NIX_STORED_BODY_TIMEOUT", "2")
        .start();
    let nar = nar_of(&vec![5u8; 4096]);
    let key = format!("/{}", nar_key(&nar));
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[],
            Some(nar.len() as u64),
        ))
        .unwrap();
    stream.write_all(&nar[..1000]).unwrap();
    stream.flush().unwrap();
    // Now the client stalls; the server must give up on its own (the client's read
    // timeout of 60 s is only a safety net).
    match read_response(&mut BufReader::new(stream.try_clone().unwrap()), false) {
        Ok(r) => assert_eq!(r.status, 408, "{}", r.text()),
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
            ),
            "the server never gave up on the stalled body: {e}"
        ),
    }
    assert!(
        eventually(Duration::from_secs(10), || s.pending().is_empty()),
        "temporary file left: {:?}",
        s.store.files()
    );
    assert_eq!(head(&s, &key).status, 404);
    assert_only(&s, &[]);
    drop(stream);
    // A prompt upload of the same key works.
    assert_eq!(put(&s, &key, &nar).status, 201);
}

// ---------------------------------------------------------------------------------
// Concurrency, crashes, shutdown.

#[test]
fn concurrent_puts_of_one_nar() {
    let s = ServerBuilder::new().start();
    let contents: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let nar = nar_of(&contents);
    let key = format!("/{}", nar_key(&nar));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| scope.spawn(|| put(&s, &key, &nar).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|st| matches!(st, 201 | 204)),
        "{statuses:?}\n{}",
        s.log()
    );
    assert!(statuses.contains(&201), "{statuses:?}");
    let on_disk = s.store.read(&key).unwrap();
    assert!(on_disk == nar, "stored NAR differs from the upload");
    assert_eq!(get(&s, &key).body, nar);
    assert!(s.pending().is_empty());
    assert_only(&s, &[&key[1..]]);
}

#[test]
fn concurrent_re_signings_of_one_narinfo_keep_every_signature() {
    let (s, nar, nk) = with_nar(b"concurrent narinfo");
    let h = store_hash("concurrent");
    let base = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);
    let path = format!("/{h}.narinfo");
    assert_eq!(put(&s, &path, base.render().as_bytes()).status, 201);
    // 50 builders sign the same path, each with its own key, at once: the
    // read-merge-write of each upload must not drop another's signature.
    let versions: Vec<NarInfo> = (0..50u8)
        .map(|i| {
            let mut info = base.clone();
            info.sign(STORE, &format!("builder-{i}"), &signing_key(i + 1));
            info
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = versions
            .iter()
            .map(|v| {
                let (s, path) = (&s, &path);
                scope.spawn(move || put(s, path, v.render().as_bytes()).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|&st| st == 204),
        "{statuses:?}\n{}",
        s.log()
    );
    let served = get(&s, &path).text();
    for v in &versions {
        assert!(served.contains(&v.sigs[0]), "lost {}:\n{served}", v.sigs[0]);
    }
    assert_eq!(served.matches("Sig: ").count(), 50, "{served}");
    assert!(s.pending().is_empty());
    let narinfo_file = format!("{h}.narinfo");
    assert_only(&s, &[&nk, &narinfo_file]);
}

#[test]
fn concurrent_conflicting_narinfos_one_wins() {
    let (s, nar, nk) = with_nar(b"conflicting narinfos");
    let h = store_hash("conflicting");
    let versions: Vec<String> = (0..20)
        .map(|i| {
            let mut info = NarInfo::uncompressed(STORE, &h, "p", &nar, &[]);
            info.deriver = Some(format!("{}-p-{i}.drv", store_hash(&format!("drv {i}"))));
            info.render()
        })
        .collect();
    let path = format!("/{h}.narinfo");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = versions
            .iter()
            .map(|v| {
                let (s, path) = (&s, &path);
                scope.spawn(move || put(s, path, v.as_bytes()).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&st| st == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&st| st == 409).count(),
        19,
        "{statuses:?}"
    );
    let winner = &versions[statuses.iter().position(|&st| st == 201).unwrap()];
    assert_eq!(&get(&s, &path).text(), winner);
    let narinfo_file = format!("{h}.narinfo");
    assert_only(&s, &[&nk, &narinfo_file]);
}

// ---------------------------------------------------------------------------------
// A stored path never changes: re-uploads may only add signatures.

/// PUTs `body` to `<h>.narinfo`, expects 409 with the field named, and the stored
/// narinfo as it was.
fn conflicts(s: &Server, h: &str, body: &str, field: &str, stored: &str) {
    let path = format!("/{h}.narinfo");
    let r = put(s, &path, body.as_bytes());
    assert_eq!(r.status, 409, "{field}: {}", r.text());
    assert!(r.text().contains(field), "{field}: {}", r.text());
    assert_eq!(r.text().lines().count(), 1, "{}", r.text());
    assert_eq!(
        get(s, &path).text(),
        stored,
        "{field}: the stored narinfo changed"
    );
}

#[test]
fn a_stored_narinfo_cannot_be_rewritten() {
    let (s, nar, _) = with_nar(b"stored path");
    let dep_nar = nar_of(b"a dependency");
    assert_eq!(
        put(&s, &format!("/{}", nar_key(&dep_nar)), &dep_nar).status,
        201
    );
    let dep = store_hash("a dependency");
    let dep_info = NarInfo::uncompressed(STORE, &dep, "dep", &dep_nar, &[]);
    assert_eq!(
        put(&s, &format!("/{dep}.narinfo"), dep_info.render().as_bytes()).status,
        201
    );

    let h = store_hash("stored path");
    let key = signing_key(7);
    let mut signed = NarInfo::uncompressed(STORE, &h, "path", &nar, &[]);
    signed.deriver = Some(format!("{}-path.drv", store_hash("its drv")));
    signed.sign(STORE, "builder-1", &key);
    let stored = signed.render();
    assert_eq!(
        put(&s, &format!("/{h}.narinfo"), stored.as_bytes()).status,
        201
    );

    // Another path's NAR (the dependency's), with its hash and size.
    let mut other_contents = signed.clone();
    other_contents.sigs.clear();
    other_contents.url = format!("nar/{}.nar", nix32_sha256(&dep_nar));
    other_contents.file_hash = Some(format!("sha256:{}", nix32_sha256(&dep_nar)));
    other_contents.nar_hash = format!("sha256:{}", nix32_sha256(&dep_nar));
    other_contents.file_size = Some(dep_nar.len().to_string());
    other_contents.nar_size = dep_nar.len().to_string();
    conflicts(&s, &h, &other_contents.render(), "NarHash", &stored);

    let mut more_refs = signed.clone();
    more_refs.references = vec![format!("{dep}-dep")];
    conflicts(&s, &h, &more_refs.render(), "References", &stored);

    let mut other_deriver = signed.clone();
    other_deriver.deriver = Some(format!("{}-path.drv", store_hash("evil drv")));
    conflicts(&s, &h, &other_deriver.render(), "Deriver", &stored);

    let mut no_deriver = signed.clone();
    no_deriver.deriver = None;
    conflicts(&s, &h, &no_deriver.render(), "Deriver", &stored);

    let mut renamed = signed.clone();
    renamed.store_path = format!("{STORE}/{h}-renamed");
    conflicts(&s, &h, &renamed.render(), "StorePath", &stored);

    // The same narinfo again changes nothing.
    let r = put(&s, &format!("/{h}.narinfo"), stored.as_bytes());
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(get(&s, &format!("/{h}.narinfo")).text(), stored);
}

#[test]
fn re_uploads_merge_signatures_and_never_drop_one() {
    let (s, nar, _) = with_nar(b"re-signed path");
    let h = store_hash("re-signed path");
    let path = format!("/{h}.narinfo");
    let mut first = NarInfo::uncompressed(STORE, &h, "path", &nar, &[]);
    first.sign(STORE, "builder-1", &signing_key(1));
    assert_eq!(put(&s, &path, first.render().as_bytes()).status, 201);

    // An unsigned version cannot strip the signature.
    let mut unsigned = first.clone();
    unsigned.sigs.clear();
    assert_eq!(put(&s, &path, unsigned.render().as_bytes()).status, 204);
    let served = get(&s, &path).text();
    assert!(served.contains(&first.sigs[0]), "{served}");

    // `nix store sign --store` uploads the narinfo with the new signature added;
    // another builder may upload its own signature alone. Both are kept.
    let mut second = unsigned.clone();
    second.sign(STORE, "builder-2", &signing_key(2));
    assert_eq!(put(&s, &path, second.render().as_bytes()).status, 204);
    let served = get(&s, &path).text();
    assert!(served.contains(&first.sigs[0]), "{served}");
    assert!(served.contains(&second.sigs[0]), "{served}");
    assert_eq!(served.matches("Sig: ").count(), 2, "{served}");
    // What is served still passes every upload rule (it is a valid narinfo).
    let (s2, _, _) = with_nar(b"re-signed path");
    let r = put(&s2, &path, served.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
}

const MIB: usize = 1024 * 1024;

/// A large NAR of one pseudo-random file, produced block by block.
struct BigFile {
    blocks: usize,
    seed: Vec<u8>,
}

impl BigFile {
    fn new(blocks: usize) -> Self {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let seed = (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        BigFile { blocks, seed }
    }

    /// The `i`th MiB of the NAR: its header, then the contents, then its end.
    fn block(&self, i: usize) -> Vec<u8> {
        let mut b = self.seed.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        // The header and the end together take 112 bytes, so the contents need no
        // padding.
        let header = nar_of(b"");
        let (head, tail) = header.split_at(header.len() - 16 - 8);
        if i == 0 {
            b[..head.len()].copy_from_slice(head);
            let contents = (self.len() - header.len()) as u64;
            b[head.len()..head.len() + 8].copy_from_slice(&contents.to_le_bytes());
        }
        if i + 1 == self.blocks {
            b[MIB - 16..].copy_from_slice(&tail[8..]);
        }
        b
    }

    fn len(&self) -> usize {
        self.blocks * MIB
    }

    fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for i in 0..self.blocks {
            h.update(self.block(i));
        }
        nix_derivation::nixbase32::encode(&h.finalize())
    }
}

#[test]
fn sigkill_during_a_large_upload_leaves_nothing() {
    let store = Store::fresh("sigkill");
    let big = BigFile::new(200);
    let key = format!("/nar/{}.nar", big.hash());
    let mut s = ServerBuilder::new().store(&store).start();

    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[],
            Some(big.len() as u64),
        ))
        .unwrap();
    for i in 0..100 {
        stream.write_all(&big.block(i)).unwrap();
    }
    // Wait until the server is really writing the upload, then kill it.
    assert!(
        wait_for_upload_start(&s, true),
        "no temporary file or multipart upload appeared during the upload: {:?}",
        store.files()
    );
    s.kill9();
    drop(stream);

    let s = ServerBuilder::new().store(&store).start();
    // A directory's leftovers are removed at start. S3 has no listing of multipart
    // uploads in object_store: the killed one stays invisible until the bucket's
    // lifecycle rule (AbortIncompleteMultipartUpload, see the README) drops it.
    let killed = store.pending();
    if !s3_backend() {
        assert!(killed.is_empty(), ".tmp not emptied at start: {killed:?}");
    }
    assert_eq!(get(&s, &key).status, 404);
    assert_eq!(head(&s, &key).status, 404);
    assert_eq!(store.files(), vec!["nix-cache-info".to_owned()]);

    // A fresh, complete upload of the same NAR works.
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[],
            Some(big.len() as u64),
        ))
        .unwrap();
    for i in 0..big.blocks {
        stream.write_all(&big.block(i)).unwrap();
    }
    let r = read_response(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let hd = head(&s, &key);
    assert_eq!(hd.status, 200);
    assert_eq!(
        hd.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    let tail = send(s.addr, "GET", &key, &[("Range", "bytes=-64")], b"");
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &big.block(big.blocks - 1)[MIB - 64..]);
    // Every byte, as stored: on S3 the parts are filled into recycled buffers.
    let stored = store.read(&key).expect("stored");
    assert_eq!(stored.len(), big.len(), "stored size");
    let stored_hash = {
        use sha2::{Digest, Sha256};
        nix_derivation::nixbase32::encode(&Sha256::digest(&stored))
    };
    assert_eq!(stored_hash, big.hash(), "stored bytes");
    drop(stored);
    let left = store.pending();
    assert!(
        left.iter().all(|p| killed.contains(p)),
        "no upload left but the killed one: {left:?}"
    );
    drop(s);
    store.remove();
}

#[test]
fn a_large_upload_with_the_wrong_hash_is_discarded_whole() {
    // Large enough for several multipart parts on S3: the parts already sent must be
    // aborted, not completed, when the hash turns out wrong at the end.
    let s = ServerBuilder::new().start();
    let big = BigFile::new(20);
    let wrong = format!("/nar/{}.nar", nix32_sha256(b"not this body"));
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &wrong,
            &[],
            Some(big.len() as u64),
        ))
        .unwrap();
    for i in 0..big.blocks {
        stream.write_all(&big.block(i)).unwrap();
    }
    let r = read_response(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        eventually(Duration::from_secs(10), || s.pending().is_empty()),
        "upload left behind: {:?}",
        s.pending()
    );
    assert_eq!(head(&s, &wrong).status, 404);
    assert_only(&s, &[]);
    // The same body under its right name is stored and read back whole, also from an
    // offset inside a later part.
    let right = format!("/nar/{}.nar", big.hash());
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &right,
            &[],
            Some(big.len() as u64),
        ))
        .unwrap();
    for i in 0..big.blocks {
        stream.write_all(&big.block(i)).unwrap();
    }
    let r = read_response(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let whole = get(&s, &right);
    assert_eq!(whole.body.len(), big.len());
    for i in [0, 9, 19] {
        assert_eq!(
            whole.body[i * MIB..(i + 1) * MIB],
            big.block(i)[..],
            "block {i}"
        );
    }
    let from = 17 * MIB + 5;
    let r = send(
        s.addr,
        "GET",
        &right,
        &[("Range", &format!("bytes={from}-"))],
        b"",
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body[..], whole.body[from..]);
    assert!(s.pending().is_empty());
}

#[test]
fn concurrent_puts_of_one_large_nar() {
    // Several multipart uploads of one key on S3: the store may drop the others when
    // the first completes; every client must still get a success.
    let s = ServerBuilder::new().start();
    let big = BigFile::new(20);
    let key = format!("/nar/{}.nar", big.hash());
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut stream = connect(s.addr);
                    stream
                        .write_all(&request_head(
                            s.addr,
                            "PUT",
                            &key,
                            &[],
                            Some(big.len() as u64),
                        ))
                        .unwrap();
                    for i in 0..big.blocks {
                        stream.write_all(&big.block(i)).unwrap();
                    }
                    read_response(&mut BufReader::new(stream), false)
                        .unwrap()
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|st| matches!(st, 201 | 204)),
        "{statuses:?}\n{}",
        s.log()
    );
    let got = get(&s, &key);
    assert_eq!(got.body.len(), big.len());
    assert_eq!(got.body[19 * MIB..], big.block(19)[..]);
    assert_only(&s, &[&key[1..]]);
}

#[test]
fn sigterm_when_idle_exits_0() {
    let mut s = ServerBuilder::new().start();
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    let status = s.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", s.log());
}

#[test]
fn sigint_when_idle_exits_0() {
    let mut s = ServerBuilder::new().start();
    assert_eq!(get(&s, "/nix-cache-info").status, 200);
    let ok = std::process::Command::new("kill")
        .args(["-INT", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = s.wait();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", s.log());
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish() {
    let mut s = ServerBuilder::new().start();
    let nar = nar_of(&vec![9u8; 4 * MIB]);
    let key = format!("/{}", nar_key(&nar));
    let mut stream = connect(s.addr);
    stream
        .write_all(&request_head(
            s.addr,
            "PUT",
            &key,
            &[],
            Some(nar.len() as u64),
        ))
        .unwrap();
    stream.write_all(&nar[..nar.len() / 2]).unwrap();
    assert!(wait_for_upload_start(&s, false), "the upload did not start");
    s.sigterm();
    // Give the signal time to arrive (not a timing assertion: the outcome must be the
    // same whether it has been handled yet or not).
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&nar[nar.len() / 2..]).unwrap();
    let r = read_response(&mut BufReader::new(stream), false).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let status = s.wait();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", s.log());
    assert_eq!(s.store.read(&key).unwrap(), nar);
    assert!(s.pending().is_empty());
}
