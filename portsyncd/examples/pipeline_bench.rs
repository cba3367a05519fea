//! Kernel-free benchmark of the userspace pipeline: synthetic `PortEvent`s -> batch ->
//! reconcile -> Redis pipeline against a real redis-server. Reports events/s and CPU ns per
//! event at several batch sizes, measured side by side in one run.
//!
//! Run through `cargo xtask bench pipeline` (which starts its own loopback redis-server), or
//! directly: `cargo run --release -p portsyncd --example pipeline_bench -- --redis unix:///path`.

use std::collections::HashSet;
use std::time::Instant;

use clap::Parser;
use portsyncd::metrics::latency::LatencyRecorder;
use portsyncd::metrics::Counters;
use portsyncd::pipeline::retry::Backoff;
use portsyncd::pipeline::Pipeline;
use portsyncd::reconcile::Reconciler;
use portsyncd::sonic_db::SonicDbs;
use portsyncd::writer::Writer;
use portsyncd_common::{origin, PortEvent, IFF_RUNNING, IFF_UP, RTM_NEWLINK};

#[derive(Debug, Parser)]
struct Args {
    /// Redis URL (all DBs on one server).
    #[arg(long)]
    redis: String,
    /// Distinct ports.
    #[arg(long, default_value_t = 1024)]
    ports: u32,
    /// Events per batch size.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Batch sizes to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    batches: Vec<usize>,
    /// Rows to run: `pipeline` (every event a row write, per batch size), `floor` (redis-server
    /// alone, largest batch), `unchanged` (the userspace path alone, largest batch).
    #[arg(long, value_delimiter = ',', default_value = "pipeline,floor,unchanged")]
    rows: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    /// `pipeline`, or `redis-floor`: the same rows written with pre-built commands, i.e.
    /// redis-server and the transport alone.
    kind: &'static str,
    batch: usize,
    events: u64,
    wall_s: f64,
    events_per_s: f64,
    cpu_ns_per_event: f64,
    redis_commands_per_event: f64,
    round_trips_per_event: f64,
    p50_us: f64,
    p99_us: f64,
}

fn cpu_ns() -> u64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|r| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as u64 * 1_000_000_000 + tv.tv_usec() as u64 * 1000;
        t(r.user_time()) + t(r.system_time())
    });
    u.unwrap_or(0)
}

fn event(port: u32, round: u64) -> PortEvent {
    let mut e = PortEvent::zeroed();
    e.msg_type = RTM_NEWLINK;
    e.origin = origin::NETLINK;
    e.ifindex = port + 10;
    e.flags = if round.is_multiple_of(2) { IFF_UP | IFF_RUNNING } else { IFF_UP };
    e.mtu = 9100;
    e.timestamp_ns = portsyncd::clock::monotonic_ns();
    e.set_name(format!("Ethernet{}", port * 4).as_bytes());
    e
}

async fn seed(dbs: &SonicDbs, ports: u32) -> anyhow::Result<()> {
    let client = redis::Client::open(dbs.appl.info.clone())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut pipe = redis::pipe();
    for p in 0..ports {
        pipe.hset(format!("PORT_TABLE:Ethernet{}", p * 4), "lanes", p.to_string()).ignore();
    }
    pipe.query_async::<()>(&mut c).await?;
    Ok(())
}

/// `changing`: every event of a port flips its oper state (each is a row write); otherwise
/// every event repeats the state already written (after the first of each port), which the
/// pipeline settles without Redis: the userspace path alone.
async fn one(args: &Args, dbs: &SonicDbs, batch: usize, changing: bool) -> anyhow::Result<Row> {
    let mut writer = Writer::new(dbs, std::time::Duration::from_secs(5));
    writer.connect().await?;
    let backoff = Backoff { min: std::time::Duration::from_millis(100), max: std::time::Duration::from_secs(30) };
    let mut pipeline = Pipeline::new(Reconciler::new(Default::default()), backoff);
    let mut lat = LatencyRecorder::new()?;
    let mut cost = Counters::default();
    let old = HashSet::new();
    // Pre-generate so event construction is not measured.
    let round = |i: u64| if changing { i / u64::from(args.ports) } else { 0 };
    let events: Vec<PortEvent> =
        (0..args.events).map(|i| event((i % u64::from(args.ports)) as u32, round(i))).collect();
    let cpu0 = cpu_ns();
    let t0 = Instant::now();
    for chunk in events.chunks(batch) {
        let start = portsyncd::clock::monotonic_ns();
        for e in chunk {
            let mut e = *e;
            e.timestamp_ns = start;
            pipeline.coalescer.push(&e, &old);
        }
        pipeline.flush(&mut writer, false, Instant::now(), &mut cost, &mut lat).await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns() - cpu0;
    let s = lat.summary();
    let ev = args.events as f64;
    Ok(Row {
        kind: if changing { "pipeline" } else { "unchanged" },
        batch,
        events: args.events,
        wall_s: wall,
        events_per_s: ev / wall,
        cpu_ns_per_event: cpu as f64 / ev,
        redis_commands_per_event: cost.redis_commands as f64 / ev,
        round_trips_per_event: cost.redis_round_trips as f64 / ev,
        p50_us: s.latency_us.p50,
        p99_us: s.latency_us.p99,
    })
}

/// The floor under any pipeline that writes one STATE_DB row per changed port: the same
/// `HSET PORT_TABLE|<p>` with the four fields, built before the clock starts and sent
/// `batch` at a time over one connection. What remains is redis-server's work and the socket.
async fn redis_floor(args: &Args, dbs: &SonicDbs, batch: usize) -> anyhow::Result<Row> {
    let client = redis::Client::open(dbs.state.info.clone())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pipes: Vec<redis::Pipeline> = (0..args.events)
        .collect::<Vec<u64>>()
        .chunks(batch)
        .map(|chunk| {
            let mut pipe = redis::pipe();
            for i in chunk {
                let port = (i % u64::from(args.ports)) * 4;
                let oper = if (i / u64::from(args.ports)).is_multiple_of(2) { "up" } else { "down" };
                pipe.cmd("HSET")
                    .arg(format!("PORT_TABLE|Ethernet{port}"))
                    .arg(&["state", "ok", "netdev_oper_status", oper, "admin_status", "up", "mtu", "9100"][..])
                    .ignore();
            }
            pipe
        })
        .collect();
    let cpu0 = cpu_ns();
    let t0 = Instant::now();
    for pipe in &pipes {
        pipe.query_async::<()>(&mut conn).await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_ns() - cpu0;
    let ev = args.events as f64;
    Ok(Row {
        kind: "redis-floor",
        batch,
        events: args.events,
        wall_s: wall,
        events_per_s: ev / wall,
        cpu_ns_per_event: cpu as f64 / ev,
        redis_commands_per_event: 1.0,
        round_trips_per_event: pipes.len() as f64 / ev,
        p50_us: 0.0,
        p99_us: 0.0,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dbs = SonicDbs::from_url(&args.redis)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rows = rt.block_on(async {
        seed(&dbs, args.ports).await?;
        let mut rows = Vec::new();
        let wants = |k: &str| args.rows.iter().any(|r| r == k);
        if wants("pipeline") {
            for &b in &args.batches {
                rows.push(one(&args, &dbs, b.max(1), true).await?);
            }
        }
        // Redis alone, at the largest batch: how close the pipeline is to the server's own rate.
        if let Some(&b) = args.batches.iter().max() {
            if wants("floor") {
                rows.push(redis_floor(&args, &dbs, b.max(1)).await?);
            }
            if wants("unchanged") {
                rows.push(one(&args, &dbs, b.max(1), false).await?);
            }
        }
        anyhow::Ok(rows)
    })?;
    println!(
        "userspace pipeline (synthetic events -> batch -> reconcile -> Redis), {} ports, {} events per row",
        args.ports, args.events
    );
    println!(
        "{:<12} {:>6} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
        "kind", "batch", "events/s", "cpu ns/event", "cmds/event", "rtt/event", "p50 us", "p99 us"
    );
    for r in &rows {
        println!(
            "{:<12} {:>6} {:>12.0} {:>14.0} {:>12.3} {:>14.5} {:>10.1} {:>10.1}",
            r.kind,
            r.batch,
            r.events_per_s,
            r.cpu_ns_per_event,
            r.redis_commands_per_event,
            r.round_trips_per_event,
            r.p50_us,
            r.p99_us
        );
    }
    let pipeline_rows: Vec<&Row> = rows.iter().filter(|r| r.kind == "pipeline").collect();
    if let (Some(best), Some(floor)) = (pipeline_rows.last(), rows.iter().find(|r| r.kind == "redis-floor")) {
        println!(
            "pipeline at batch {} reaches {:.0}% of redis-server's own rate for the same rows ({:.0} events/s)",
            best.batch,
            100.0 * best.events_per_s / floor.events_per_s,
            floor.events_per_s
        );
    }
    if let (Some(first), Some(last)) = (pipeline_rows.first(), pipeline_rows.last()) {
        println!(
            "ratio cpu/event batch {} vs batch {}: {:.1}x",
            first.batch,
            last.batch,
            first.cpu_ns_per_event / last.cpu_ns_per_event
        );
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
