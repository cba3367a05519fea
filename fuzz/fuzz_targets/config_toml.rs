//! The `--config` TOML file -> `Config::from_args_and_file_text` (TOML parsing, merge with no
//! flag given, every validation). Checks: no panic (errors are formatted as `main` reports
//! them); an accepted configuration is within the documented bounds.
#![no_main]

use std::error::Error;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use portsyncd::config::{Args, Config};

/// The command line: just `--config`, parsed once (clap is not what is fuzzed here).
fn args() -> &'static Args {
    static ARGS: OnceLock<Args> = OnceLock::new();
    ARGS.get_or_init(|| Args::parse_from(["portsyncd", "--config", "portsyncd.toml"]))
}

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: anything but UTF-8 fails before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_args_and_file_text(args().clone(), text) {
        Ok(c) => {
            assert!((Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.eoiu_timeout));
            assert!((1024..=1 << 30).contains(&c.rcvbuf));
            assert!((1..=1 << 20).contains(&c.batch_max));
            assert!(c.batch_linger <= Duration::from_millis(100));
            assert!(c.ring_bytes.is_power_of_two() && c.ring_bytes >= 4096);
            assert!(c.state_backups <= 1000);
            assert!(c.state_max_age >= Duration::from_secs(86_400));
            assert!(c.state_max_age <= Duration::from_secs(3650 * 86_400));
            assert!(c.state_save_interval >= Duration::from_secs(1));
            assert!(c.histogram_interval >= Duration::from_secs(1));
            assert!(c.metrics_addr.is_none_or(|a| a.ip().is_loopback()));
            assert!(c.state_file.file_name().is_some());
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.source().map(ToString::to_string);
        }
    }
});
