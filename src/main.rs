use clap::Parser;
use nix_stored::config::{Args, Config, LogLevel};
use nix_stored::logging;

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        // --help and --version print and exit 0 as clap does.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            fail(line.strip_prefix("error: ").unwrap_or(line))
        }
    };
    if args.print_openapi {
        println!("{}", nix_stored::http::openapi::document());
        return;
    }
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    let level = match config.log_level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warning => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    logging::init(level, config.log_format);
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
