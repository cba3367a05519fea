//! SONiC's ProducerStateTable protocol for APPL_DB `PORT_TABLE`: an atomic Lua script that adds
//! the key to `PORT_TABLE_KEY_SET`, merges fields into `_PORT_TABLE:<key>` and publishes on
//! `PORT_TABLE_CHANNEL@<db>` once for every key newly added, so orchagent's consumer pops it.
//!
//! One PUBLISH per new key, as swss-common's producer does, even when one call sets many keys:
//! orchagent's Consumer pops at most one batch (128 keys by default) per notification, so fewer
//! notifications than keys would leave keys in `PORT_TABLE_KEY_SET` that nobody pops.

use redis::{Pipeline, Script};

/// Sets any number of entries in one atomic call.
///
/// KEYS = [channel, key set, `_<TABLE>:<key>` for each entry];
/// ARGV = for each entry: field-pair count, key, f1, v1, ...
const SET_SCRIPT: &str = r#"
local added = 0
local a = 1
for i = 3, #KEYS do
    local pairs_n = tonumber(ARGV[a])
    local key = ARGV[a + 1]
    a = a + 2
    local new = redis.call('SADD', KEYS[2], key)
    for _ = 1, pairs_n do
        redis.call('HSET', KEYS[i], ARGV[a], ARGV[a + 1])
        a = a + 2
    end
    if new > 0 then
        redis.call('PUBLISH', KEYS[1], 'G')
        added = added + 1
    end
end
return added
"#;

/// A producer for one APPL_DB table.
#[derive(Debug, Clone)]
pub struct ProducerStateTable {
    table: String,
    channel: String,
    key_set: String,
    script: std::sync::Arc<Script>,
}

impl ProducerStateTable {
    /// `table` in database `db_id` (the channel name carries the id, as swss-common does since 2022).
    pub fn new(table: &str, db_id: i64) -> Self {
        Self {
            table: table.to_owned(),
            channel: format!("{table}_CHANNEL@{db_id}"),
            key_set: format!("{table}_KEY_SET"),
            script: std::sync::Arc::new(Script::new(SET_SCRIPT)),
        }
    }

    /// The script, for `SCRIPT LOAD` at start-up and after a reconnect.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Appends one EVALSHA that sets every entry of `entries` to `pipe`. Entries with no fields
    /// are skipped: through this protocol an empty set would read as a delete to the consumer.
    pub fn add_set<'a, I, F>(&self, pipe: &mut Pipeline, entries: I) -> usize
    where
        I: IntoIterator<Item = (&'a str, F)>,
        F: AsRef<[(String, String)]>,
    {
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.channel).key(&self.key_set);
        let mut n = 0;
        for (key, fields) in entries {
            let fields = fields.as_ref();
            if fields.is_empty() {
                continue;
            }
            inv.key(format!("_{}:{key}", self.table)).arg(fields.len()).arg(key);
            for (f, v) in fields {
                inv.arg(f).arg(v);
            }
            n += 1;
        }
        if n > 0 {
            pipe.invoke_script(&inv);
        }
        n
    }
}
