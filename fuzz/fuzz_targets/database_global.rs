//! SONiC's database_global.json -> `namespace_database_config_text`, the host mode's
//! (`-n asicN`) first step. Checks: no panic (errors included: they are formatted as main prints
//! them); an accepted file gives a path under the global file's directory unless its include is
//! absolute, and an error names the namespace asked for.
#![no_main]

use std::error::Error;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portsyncd::sonic_db::namespace_database_config_text;

const GLOBAL: &str = "/var/run/redis/sonic-db/database_global.json";

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: anything but UTF-8 fails before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    for namespace in ["asic0", "asic1", ""] {
        match namespace_database_config_text(Path::new(GLOBAL), text, namespace) {
            Ok(path) => {
                let dir = Path::new(GLOBAL).parent().unwrap_or(Path::new("/"));
                assert!(path.starts_with(dir) || path.is_absolute(), "{}", path.display());
                assert_ne!(path.as_path(), dir, "an include that names no file is refused");
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(shown.contains(GLOBAL), "{shown}");
                let _ = e.source().map(ToString::to_string);
            }
        }
    }
});
