//! The annual report (R-REPORT) as a readable page: server-rendered HTML, no scripts.

use serde_json::Value;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// Renders the JSON annual report as an HTML page.
pub fn annual_report_html(report: &Value) -> String {
    let mut rows = String::new();
    for s in report["scenarios"].as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            text(&s["name"]),
            text(&s["key_area"]),
            text(&s["state"]),
            if s["public_interest"] == true { "yes" } else { "no" },
            text(&s["jobs"]),
            text(&s["jobs_failed"]),
            text(&s["exports_released"]),
            text(&s["exports_rejected"]),
        ));
    }
    let t = &report["totals"];
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Annual report {year} - {org}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em}}</style>
</head><body>
<h1>Annual report {year}</h1>
<p>Operating unit: <strong>{org}</strong></p>
<h2>Scenarios</h2>
<table><tr><th>scenario</th><th>key area</th><th>state</th><th>public interest</th><th>jobs</th><th>failed</th><th>exports released</th><th>exports rejected</th></tr>
{rows}</table>
<h2>Resource use</h2>
<table>
<tr><td>jobs</td><td>{jobs}</td></tr>
<tr><td>fuel</td><td>{fuel}</td></tr>
<tr><td>rows scanned</td><td>{rows_scanned}</td></tr>
<tr><td>bytes scanned</td><td>{bytes}</td></tr>
<tr><td>result bytes</td><td>{output}</td></tr>
</table>
<h2>Incidents</h2>
<table>
<tr><td>failed jobs</td><td>{failed}</td></tr>
<tr><td>exports rejected by the gate or a reviewer</td><td>{rejected}</td></tr>
</table>
</body></html>
"#,
        year = text(&report["year"]),
        org = text(&report["org"]),
        jobs = text(&t["jobs"]),
        fuel = text(&t["fuel"]),
        rows_scanned = text(&t["rows_scanned"]),
        bytes = text(&t["bytes_scanned"]),
        output = text(&t["output_bytes"]),
        failed = text(&report["incidents"]["failed_jobs"]),
        rejected = text(&report["incidents"]["rejected_exports"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_the_page() {
        let report = serde_json::json!({
            "org": "org_1", "year": 2026,
            "scenarios": [{ "name": "<script>x</script>", "jobs": 2 }],
            "totals": { "jobs": 2 }, "incidents": { "failed_jobs": 0 },
        });
        let html = annual_report_html(&report);
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!html.contains("<script>"));
    }
}
