//! SONiC's way of finding Redis: `--database-config` pointing at a `database_config.json` whose
//! instance has a unix socket, with the daemon inside a network namespace (as in the swss
//! container), reaches the same databases as `--redis`.

use portsyncd_e2e::{all_links, hash, wait_hash, Capture, DaemonOpts, Fixture, APPL_DB, DEFAULT_TIMEOUT};

#[test]
fn database_config_json_with_a_unix_socket_is_used() {
    let mut fx = Fixture::new(Capture::Netlink, 2);
    let config = fx.redis.database_config_path().to_str().unwrap().to_owned();
    fx.start_daemon(DaemonOpts::new(Capture::Netlink).redis_args(["--database-config", config.as_str()]));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortConfigDone", &hash(&[("count", "2")]));
    fx.create_ports(0..2);
    fx.wait_state_matches_kernel(&fx.ports, DEFAULT_TIMEOUT, all_links(&fx.ports, true, true));
    wait_hash(&fx.redis, APPL_DB, "PORT_TABLE:PortInitDone", &hash(&[("lanes", "0")]));
}
