//! Without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN the eBPF program cannot load: `--capture auto`
//! must fall back to netlink (saying why, and still mirroring links), `--capture ebpf` must refuse
//! to start with one clear error line.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use portsyncd_e2e::{
    all_links, daemon::daemon_binary, port_state, redis_server::which, Capture, Daemon, DaemonOpts, Fixture,
    DEFAULT_TIMEOUT,
};

/// A wrapper that runs the daemon with the three capabilities removed from its bounding set, so
/// the exec'd daemon does not have them even as root.
fn unprivileged_wrapper(dir: &std::path::Path) -> PathBuf {
    let capsh = which("capsh").expect("capsh not found: run `bash scripts/install-deps.sh` (libcap2-bin)");
    let path = dir.join("portsyncd-nocaps");
    let script = format!(
        "#!/bin/sh\nexec {} --drop=cap_bpf,cap_perfmon,cap_sys_admin -- -c 'exec \"$@\"' nocaps {} \"$@\"\n",
        capsh.display(),
        daemon_binary().display()
    );
    std::fs::write(&path, script).expect("write wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    path
}

#[test]
fn auto_capture_without_bpf_capabilities_falls_back_to_netlink() {
    let mut fx = Fixture::new(Capture::Auto, 2);
    let dir = tempfile::tempdir().unwrap();
    let wrapper = unprivileged_wrapper(dir.path());
    let mut daemon = Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(Capture::Auto).binary(&wrapper));
    let stats = daemon.wait_ready();
    assert_eq!(stats.capture_mode(), Some("netlink"), "{:?}", stats.0);
    let reason = stats.capture_fallback_reason().unwrap_or_default().to_owned();
    assert!(reason.contains("CAP_BPF"), "fallback reason names the missing capability: {reason:?}");
    assert!(
        daemon.log().contains("capture mode: netlink (eBPF unavailable)"),
        "one log line says so:\n{}",
        daemon.log()
    );
    fx.daemon = Some(daemon);
    // And it still does its job.
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    fx.ns.ip(&["link", "set", "Ethernet1", "down"]);
    fx.wait_state_entry("Ethernet1", &port_state(false, false, 1500));
}

#[test]
fn ebpf_capture_without_bpf_capabilities_refuses_to_start() {
    let fx = Fixture::new(Capture::Ebpf, 1);
    let dir = tempfile::tempdir().unwrap();
    let wrapper = unprivileged_wrapper(dir.path());
    let mut daemon = Daemon::start(&fx.ns, &fx.redis, DaemonOpts::new(Capture::Ebpf).binary(&wrapper));
    let status = daemon.wait_exit(Duration::from_secs(20)).expect("daemon must exit on its own");
    assert_eq!(status.code(), Some(1), "exit code 1:\n{}", daemon.log());
    let errors: Vec<String> =
        daemon.log().lines().filter(|l| l.starts_with("portsyncd: error:")).map(str::to_owned).collect();
    assert_eq!(errors.len(), 1, "exactly one error line:\n{}", daemon.log());
    assert!(errors[0].contains("eBPF") && errors[0].contains("CAP_BPF"), "{}", errors[0]);
}
