//! Memory: many large uploads at once stay within NIX_STORED_MEMORY_BUDGET (plus
//! what the server needs anyway), and what cannot fit is refused with 503 and
//! Retry-After, never another error or a hang.

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};

use crate::common::{self, ServerBuilder};
use crate::support::*;

/// A process's peak resident memory in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The entries of a listing of a directory with `files` files, about 75 bytes each.
fn listing_entries(files: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(files * 80);
    for n in 0..files {
        if n > 0 {
            out.push(b',');
        }
        write!(
            out,
            "\"file-{n:08}.txt\":{{\"type\":\"regular\",\"size\":{},\"narOffset\":{}}}",
            n * 7 % 100_000,
            n * 131
        )
        .expect("writes to a Vec");
    }
    out
}

/// One upload's answer: status, Retry-After, and the reason line.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    text: String,
}

/// PUTs `parts` (concatenated) under `key` on a fresh connection.
fn put_parts(addr: SocketAddr, key: &str, parts: &[&[u8]]) -> Answer {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let result = (|| {
        let mut stream = common::try_connect(addr)?;
        stream.write_all(&common::request_head(
            addr,
            "PUT",
            key,
            &[],
            Some(len as u64),
        ))?;
        for part in parts {
            stream.write_all(part)?;
        }
        common::read_response(&mut BufReader::new(stream), false)
    })();
    match result {
        Ok(r) => Answer {
            status: r.status,
            retry_after: r.header("retry-after").map(str::to_owned),
            text: r.text(),
        },
        Err(e) => Answer {
            status: 0,
            retry_after: None,
            text: e.to_string(),
        },
    }
}

/// 100 listings of several MiB each, uploaded at the same instant: before the
/// budget, each was held whole until validated (RSS grew by their sum, 600+ MiB);
/// now they stream, and the server's peak stays within the budget plus a margin
/// for what 100 connections need anyway (socket buffers of hyper, tasks, the
/// allocator's arenas). Every upload gets 2xx, or 503 with Retry-After; what was
/// accepted reads back byte for byte.
#[test]
fn parallel_large_uploads_stay_within_the_memory_budget() {
    const TEST: &str = "parallel_large_uploads_stay_within_the_memory_budget";
    const BUDGET_MIB: u64 = 32;
    const MARGIN_MIB: u64 = 96;
    let clients = env_or("NIX_STORED_MEMORY_CLIENTS", 100usize);
    let files = by_mode(80_000, 200_000);
    let server = ServerBuilder::new()
        .env("NIX_STORED_MEMORY_BUDGET", &format!("{BUDGET_MIB}M"))
        .start();
    let pid = server.pid();
    let addr = server.addr;
    // A first request, so that the baseline includes a served connection.
    assert_eq!(common::get(&server, "/nix-cache-info").status, 200);
    let baseline = rss_kib(pid);

    let entries = Arc::new(listing_entries(files));
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (entries, barrier) = (entries.clone(), barrier.clone());
            std::thread::spawn(move || {
                let key = format!("/{}.ls", common::store_hash(&format!("memory-{i}")));
                let head = format!(
                    "{{\"version\":1,\"client\":{i},\"root\":{{\"type\":\"directory\",\"entries\":{{"
                );
                barrier.wait();
                let answer = put_parts(addr, &key, &[head.as_bytes(), &entries, b"}}}"]);
                (key, head, answer)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let peak = peak_rss_kib(pid);

    let mut accepted = 0;
    let mut busy = 0;
    for (key, head, answer) in &results {
        match answer.status {
            201 | 204 => {
                accepted += 1;
                let got = common::get(&server, key);
                assert_eq!(got.status, 200, "{key} was accepted but cannot be read");
                let expected = [head.as_bytes(), &entries, b"}}}"].concat();
                assert!(
                    got.body == expected,
                    "{key} reads back {} bytes, not the {} uploaded",
                    got.body.len(),
                    expected.len()
                );
            }
            503 => {
                busy += 1;
                let secs = answer
                    .retry_after
                    .as_deref()
                    .and_then(|v| v.parse::<u64>().ok());
                assert!(
                    secs.is_some(),
                    "{key}: 503 without a Retry-After in seconds ({:?}): {}",
                    answer.retry_after,
                    answer.text
                );
            }
            other => panic!("{key}: answered {other}: {}", answer.text.trim()),
        }
    }
    let size_mib = (entries.len() + 100) as f64 / (1 << 20) as f64;
    figures(
        TEST,
        format_args!(
            "{clients} listings of {size_mib:.1} MiB at once: {accepted} accepted, {busy} refused with 503; server VmRSS {} MiB before, VmHWM {} MiB (allowed: {} MiB = before + budget {BUDGET_MIB} MiB + margin {MARGIN_MIB} MiB)",
            baseline / 1024,
            peak / 1024,
            baseline / 1024 + BUDGET_MIB + MARGIN_MIB
        ),
    );
    assert!(
        peak <= baseline + (BUDGET_MIB + MARGIN_MIB) * 1024,
        "the server's peak RSS {peak} KiB is beyond {baseline} KiB + budget + margin"
    );
    assert!(accepted > 0, "nothing was accepted");
}

/// With a budget smaller than a narinfo, the upload is refused before its body is
/// read, declared or not (chunked bodies are counted as they arrive): 503, a
/// Retry-After in seconds, a one-line reason naming the setting. Smaller uploads
/// still pass, the budget is all given back, and /metrics shows it.
#[test]
fn an_upload_beyond_a_tiny_budget_gets_503_with_retry_after() {
    let server = ServerBuilder::new()
        .env("NIX_STORED_MEMORY_BUDGET", "64K")
        .start();
    let addr = server.addr;
    let key = format!("/{}.narinfo", common::store_hash("tiny-budget"));
    let big = vec![b'x'; 100 << 10];

    let declared = common::put(&server, &key, &big);
    let chunked = {
        let mut req =
            common::request_head(addr, "PUT", &key, &[("Transfer-Encoding", "chunked")], None);
        for chunk in big.chunks(8 << 10) {
            req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            req.extend_from_slice(chunk);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        common::raw_request(addr, &req)
    };
    for (how, r) in [("declared", &declared), ("chunked", &chunked)] {
        assert_eq!(r.status, 503, "{how}: {}", r.text());
        let secs = r.header("retry-after").and_then(|v| v.parse::<u64>().ok());
        assert!(
            secs.is_some_and(|s| s > 0),
            "{how}: Retry-After {:?}",
            r.header("retry-after")
        );
        let text = r.text();
        assert_eq!(
            text.trim_end().lines().count(),
            1,
            "{how}: one line: {text:?}"
        );
        assert!(text.contains("NIX_STORED_MEMORY_BUDGET"), "{how}: {text}");
    }
    assert!(!server.store.exists(&key[1..]), "nothing was stored");

    // A narinfo within the budget is read and judged on its content (here: it
    // names no NAR in the cache).
    let small = common::put(&server, &key, b"StorePath: /nix/store/x\n");
    assert_eq!(small.status, 400, "{}", small.text());

    let metrics = common::get(&server, "/metrics").text();
    for line in [
        "nix_stored_memory_budget_bytes 65536",
        "nix_stored_memory_budget_in_use_bytes 0",
        "nix_stored_uploads_rejected_total{reason=\"memory_budget\"} 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in\n{metrics}"
        );
    }
}
