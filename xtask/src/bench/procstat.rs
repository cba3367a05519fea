//! CPU time of the daemon under test: a set of pids in, nanoseconds on CPU out, both from each
//! process's CPU-time clock (ns resolution, threads that exited included) and from `stat`
//! utime+stime (clock ticks); and its threads' context switches and run-queue wait.

use std::fs;

use anyhow::Context;

/// CPU consumed so far by a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSample {
    /// Sum over the processes of their CPU-time clock (`clock_getcpuclockid`): every thread's
    /// time on CPU, those that already exited included. (Summing `/proc/<pid>/task/*/schedstat`
    /// instead lost the time of short-lived threads such as the daemon's dump and eBPF-loader
    /// threads, or of any thread that ended between two samples.)
    pub sched_ns: u64,
    /// Sum of `/proc/<pid>/stat` utime+stime, converted from clock ticks.
    pub ticks_ns: u64,
    /// Sum of `/proc/<pid>/stat` cutime+cstime: children that exited and were waited for (the
    /// C++ daemon's `ip link set ... down` per old interface at a cold start: the kernel's work
    /// of setting a link down is charged to whoever asked, and that is the child there).
    pub children_ns: u64,
}

impl CpuSample {
    /// `self - earlier`, saturating (a process that exited takes its time with it).
    pub fn since(self, earlier: CpuSample) -> CpuSample {
        CpuSample {
            sched_ns: self.sched_ns.saturating_sub(earlier.sched_ns),
            ticks_ns: self.ticks_ns.saturating_sub(earlier.ticks_ns),
            children_ns: self.children_ns.saturating_sub(earlier.children_ns),
        }
    }
}

fn ns_per_tick() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|&t| t > 0).unwrap_or(100);
    1_000_000_000 / hz as u64
}

/// `/proc/<pid>/stat` fields after the command name (field 3 onwards), or `None` if gone.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Resident memory of the processes `pids` (`VmRSS`), in bytes; gone processes count 0.
pub fn rss_of(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
            kb.parse::<u64>().ok().map(|kb| kb * 1024)
        })
        .sum()
}

/// Scheduling counts of a thread, or their sum over threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sched {
    /// Sleeps: each one is later a wake-up.
    pub voluntary: u64,
    /// Preemptions.
    pub involuntary: u64,
    /// Time spent runnable but waiting for a CPU (`schedstat`'s second field): how long the
    /// scheduler kept a woken thread from running, whatever the thread itself does.
    pub runq_wait_ns: u64,
}

/// Scheduling counts of each thread of a set of processes, by tid.
#[derive(Debug, Clone, Default)]
pub struct SchedSample(std::collections::BTreeMap<u64, Sched>);

impl SchedSample {
    /// The counts since `earlier`, summed over the threads alive now: a thread that exited in
    /// between takes its counts with it (no process-wide total includes them), so it is left
    /// out rather than subtracted.
    pub fn since(&self, earlier: &SchedSample) -> Sched {
        self.0.iter().fold(Sched::default(), |sum, (tid, now)| {
            let old = earlier.0.get(tid).copied().unwrap_or_default();
            Sched {
                voluntary: sum.voluntary + now.voluntary.saturating_sub(old.voluntary),
                involuntary: sum.involuntary + now.involuntary.saturating_sub(old.involuntary),
                runq_wait_ns: sum.runq_wait_ns + now.runq_wait_ns.saturating_sub(old.runq_wait_ns),
            }
        })
    }
}

/// Scheduling counts of every thread of the processes `pids` so far.
pub fn sched_of(pids: &[i32]) -> SchedSample {
    let mut s = SchedSample::default();
    for &pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
            let Ok(text) = fs::read_to_string(t.path().join("status")) else { continue };
            let field = |name: &str| {
                text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
            };
            let runq_wait_ns = fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|st| st.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0);
            s.0.insert(
                tid,
                Sched {
                    voluntary: field("voluntary_ctxt_switches:"),
                    involuntary: field("nonvoluntary_ctxt_switches:"),
                    runq_wait_ns,
                },
            );
        }
    }
    s
}

/// CPU of the processes `pids` (all their threads).
pub fn cpu_of(pids: &[i32]) -> anyhow::Result<CpuSample> {
    let tick = ns_per_tick();
    let mut sample = CpuSample::default();
    for &pid in pids {
        let Some(f) = stat_fields(pid) else { continue };
        // Fields 14 (utime) and 15 (stime), counted from 1; `f[0]` is field 3.
        let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum();
        sample.ticks_ns += ticks * tick;
        // Fields 16 (cutime) and 17 (cstime).
        let children: u64 = [13, 14].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum();
        sample.children_ns += children * tick;
        let clock = nix::time::clock_getcpuclockid(nix::unistd::Pid::from_raw(pid))
            .with_context(|| format!("CPU clock of pid {pid}"))?;
        // A process that exited since `stat` was read counts what `stat` said.
        match nix::time::clock_gettime(clock) {
            Ok(t) => sample.sched_ns += t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
            Err(_) => sample.sched_ns += ticks * tick,
        }
    }
    Ok(sample)
}

/// Every process whose process group is `pgid` (an external daemon started in its own group,
/// with whatever `sh -c` forked).
pub fn pids_in_group(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(2)?.parse::<i32>().ok()) == Some(pgid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work() {
        let me = std::process::id() as i32;
        let before = cpu_of(&[me]).unwrap();
        // Spin for 60 ms of this thread's own CPU time, however busy the machine is.
        let thread_ns = || {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
        };
        let t0 = thread_ns();
        let mut x = 0u64;
        while thread_ns() - t0 < 60_000_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let d = cpu_of(&[me]).unwrap().since(before);
        // A running thread's schedstat lags by at most a scheduler tick.
        assert!(d.sched_ns >= 45_000_000, "60 ms of spinning shows as {} ns", d.sched_ns);
        assert!(d.ticks_ns <= 1_000_000_000, "{d:?}");
    }

    #[test]
    fn children_that_exited_and_were_waited_for_count_apart() {
        let me = std::process::id() as i32;
        let before = cpu_of(&[me]).unwrap();
        // A child that spins for a while (a shell loop of 300k steps, 0.1-0.5 s of CPU).
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let d = cpu_of(&[me]).unwrap().since(before);
        assert!(d.children_ns >= 20_000_000, "the child's CPU does not show: {d:?}");
        assert!(d.children_ns > d.ticks_ns, "the child's CPU counted as ours: {d:?}");
    }

    #[test]
    fn our_process_group_contains_us() {
        let me = std::process::id() as i32;
        let pgid = nix::unistd::getpgid(None).unwrap().as_raw();
        assert!(pids_in_group(pgid).contains(&me));
    }

    #[test]
    fn cpu_of_a_thread_that_exited_still_counts() {
        let me = [std::process::id() as i32];
        let before = cpu_of(&me).unwrap();
        let burned = std::thread::spawn(|| {
            let t = std::time::Instant::now();
            let mut x = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            // The thread's own CPU clock: what it really got, whatever the machine's load.
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap()
        })
        .join()
        .unwrap();
        let burned_ns = burned.tv_sec() as u64 * 1_000_000_000 + burned.tv_nsec() as u64;
        let after = cpu_of(&me).unwrap();
        assert!(burned_ns > 0);
        assert!(
            after.since(before).sched_ns >= burned_ns,
            "the exited thread's {burned_ns} ns are missing: {:?}",
            after.since(before)
        );
    }

    #[test]
    fn processes_competing_for_the_cpus_show_run_queue_wait() {
        // One busy process more than there are CPUs: someone is always waiting for one. Processes,
        // not threads of ours, so that the other tests' CPU figures of this process stay clean.
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let mut busy: Vec<_> = (0..n)
            .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
            .collect();
        let pids: Vec<i32> = busy.iter().map(|c| c.id() as i32).collect();
        let before = sched_of(&pids);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let during = sched_of(&pids).since(&before);
        for c in &mut busy {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(during.runq_wait_ns > 0, "{n} busy processes on fewer CPUs waited for none: {during:?}");
    }

    #[test]
    fn switches_since_leave_out_threads_that_exited_and_count_new_ones_whole() {
        let t = |voluntary, involuntary, runq_wait_ns| Sched { voluntary, involuntary, runq_wait_ns };
        let earlier = SchedSample([(1, t(10, 1, 100)), (2, t(50, 5, 900))].into_iter().collect());
        let now = SchedSample([(1, t(14, 2, 150)), (3, t(3, 0, 20))].into_iter().collect());
        assert_eq!(now.since(&earlier), t(4 + 3, 1, 50 + 20));
    }
}
