//! SONiC's database_config.json -> `SonicDbs::from_database_config_text`. Checks: no panic
//! (errors included: they are formatted as the daemon logs them); an accepted layout has the
//! id it names selected on each connection and a `:` or `|` separator.
#![no_main]

use std::error::Error;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portsyncd::sonic_db::{SonicDbs, PORT_TABLE};

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: anything but UTF-8 fails before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match SonicDbs::from_database_config_text(Path::new("database_config.json"), text) {
        Ok(dbs) => {
            for loc in [&dbs.appl, &dbs.config, &dbs.state] {
                assert!(matches!(loc.separator, ':' | '|'));
                assert_eq!(loc.info.redis_settings().db(), loc.id);
                let key = loc.key(PORT_TABLE, "Ethernet0");
                assert_eq!(key, format!("{PORT_TABLE}{}Ethernet0", loc.separator));
                let _ = format!("{:?}", loc.info.addr());
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.source().map(ToString::to_string);
        }
    }
});
