//! A private network namespace with veth "front-panel" ports: `ip` commands in, kernel link state
//! (ifindex, IFF_UP, IFF_RUNNING, mtu read from sysfs inside the namespace) out.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::redis_server::which;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `IFF_UP`: the admin state portsyncd publishes as `admin_status`.
pub const IFF_UP: u32 = 0x1;

/// One link as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub ifindex: u32,
    /// `dev->flags` as sysfs shows them: IFF_RUNNING is never in there (the kernel computes it
    /// only for rtnetlink/ioctl, see `admin_up`/`oper_up`).
    pub flags: u32,
    /// IFF_UP.
    pub admin_up: bool,
    /// IFF_RUNNING as rtnetlink reports it in `ifi_flags`: the kernel's `dev_get_flags()` sets it
    /// when the device is up and its operstate is `up` or `unknown`.
    pub oper_up: bool,
    /// MTU.
    pub mtu: u32,
}

/// A network namespace deleted on drop, after every process still inside it was killed.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// The `ip` binary (root's PATH has /usr/sbin, a plain user's may not).
pub fn ip_bin() -> PathBuf {
    which("ip")
        .or_else(|| ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].iter().map(PathBuf::from).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("`ip` (iproute2) not found: run `bash scripts/install-deps.sh`"))
}

impl NetNs {
    /// Creates `psd<pid>x<counter>`.
    pub fn new() -> Self {
        crate::require_root();
        let name = format!("psd{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(ip_bin()).args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("ip netns add {name}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("ip netns add {name}: {e}"),
        }
        NetNs { name }
    }

    /// The namespace name (for `ip -n` / `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`; returns its output whatever the exit status.
    pub fn try_ip(&self, args: &[&str]) -> Output {
        Command::new(ip_bin())
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn ip -n {} {args:?}: {e}", self.name))
    }

    /// Runs `ip -n <ns> <args>` and panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        let out = self.try_ip(args);
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs many `ip` commands in one process (`ip -n <ns> -batch -`), so that a storm reaches the
    /// kernel as fast as iproute2 can issue it. Lines are without the leading `ip`.
    pub fn batch<S: AsRef<str>>(&self, lines: &[S]) {
        let mut child = Command::new(ip_bin())
            .arg("-n")
            .arg(&self.name)
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ip -batch: {e}"));
        let mut text = String::new();
        for l in lines {
            text.push_str(l.as_ref());
            text.push('\n');
        }
        {
            let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("ip -batch stdin"));
            stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write ip -batch: {e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("wait ip -batch: {e}"));
        assert!(
            out.status.success(),
            "ip -n {} -batch failed ({} lines, first: {:?}): {}",
            self.name,
            lines.len(),
            lines.first().map(|l| l.as_ref().to_owned()),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `ip -n <ns> -batch -` on `lines` in the background (e.g. a storm the test injects
    /// faults into); [`BatchChild::wait`] collects it. Lines are without the leading `ip`.
    pub fn spawn_batch(&self, lines: Vec<String>) -> BatchChild {
        let mut child = Command::new(ip_bin())
            .arg("-n")
            .arg(&self.name)
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ip -batch: {e}"));
        let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("ip -batch stdin"));
        let n = lines.len();
        // A writer thread: a long batch does not fit in the pipe buffer.
        let writer = std::thread::spawn(move || {
            let mut text = lines.join("\n");
            text.push('\n');
            stdin.write_all(text.as_bytes())
        });
        BatchChild { child: Some(child), writer: Some(writer), lines: n, ns: self.name.clone() }
    }

    /// Runs a command inside the namespace (`ip netns exec <ns> ...`).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new(ip_bin())
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {argv:?}: {e}", self.name))
    }

    /// Creates the veth pair `Ethernet<n>` / `pe<n>` (both down).
    pub fn veth(&self, n: u32) {
        self.ip(&["link", "add", &format!("Ethernet{n}"), "type", "veth", "peer", "name", &format!("pe{n}")]);
    }

    /// Creates veth pairs `Ethernet<n>` / `pe<n>` for every `n`, in one `ip -batch`.
    pub fn veths(&self, ports: impl IntoIterator<Item = u32>) {
        let lines: Vec<String> =
            ports.into_iter().map(|n| format!("link add Ethernet{n} type veth peer name pe{n}")).collect();
        if !lines.is_empty() {
            self.batch(&lines);
        }
    }

    /// Brings `Ethernet<n>` and its peer up (admin up and carrier), in one `ip -batch`.
    pub fn ports_up(&self, ports: impl IntoIterator<Item = u32>) {
        let lines: Vec<String> = ports
            .into_iter()
            .flat_map(|n| [format!("link set pe{n} up"), format!("link set Ethernet{n} up")])
            .collect();
        if !lines.is_empty() {
            self.batch(&lines);
        }
    }

    /// Every link in the namespace, read from sysfs in one shell (no fork per link).
    pub fn links(&self) -> BTreeMap<String, LinkState> {
        let script = r#"for d in /sys/class/net/*; do
  [ -f "$d/ifindex" ] || continue
  read i < "$d/ifindex" && read f < "$d/flags" && read m < "$d/mtu" && read o < "$d/operstate" &&
    echo "${d##*/} $i $f $m $o"
done"#;
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "reading /sys/class/net in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut links = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, ifindex, flags, mtu, operstate] = parts[..] else {
                continue;
            };
            let (Ok(ifindex), Ok(flags), Ok(mtu)) =
                (ifindex.parse::<u32>(), u32::from_str_radix(flags.trim_start_matches("0x"), 16), mtu.parse::<u32>())
            else {
                continue;
            };
            links.insert(
                name.to_owned(),
                LinkState {
                    ifindex,
                    flags,
                    admin_up: flags & IFF_UP != 0,
                    oper_up: flags & IFF_UP != 0 && matches!(operstate, "up" | "unknown"),
                    mtu,
                },
            );
        }
        links
    }

    /// One link, if it exists.
    pub fn link(&self, name: &str) -> Option<LinkState> {
        self.links().remove(name)
    }

    /// Moves the calling thread into the namespace until the guard drops (`setns` is per
    /// thread). Sockets created meanwhile stay in the namespace for their whole life, which is
    /// how a test listens to its links without a process inside. Threads started meanwhile
    /// start inside too.
    pub fn enter(&self) -> Entered {
        // `ip` keeps its namespaces under /var/run/netns, which is /run/netns on current systems.
        let path = ["/run/netns", "/var/run/netns"]
            .iter()
            .map(|d| PathBuf::from(d).join(&self.name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("namespace {} not found under /run/netns", self.name));
        let target = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let home = File::open("/proc/thread-self/ns/net").unwrap_or_else(|e| panic!("open own netns: {e}"));
        nix::sched::setns(&target, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
        Entered { home, _not_send: PhantomData }
    }

    /// pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new(ip_bin()).args(["netns", "pids", &self.name]).output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// The calling thread inside a [`NetNs`] (see [`NetNs::enter`]); back home on drop. Not `Send`:
/// it must drop on the thread it moved.
#[derive(Debug)]
pub struct Entered {
    home: File,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.home, CloneFlags::CLONE_NEWNET) {
            // Staying in a namespace about to be deleted would break every later test on this
            // thread in confusing ways.
            if !std::thread::panicking() {
                panic!("setns back to the original network namespace: {e}");
            }
        }
    }
}

/// A background `ip -batch` from [`NetNs::spawn_batch`]; killed on drop unless waited for.
#[derive(Debug)]
pub struct BatchChild {
    child: Option<std::process::Child>,
    writer: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    lines: usize,
    ns: String,
}

impl BatchChild {
    /// Whether `ip` has exited.
    pub fn is_finished(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for `ip` to finish; panics if it failed.
    pub fn wait(mut self) {
        let child = self.child.take().unwrap_or_else(|| panic!("ip -batch already collected"));
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("wait ip -batch: {e}"));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        assert!(
            out.status.success(),
            "ip -n {} -batch failed ({} lines): {}",
            self.ns,
            self.lines,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for BatchChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // A process left inside (a daemon whose guard leaked, a stuck `ip`) would keep the
        // namespace's links alive after `ip netns del`.
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        del_quietly(&self.name);
    }
}

/// `ip netns del <name>`, whatever its outcome: clean-up on drop, where there is no one to
/// report to.
pub(crate) fn del_quietly(name: &str) {
    let _ = Command::new(ip_bin())
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
