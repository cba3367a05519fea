//! Run records in, medians per scenario and mode, ratios against the first mode, target checks,
//! the human table and the JSON document out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::analysis::median;

/// Figures of one run (one scenario, one mode, one rep).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    /// Scenario label (`flap`, `startup-cold`, ...).
    pub scenario: String,
    /// Mode label (`ebpf`, `netlink`, compare name).
    pub mode: String,
    /// Repetition, from 1.
    pub rep: u32,
    /// Whether the run completed.
    pub ok: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// Remarks (wrong ports, late convergence, listener errors).
    pub notes: Vec<String>,
    /// A witness or the daemon overran its netlink socket: latency figures miss events.
    pub incomplete: bool,
    /// Named figures (see the module doc of `bench` for units).
    pub metrics: BTreeMap<String, f64>,
    /// Per-command counts, daemon stats, ...
    pub details: Value,
}

impl RunRecord {
    /// A completed run.
    pub fn ok(
        scenario: &str,
        mode: &str,
        metrics: BTreeMap<String, f64>,
        notes: Vec<String>,
        incomplete: bool,
        details: Value,
    ) -> Self {
        RunRecord {
            scenario: scenario.into(),
            mode: mode.into(),
            rep: 0,
            ok: true,
            error: None,
            notes,
            incomplete,
            metrics,
            details,
        }
    }

    /// A failed run.
    pub fn failed(scenario: &str, mode: &str, error: String) -> Self {
        RunRecord {
            scenario: scenario.into(),
            mode: mode.into(),
            rep: 0,
            ok: false,
            error: Some(error),
            notes: Vec::new(),
            incomplete: false,
            metrics: BTreeMap::new(),
            details: Value::Null,
        }
    }

    /// One line for the progress log.
    pub fn progress_line(&self) -> String {
        if !self.ok {
            let first = self.error.as_deref().unwrap_or("?").lines().next().unwrap_or("?");
            return format!("{} {} rep {}: FAILED: {first}", self.scenario, self.mode, self.rep);
        }
        let g = |k: &str| self.metrics.get(k).copied().unwrap_or(f64::NAN);
        if self.scenario == "idle" {
            format!(
                "idle {} rep {}: cpu {:.2} ms/min, {:.1} wake-ups/s",
                self.mode,
                self.rep,
                g("idle_cpu_ms_per_min"),
                g("idle_wakeups_per_s")
            )
        } else if self.scenario.starts_with("startup") {
            format!(
                "{} {} rep {}: PortInitDone {:.1} ms, {} STATE_DB writes, cpu {:.1} ms",
                self.scenario,
                self.mode,
                self.rep,
                g("port_init_done_ms"),
                g("state_db_writes"),
                g("cpu_us") / 1e3
            )
        } else {
            format!(
                "{} {} rep {}: {} events, cpu {:.2} us/event, {:.3} cmds/event, {:.4} rtt/event, p99 {:.3} ms, {} wrong{}",
                self.scenario,
                self.mode,
                self.rep,
                g("kernel_events"),
                g("cpu_us_per_event"),
                g("redis_commands_per_event"),
                g("round_trips_per_event"),
                g("latency_p99_us") / 1e3,
                g("ports_wrong"),
                if self.incomplete { " (INCOMPLETE: netlink overrun)" } else { "" }
            )
        }
    }
}

/// Medians of one scenario and mode over its reps.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Group {
    /// Reps that completed.
    pub reps_ok: u32,
    /// Reps that failed.
    pub reps_failed: u32,
    /// Reps with incomplete latency figures.
    pub reps_incomplete: u32,
    /// Distinct failure reasons (first line).
    pub errors: Vec<String>,
    /// Median of each metric over the completed reps.
    pub medians: BTreeMap<String, f64>,
}

/// scenario -> mode -> group, in first-seen order.
#[derive(Debug, Default)]
pub struct Summary {
    /// (scenario, groups by mode) in the order runs happened.
    pub scenarios: Vec<(String, Vec<(String, Group)>)>,
}

/// Groups runs and takes medians.
pub fn summarize(runs: &[RunRecord]) -> Summary {
    let mut s = Summary::default();
    let mut values: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in runs {
        let si = match s.scenarios.iter().position(|(n, _)| *n == r.scenario) {
            Some(i) => i,
            None => {
                s.scenarios.push((r.scenario.clone(), Vec::new()));
                s.scenarios.len() - 1
            }
        };
        let modes = &mut s.scenarios[si].1;
        let mi = match modes.iter().position(|(n, _)| *n == r.mode) {
            Some(i) => i,
            None => {
                modes.push((r.mode.clone(), Group::default()));
                modes.len() - 1
            }
        };
        let g = &mut modes[mi].1;
        if r.ok {
            g.reps_ok += 1;
            g.reps_incomplete += u32::from(r.incomplete);
            let v = values.entry((r.scenario.clone(), r.mode.clone())).or_default();
            for (k, x) in &r.metrics {
                v.entry(k.clone()).or_default().push(*x);
            }
        } else {
            g.reps_failed += 1;
            let e = r.error.as_deref().unwrap_or("?").lines().next().unwrap_or("?").to_owned();
            if !g.errors.contains(&e) {
                g.errors.push(e);
            }
        }
    }
    for (sc, modes) in &mut s.scenarios {
        for (mode, g) in modes {
            if let Some(v) = values.get(&(sc.clone(), mode.clone())) {
                g.medians = v.iter().filter_map(|(k, xs)| Some((k.clone(), median(xs)?))).collect();
            }
        }
    }
    s
}

/// Metrics compared across modes: (key, label).
const STORM_RATIOS: [(&str, &str); 4] = [
    ("cpu_us_per_event", "cpu/event"),
    ("redis_commands_per_event", "cmds/event"),
    ("round_trips_per_event", "rtt/event"),
    ("latency_p99_us", "p99"),
];
const STARTUP_RATIOS: [(&str, &str); 3] =
    [("port_init_done_ms", "PortInitDone"), ("cpu_us", "cpu"), ("state_db_writes", "STATE_DB writes")];

const IDLE_RATIOS: [(&str, &str); 2] = [("idle_cpu_ms_per_min", "cpu/min"), ("idle_wakeups_per_s", "wake-ups/s")];

fn ratio_keys(scenario: &str) -> &'static [(&'static str, &'static str)] {
    if scenario == "idle" {
        &IDLE_RATIOS
    } else if scenario.starts_with("startup") {
        &STARTUP_RATIOS
    } else {
        &STORM_RATIOS
    }
}

/// For each scenario, `<mode>/<base>` ratios of the compared metrics, base = the first mode
/// with a completed rep (ebpf unless it failed).
pub fn ratios(s: &Summary) -> BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out = BTreeMap::new();
    for (sc, modes) in &s.scenarios {
        let Some((base, bg)) = modes.iter().find(|(_, g)| g.reps_ok > 0) else { continue };
        let mut per = BTreeMap::new();
        for (mode, g) in modes {
            if mode == base || g.reps_ok == 0 {
                continue;
            }
            let mut r = BTreeMap::new();
            for (k, _) in ratio_keys(sc) {
                if let (Some(a), Some(b)) = (g.medians.get(*k), bg.medians.get(*k)) {
                    if *b > 0.0 {
                        r.insert((*k).to_owned(), a / b);
                    }
                }
            }
            per.insert(format!("{mode}/{base}"), r);
        }
        if !per.is_empty() {
            out.insert(sc.clone(), per);
        }
    }
    out
}

/// The targets (reported, not asserted): (scenario prefix, metric, limit, text).
const TARGETS: [(&str, &str, f64, &str); 6] = [
    ("", "cpu_us_per_event", 5.0, "< 5 us CPU per event"),
    ("", "redis_commands_per_event", 1.0, "<= 1 Redis command per event"),
    ("", "round_trips_per_event", 1.0, "< 1 Redis round trip per event"),
    ("", "latency_p99_us", 2000.0, "p99 event-to-STATE_DB < 2 ms"),
    ("", "ports_wrong", 0.0, "0 ports wrong"),
    ("startup-cold", "port_init_done_ms", 150.0, "cold start to PortInitDone < 150 ms"),
];

/// Target verdicts per scenario and mode.
pub fn targets(s: &Summary) -> Vec<Value> {
    let mut out = Vec::new();
    for (sc, modes) in &s.scenarios {
        for (mode, g) in modes {
            for (prefix, key, limit, text) in TARGETS {
                let storm = !sc.starts_with("startup") && sc != "idle";
                let applies = if prefix.is_empty() { storm } else { sc == prefix };
                if !applies {
                    continue;
                }
                if let Some(v) = g.medians.get(key) {
                    let met = if key == "ports_wrong" || key == "redis_commands_per_event" {
                        *v <= limit
                    } else {
                        *v < limit
                    };
                    out.push(
                        json!({"scenario": sc, "mode": mode, "target": text, "metric": key, "value": v, "met": met}),
                    );
                }
            }
        }
    }
    out
}

fn fmt(v: Option<&f64>, scale: f64, prec: usize) -> String {
    match v {
        Some(x) => format!("{:.*}", prec, x / scale),
        None => "-".into(),
    }
}

/// The human tables.
pub fn table(s: &Summary, header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{header}");
    for (sc, modes) in &s.scenarios {
        let startup = sc.starts_with("startup");
        let idle = sc == "idle";
        let _ = writeln!(out, "\n== {sc} (medians) ==");
        if idle {
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>12} {:>12} {:>15} {:>8}",
                "mode", "reps", "cpu ms/min", "wake-ups/s", "preemptions/s", "secs"
            );
        } else if startup {
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>14} {:>12} {:>9} {:>11} {:>9} {:>14} {:>6}",
                "mode",
                "reps",
                "PortInitDone",
                "old down ms",
                "old down",
                "STATE_DB wr",
                "cpu ms",
                "children cpu ms",
                "wrong"
            );
        } else {
            let _ = writeln!(
                out,
                "{:<12} {:>5} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>8} {:>7} {:>8} {:>8}",
                "mode",
                "reps",
                "events",
                "cpu ms",
                "us/event",
                "cmds/ev",
                "rtt/ev",
                "reads/ev",
                "p50 ms",
                "p99 ms",
                "max ms",
                "unwrit",
                "undone",
                "lag ms",
                "wrong",
                "storm ms",
                "wake/ev",
                "runq ms",
                "redis rq"
            );
        }
        for (mode, g) in modes {
            let m = &g.medians;
            let reps = format!("{}/{}", g.reps_ok, g.reps_ok + g.reps_failed);
            if g.reps_ok == 0 {
                let _ = writeln!(out, "{mode:<12} {reps:>5}  FAILED: {}", g.errors.join(" | "));
                continue;
            }
            if idle {
                let _ = writeln!(
                    out,
                    "{:<12} {:>5} {:>12} {:>12} {:>15} {:>8}",
                    mode,
                    reps,
                    fmt(m.get("idle_cpu_ms_per_min"), 1.0, 2),
                    fmt(m.get("idle_wakeups_per_s"), 1.0, 1),
                    fmt(m.get("idle_preemptions_per_s"), 1.0, 1),
                    fmt(m.get("idle_secs"), 1.0, 1),
                );
            } else if startup {
                let _ = writeln!(
                    out,
                    "{:<12} {:>5} {:>14} {:>12} {:>9} {:>11} {:>9} {:>14} {:>6}",
                    mode,
                    reps,
                    fmt(m.get("port_init_done_ms"), 1.0, 1),
                    fmt(m.get("old_down_ms"), 1.0, 1),
                    fmt(m.get("old_down_ports"), 1.0, 0),
                    fmt(m.get("state_db_writes"), 1.0, 0),
                    fmt(m.get("cpu_us"), 1e3, 1),
                    fmt(m.get("children_cpu_us"), 1e3, 1),
                    fmt(m.get("ports_wrong"), 1.0, 0),
                );
            } else {
                let _ = writeln!(
                    out,
                    "{:<12} {:>5} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>8} {:>7} {:>8} {:>8}{}",
                    mode,
                    reps,
                    fmt(m.get("kernel_events"), 1.0, 0),
                    fmt(m.get("cpu_us"), 1e3, 2),
                    fmt(m.get("cpu_us_per_event"), 1.0, 2),
                    fmt(m.get("redis_commands_per_event"), 1.0, 3),
                    fmt(m.get("round_trips_per_event"), 1.0, 4),
                    fmt(m.get("redis_reads_per_event"), 1.0, 4),
                    fmt(m.get("latency_p50_us"), 1e3, 3),
                    fmt(m.get("latency_p99_us"), 1e3, 3),
                    fmt(m.get("latency_max_us"), 1e3, 3),
                    fmt(m.get("unwritten_events"), 1.0, 0),
                    fmt(m.get("undone_events"), 1.0, 0),
                    fmt(m.get("lag_us"), 1e3, 3),
                    fmt(m.get("ports_wrong"), 1.0, 0),
                    fmt(m.get("storm_ms"), 1.0, 0),
                    fmt(m.get("wakeups_per_event"), 1.0, 3),
                    fmt(m.get("runq_wait_us"), 1e3, 2),
                    fmt(m.get("redis_runq_wait_us"), 1e3, 2),
                    if g.reps_incomplete > 0 { "  (latency incomplete: netlink overrun)" } else { "" },
                );
            }
            if g.reps_failed > 0 {
                let _ = writeln!(out, "{:<12} {} rep(s) failed: {}", "", g.reps_failed, g.errors.join(" | "));
            }
        }
        let rss: Vec<String> = modes
            .iter()
            .filter_map(|(mode, g)| {
                let per_port = g.medians.get("rss_bytes_per_port")?;
                let total = g.medians.get("rss_bytes")?;
                Some(format!("{mode} {:.1} MiB ({per_port:.0} B/port)", total / 1048576.0))
            })
            .collect();
        if !rss.is_empty() {
            let _ = writeln!(out, "resident memory after the storm: {}", rss.join(", "));
        }
        if let Some(per) = ratios(s).get(sc) {
            for (pair, r) in per {
                let parts: Vec<String> = ratio_keys(sc)
                    .iter()
                    .filter_map(|(k, label)| r.get(*k).map(|x| format!("{label} {x:.2}x")))
                    .collect();
                let _ = writeln!(out, "ratio {pair}: {}", parts.join(", "));
            }
        }
    }
    let verdicts = targets(s);
    if !verdicts.is_empty() {
        let _ = writeln!(out, "\n== targets (reported, not asserted) ==");
        for v in verdicts {
            let _ = writeln!(
                out,
                "{:<4} {:<13} {:<10} {:<38} {}",
                if v["met"].as_bool() == Some(true) { "ok" } else { "MISS" },
                v["scenario"].as_str().unwrap_or(""),
                v["mode"].as_str().unwrap_or(""),
                v["target"].as_str().unwrap_or(""),
                v["value"].as_f64().map(|x| format!("{x:.3}")).unwrap_or_default()
            );
        }
    }
    out
}

/// The JSON document.
pub fn json_doc(config: Value, host: Value, runs: &[RunRecord], s: &Summary) -> Value {
    let summary: serde_json::Map<String, Value> = s
        .scenarios
        .iter()
        .map(|(sc, modes)| {
            let m: serde_json::Map<String, Value> =
                modes.iter().map(|(mode, g)| (mode.clone(), serde_json::to_value(g).unwrap_or(Value::Null))).collect();
            (sc.clone(), Value::Object(m))
        })
        .collect();
    json!({
        "config": config,
        "host": host,
        "summary": summary,
        "ratios": ratios(s),
        "targets": targets(s),
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, mode: &str, cpu: f64, p99: f64) -> RunRecord {
        let m = BTreeMap::from([("cpu_us_per_event".to_owned(), cpu), ("latency_p99_us".to_owned(), p99)]);
        RunRecord::ok(scenario, mode, m, Vec::new(), false, Value::Null)
    }

    #[test]
    fn medians_and_ratios_against_the_first_mode() {
        let runs = vec![
            run("flap", "ebpf", 2.0, 100.0),
            run("flap", "netlink", 4.0, 300.0),
            run("flap", "ebpf", 4.0, 200.0),
            run("flap", "netlink", 6.0, 500.0),
            run("flap", "ebpf", 3.0, 900.0),
            RunRecord::failed("flap", "netlink", "boom\nmore".into()),
        ];
        let s = summarize(&runs);
        let (_, modes) = &s.scenarios[0];
        assert_eq!(modes[0].0, "ebpf");
        assert_eq!(modes[0].1.medians["cpu_us_per_event"], 3.0);
        assert_eq!(modes[1].1.medians["cpu_us_per_event"], 5.0);
        assert_eq!(modes[1].1.reps_failed, 1);
        assert_eq!(modes[1].1.errors, vec!["boom".to_owned()]);
        let r = ratios(&s);
        assert_eq!(r["flap"]["netlink/ebpf"]["cpu_us_per_event"], 5.0 / 3.0);
        assert_eq!(r["flap"]["netlink/ebpf"]["latency_p99_us"], 400.0 / 200.0);
        let t = table(&s, "test");
        assert!(t.contains("ratio netlink/ebpf: cpu/event 1.67x"), "{t}");
    }

    #[test]
    fn ratios_fall_back_to_the_first_mode_that_ran() {
        let runs = vec![
            RunRecord::failed("flap", "ebpf", "no eBPF".into()),
            run("flap", "netlink", 4.0, 1.0),
            run("flap", "cpp", 40.0, 2.0),
        ];
        let r = ratios(&summarize(&runs));
        assert_eq!(r["flap"]["cpp/netlink"]["cpu_us_per_event"], 10.0);
        assert!(!r["flap"].contains_key("netlink/ebpf"));
    }
}
