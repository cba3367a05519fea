//! Reads a scrape the way a Prometheus server would: with the Prometheus project's reference
//! OpenMetrics parser (Python `prometheus_client`, installed by `scripts/install-deps.sh`), so a
//! malformed exposition fails the test instead of being matched line by line.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "help": f.documentation, "unit": f.unit,
                   "samples": [[s.name, s.labels, s.value] for s in f.samples]}
json.dump(out, sys.stdout)
"#;

/// Families by name: `{type, help, unit, samples: [[name, {labels}, value]]}`; `Err` carries the
/// parser's complaint.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 (needed to parse OpenMetrics): {e}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("python3 stdin"));
    stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write to python3: {e}"));
    drop(stdin);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("python3: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "python3 lacks prometheus_client: run scripts/install-deps.sh"
    );
    if !out.status.success() {
        return Err(err.into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("parser output: {e}"))
}

/// The value of the first sample named `sample` whose labels include `labels`.
pub fn sample(families: &Value, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.as_object()?.values().flat_map(|f| f["samples"].as_array().into_iter().flatten()).find_map(|s| {
        let matches = s[0].as_str() == Some(sample) && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v));
        matches.then(|| s[2].as_f64()).flatten()
    })
}
