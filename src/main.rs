use clap::Parser;
use nix_stored::config::{Args, Config, LogLevel};

fn main() {
    let config = match Config::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string()),
    };
    let level = match config.log_level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warning => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
    if let Err(e) = runtime.block_on(nix_stored::run(config)) {
        fail(&e.to_string());
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("nix-stored: error: {msg}");
    std::process::exit(1);
}
