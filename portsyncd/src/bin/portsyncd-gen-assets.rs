//! `portsyncd-gen-assets <dir>`: writes the daemon's man page (`portsyncd.8`) and its bash, zsh
//! and fish completions (`portsyncd.bash`, `_portsyncd`, `portsyncd.fish`) into `<dir>`.
//!
//! `cargo xtask package` runs it and packs the files into the .deb. They are generated from
//! [`portsyncd::config::Args`], the parser the daemon itself uses, so a new or renamed flag
//! reaches the man page and the completions with no second list to keep in step. The binary is
//! a build tool and is not shipped.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args_os().nth(1).context("usage: portsyncd-gen-assets <output-dir>")?.into();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_man_page(&dir)?;
    let mut cmd = portsyncd::config::Args::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "portsyncd", &dir)
            .with_context(|| format!("writing the {shell} completion into {}", dir.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// clap_mangen's sections for the flags, plus what an operator looks up in a daemon's page and
/// clap does not know: exit codes, signals, files.
fn write_man_page(dir: &Path) -> anyhow::Result<()> {
    // The daemon's --help stays short; the page says what the daemon is for.
    let cmd = portsyncd::config::Args::command().long_about(DESCRIPTION);
    // .TH takes its fields by position: an empty date would shift source and manual left.
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .date(build_date())
        .source(format!("portsyncd {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration");
    let mut rendered = Vec::new();
    man.render(&mut rendered)?;
    let rendered = String::from_utf8(rendered).context("clap_mangen wrote a page that is not UTF-8")?;
    // Ours go after the options, before the closing VERSION section, as in most daemons' pages.
    let at = rendered.find("\n.SH VERSION").map_or(rendered.len(), |i| i + 1);
    let page = format!("{}{}{}", &rendered[..at], operator_sections().to_roff(), &rendered[at..]);
    let path = dir.join("portsyncd.8");
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

const DESCRIPTION: &str = "portsyncd mirrors the kernel's view of a SONiC switch's ports into Redis. \
    STATE_DB PORT_TABLE|<port> (state, netdev_oper_status, admin_status, mtu) follows the kernel's \
    link notifications; at start-up the CONFIG_DB port configuration is published to APPL_DB and \
    PortConfigDone and PortInitDone are signalled to orchagent, as the C++ portsyncd of sonic-swss \
    does. Link events come from an eBPF socket filter on the daemon's own rtnetlink socket, or from \
    plain netlink where eBPF cannot load (--capture).";

/// The page's date, YYYY-MM-DD: `SOURCE_DATE_EPOCH` when set (reproducible builds), else today
/// (UTC).
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    });
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn operator_sections() -> Roff {
    let mut r = Roff::default();
    r.control("SH", ["CONFIGURATION"]);
    r.text([roman(
        "Each setting comes from its flag, else its environment variable, else the TOML file named by \
         --config (keys are the long flag names with underscores; an unknown key is an error), else its \
         default. --check-config prints the effective settings and exits.",
    )]);

    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "stopped by SIGTERM or SIGINT, or --check-config found the settings valid."),
        (
            "1",
            "a fatal error, reported in one line starting with \"portsyncd: error:\": an invalid setting \
             (naming its key), a missing or invalid database_config.json, Redis unreachable at start.",
        ),
        ("2", "an unknown flag or a malformed value on the command line."),
    ] {
        r.control("TP", []).text([bold(code)]).text([roman(meaning)]);
    }

    r.control("SH", ["SIGNALS"]);
    for (signal, meaning) in [
        ("SIGTERM, SIGINT", "write the batch in flight, save the state file, exit 0."),
        ("SIGHUP", "re-read CONFIG_DB LOGGER|portsyncd (LOGLEVEL, LOGOUTPUT)."),
        ("SIGUSR1", "log the latency percentile table (and append it to the histogram log)."),
    ] {
        r.control("TP", []).text([bold(signal)]).text([roman(meaning)]);
    }

    r.control("SH", ["FILES"]);
    for (file, meaning) in [
        ("/etc/portsyncd/portsyncd.toml", "the packaged configuration file."),
        ("/var/run/redis/sonic-db/database_config.json", "SONiC's database layout (default)."),
        ("/var/lib/sonic/portsyncd/port_state.json", "the warm-restart port-state file (default)."),
        ("/usr/share/portsyncd/supervisord/portsyncd.conf", "the program section for SONiC's swss container."),
    ] {
        r.control("TP", []).text([bold(file)]).text([roman(meaning)]);
    }

    r.control("SH", ["LOGGING"]);
    r.text([roman(
        "Lines go to syslog with ident portsyncd at the level of CONFIG_DB LOGGER|portsyncd, changed at run \
         time with swssloglevel -l LEVEL -c portsyncd. Counters are in COUNTERS_DB PORTSYNCD_STATS:*.",
    )]);

    r.control("SH", ["SEE ALSO"]);
    r.text([roman("swssloglevel(1), supervisord(1), systemd.service(5)")]);
    r
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
    }
}
