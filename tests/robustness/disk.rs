//! A full disk: the server runs on a 64 MiB tmpfs of its own. Uploads that do not
//! fit are refused with 507 (before the body when the declared length already
//! does not fit), nothing stored is damaged, reads go on (also after a restart on
//! the full disk), and uploads work again once space is freed. A filesystem that
//! reports no size at all is not taken for a full one.

use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::time::Duration;

use crate::common::{self, ServerBuilder};
use crate::support::*;

const TEST: &str = "full disk";

/// Fills the filesystem of `path` with one file until ENOSPC; returns its size.
fn fill(path: &std::path::Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create filler");
    let mut written = 0u64;
    for block in [1 << 20, 4096, 1] {
        let buf = vec![0x5au8; block];
        while f.write_all(&buf).is_ok() {
            written += block as u64;
        }
    }
    let _ = f.sync_all();
    written
}

/// Sends only the head of a PUT declaring `len` bytes (optionally with
/// `Expect: 100-continue`) and reads the first answer.
fn put_head_only(addr: std::net::SocketAddr, key: &str, len: u64, expect: bool) -> u16 {
    let mut stream = common::connect(addr);
    let headers: &[(&str, &str)] = if expect {
        &[("Expect", "100-continue")]
    } else {
        &[]
    };
    let head = common::request_head(addr, "PUT", key, headers, Some(len));
    stream.write_all(&head).expect("send head");
    let mut reader = BufReader::new(stream);
    common::read_head(&mut reader).map_or(0, |r| r.status)
}

/// A chunked PUT (no declared length) of `body` in 64 KiB chunks; the answer,
/// read even when the server stopped taking the body.
fn put_chunked(addr: std::net::SocketAddr, key: &str, body: &[u8]) -> u16 {
    let mut stream = common::connect(addr);
    let head = common::request_head(addr, "PUT", key, &[("Transfer-Encoding", "chunked")], None);
    let mut sent = stream.write_all(&head);
    for chunk in body.chunks(64 << 10) {
        if sent.is_err() {
            break;
        }
        sent = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(chunk))
            .and_then(|()| stream.write_all(b"\r\n"));
    }
    if sent.is_ok() {
        let _ = stream.write_all(b"0\r\n\r\n");
    }
    let _ = stream.shutdown(Shutdown::Write);
    common::read_response(&mut BufReader::new(stream), false).map_or(0, |r| r.status)
}

#[test]
fn full_disk() {
    let Some(fs) = Tmpfs::mount(TEST, "64m") else {
        return;
    };
    let seed = seed();
    let mut rng = Rng::new(seed);
    let cache = fs.path.join("cache");
    let start = || {
        ServerBuilder::new()
            .dir(&cache)
            .env("NIX_STORED_BODY_TIMEOUT", "10")
            .start()
    };
    let mut s = start();
    let mut conn = Conn::new(s.addr);

    // Stored before the disk fills: paths, a log, and one narinfo to overwrite later.
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut first_info = None;
    for i in 0..8 {
        let p = PathFixture::new(
            &format!("disk-{seed}-{i}"),
            &rng.bytes_in(1 << 10, 2 << 20),
            &[],
        );
        upload(&mut conn, &p).expect("upload before the disk fills");
        stored.push((p.nar_key(), p.nar.clone()));
        stored.push((p.narinfo_key(), p.info.render().into_bytes()));
        first_info.get_or_insert_with(|| p.info.clone());
    }
    let log_key = format!("/log/{}-x.drv", common::store_hash("disk-log"));
    let log = rng.text(5000).into_bytes();
    assert_eq!(conn.put(&log_key, &log).unwrap().status, 201);
    stored.push((log_key, log));
    let before = common::files_below(&cache);
    let (mut refused, mut before_body, mut other, mut reads) = (0, 0, Vec::new(), 0);
    let mut expect_507 = |what: &str, status: u16, refused: &mut u32| {
        if status == 507 {
            *refused += 1;
        } else {
            other.push(format!("{what}: {status}"));
        }
    };

    // Larger than the whole filesystem: refused on the head alone, with and
    // without Expect: 100-continue (a 100 or a wait for the body would fail).
    let big = PathFixture::new(&format!("disk-big-{seed}"), b"big", &[]);
    for expect in [false, true] {
        let status = put_head_only(s.addr, &big.nar_key(), 100 << 20, expect);
        expect_507("declared 100 MiB", status, &mut before_body);
    }

    // Now fill the disk to the last page, behind the server's back.
    let filler = fs.path.join("filler");
    let filled = fill(&filler);
    let waiting = PathFixture::new(&format!("disk-after-{seed}"), &rng.bytes(3 << 20), &[]);
    for expect in [false, true] {
        let status = put_head_only(s.addr, &waiting.nar_key(), waiting.nar.len() as u64, expect);
        expect_507("declared 3 MiB on a full disk", status, &mut before_body);
    }
    // Bodies that must be read to learn their size: ENOSPC mid-write.
    let status = put_chunked(s.addr, &waiting.nar_key(), &waiting.nar);
    expect_507("chunked 3 MiB", status, &mut refused);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let addr = s.addr;
            let p = PathFixture::new(&format!("disk-race-{seed}-{i}"), &[i as u8; 1 << 20], &[]);
            std::thread::spawn(move || put_chunked(addr, &p.nar_key(), &p.nar))
        })
        .collect();
    for t in threads {
        expect_507("concurrent chunked 1 MiB", t.join().unwrap(), &mut refused);
    }
    // A narinfo overwrite and a small new log: either 507, nothing changed.
    // (The first path re-signed: the one change a stored narinfo accepts.)
    let overwrite = {
        let mut info = first_info.clone().expect("a first path");
        info.sign(STORE, "disk-resign-1", &common::signing_key(3));
        info.render()
    };
    let r = conn.put(&stored[1].0, overwrite.as_bytes()).unwrap();
    expect_507("narinfo overwrite", r.status, &mut before_body);
    let r = conn
        .put(
            &format!("/log/{}-y.drv", common::store_hash("disk-log-2")),
            &rng.text(20_000).into_bytes(),
        )
        .unwrap();
    expect_507("log", r.status, &mut before_body);

    // Nothing damaged, nothing partial, reads go on.
    let mut damaged = Vec::new();
    let check_reads = |addr, damaged: &mut Vec<String>, reads: &mut u32| {
        let mut c = Conn::new(addr);
        for (key, body) in &stored {
            *reads += 2;
            match c.get(key) {
                Ok(r) if r.status == 200 && r.body == *body => {}
                Ok(r) => damaged.push(format!("GET {key}: {} ({} bytes)", r.status, r.body.len())),
                Err(e) => damaged.push(format!("GET {key}: {e}")),
            }
            match c.head(key) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => damaged.push(format!("HEAD {key}: {}", r.status)),
                Err(e) => damaged.push(format!("HEAD {key}: {e}")),
            }
        }
        *reads += 1;
        if c.get(&waiting.narinfo_key()).map(|r| r.status).ok() != Some(404) {
            damaged.push("a miss is not a 404 on the full disk".into());
        }
    };
    check_reads(s.addr, &mut damaged, &mut reads);
    assert!(
        common::eventually(Duration::from_secs(10), || temp_files(&cache) == 0),
        "refused uploads left temporary files: {:?}",
        common::files_below(&cache.join(".tmp"))
    );
    assert_eq!(
        common::files_below(&cache),
        before,
        "the refused uploads changed the cache"
    );

    // A restart on the full disk: the server starts and serves what it has.
    s.kill9();
    let mut s = start();
    check_reads(s.addr, &mut damaged, &mut reads);
    let status = put_head_only(s.addr, &waiting.nar_key(), waiting.nar.len() as u64, false);
    expect_507("declared 3 MiB after the restart", status, &mut before_body);

    // Space freed: the refused uploads now go through.
    std::fs::remove_file(&filler).unwrap();
    let mut conn = Conn::new(s.addr);
    upload(&mut conn, &waiting).expect("upload after freeing space");
    let r = conn.put(&stored[1].0, overwrite.as_bytes()).unwrap();
    assert_eq!(r.status, 204, "narinfo overwrite after freeing space");
    let chunked = PathFixture::new(&format!("disk-chunked-{seed}"), &rng.bytes(1 << 20), &[]);
    assert_eq!(put_chunked(s.addr, &chunked.nar_key(), &chunked.nar), 201);
    assert_eq!(
        conn.get(&waiting.nar_key()).unwrap().body,
        waiting.nar,
        "the NAR uploaded after freeing space"
    );
    let panicked = s.log().contains("panicked");
    s.kill9();

    figures(
        TEST,
        format_args!(
            "64 MiB tmpfs, {} objects stored, filler of {} MiB; {} uploads refused with 507 ({before_body} before the body, {refused} mid-body incl. 8 concurrent), {} other answers, {reads} reads while full (one restart on the full disk), {} damaged, {} temporary files left; after freeing space: 3 uploads accepted",
            stored.len(),
            filled >> 20,
            before_body + refused,
            other.len(),
            damaged.len(),
            temp_files(&cache),
        ),
    );
    assert!(other.is_empty(), "answers other than 507: {other:#?}");
    assert!(damaged.is_empty(), "reads on the full disk: {damaged:#?}");
    assert!(!panicked, "the server panicked");
    drop(fs);
}

/// A filesystem whose statfs reports no size at all (an unlimited tmpfs answers
/// zero blocks, as LazyFS and some network mounts do) is not a full one: uploads
/// with a declared length are stored, not refused with 507 up front.
#[test]
fn a_filesystem_of_unknown_size_is_not_full() {
    const TEST: &str = "unknown size";
    // size=0: no limit, and statfs says 0 blocks, 0 available.
    let Some(fs) = Tmpfs::mount(TEST, "0") else {
        return;
    };
    let cache = fs.path.join("cache");
    let s = ServerBuilder::new().dir(&cache).start();
    let nar = common::nar_of(&[7u8; 100 << 10]);
    let key = format!("/nar/{}.nar", common::nix32_sha256(&nar));
    let r = common::put(&s, &key, &nar);
    assert_eq!(r.status, 201, "{}", r.text());
    let g = common::get(&s, &key);
    assert_eq!(g.status, 200);
    assert_eq!(g.body, nar);
    assert!(
        common::eventually(Duration::from_secs(10), || s
            .log()
            .contains("reports no size")),
        "the skipped check is logged:\n{}",
        s.log()
    );
    figures(
        TEST,
        format_args!(
            "a {} byte NAR stored on a tmpfs reporting 0 blocks",
            nar.len()
        ),
    );
}
