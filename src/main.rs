use clap::Parser;
use nix_stored::config::{Args, Command, Config};
use nix_stored::logging;

fn main() {
    fixed_mmap_threshold();
    let args = match Args::try_parse() {
        Ok(a) => a,
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => fail(&nix_stored::config::parse_error_line(&e)),
    };
    if args.print_openapi {
        println!("{}", nix_stored::http::openapi::document());
        return;
    }
    let command = args.command.clone();
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    logging::init(config.log_level.tracing(), config.log_format);
    tracing::info!(
        "nix-stored {} starting: {}",
        env!("CARGO_PKG_VERSION"),
        config.summary()
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
    runtime.spawn(logging::flush_periodically());
    if let Some(Command::Gc { dry_run }) = command {
        if !dry_run {
            fail("nix-stored gc only reports (--dry-run): passes that remove run in the server, which coordinates them with uploads");
        }
        let result = runtime.block_on(nix_stored::gc_dry_run(config));
        logging::flush();
        match result {
            Ok(report) => print!("{report}"),
            Err(e) => fail(&e.to_string()),
        }
        return;
    }
    let result = runtime.block_on(nix_stored::run(config));
    logging::flush();
    if let Err(e) = result {
        fail(&e.to_string());
    }
}

fn fail(msg: &str) -> ! {
    logging::flush();
    eprintln!("nix-stored: error: {msg}");
    std::process::exit(1);
}

/// Upload buffers (S3 parts of 8 MiB and more) are allocated and freed all the time.
/// glibc raises its mmap threshold to the size of each large block freed, after which
/// such blocks come from per-thread heaps and stay resident: four concurrent 64 MiB
/// uploads to S3 peaked at 115 MiB RSS and kept 55 MiB; with the threshold fixed at
/// 1 MiB, 81 MiB and 13 MiB. Setting it turns off the adjustment of the trim threshold
/// too, which would then stay at 128 KiB: every 256 KiB read buffer freed would give its
/// pages back and fault them in again (5 million minor faults and half the NAR GET
/// throughput in 24 s of 1 MiB downloads), so that one is set as well.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
    }
}
