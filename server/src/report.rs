//! The annual report (R-REPORT) as a readable page: server-rendered HTML, no scripts.

use serde_json::Value;
use tidegate_runtime::ExportView;

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// The sections of an export's review page (without the page around them).
pub(crate) fn export_sections(export: &ExportView) -> String {
    let report = &export.gate_report;
    let mut checks = String::new();
    for c in &report.checks {
        let (class, result) = match (c.passed, c.flagged) {
            (true, false) => ("pass", "pass"),
            (true, true) => ("flag", "pass, flagged for a second reviewer"),
            _ => ("fail", "FAIL"),
        };
        checks.push_str(&format!(
            "<tr class=\"{class}\"><td>{}</td><td>{result}</td><td>{}</td></tr>\n",
            escape(&c.name),
            escape(&c.detail),
        ));
    }
    // The preview as the CSV reader reads it: a quoted comma or newline stays in its cell.
    let mut preview = String::new();
    if let Some(csv) = &export.preview {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(csv.as_bytes());
        for (i, record) in reader.records().enumerate() {
            let cell = if i == 0 { "th" } else { "td" };
            preview.push_str("<tr>");
            match record {
                Ok(record) => {
                    for value in record.iter() {
                        preview.push_str(&format!("<{cell}>{}</{cell}>", escape(value)));
                    }
                }
                Err(_) => preview.push_str("<td>(a row the preview cannot show)</td>"),
            }
            preview.push_str("</tr>\n");
        }
    }
    fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
        items
            .iter()
            .map(|v| format!("<li>{}</li>", f(v)))
            .collect::<Vec<_>>()
            .join("\n")
    }
    let optional = |v: &Option<String>| v.as_deref().map(escape).unwrap_or_default();
    let earlier = list(&export.earlier, |e| {
        format!(
            "{} ({}; released {}): <code>{}</code>",
            escape(&e.id),
            e.state.as_str(),
            optional(&e.released_at),
            escape(&e.query)
        )
    });
    let reviews = list(&export.reviews, |r| {
        format!(
            "{} by {} at {}: {}",
            escape(&r.as_role),
            escape(&r.by),
            escape(&r.at),
            optional(&r.comment)
        )
    });
    let history = list(&export.history, |s| {
        let comment = s.comment.as_deref().map(|c| format!(": {}", escape(c)));
        format!(
            "{} at {} by {}{}",
            s.state.as_str(),
            escape(&s.at),
            escape(&s.by),
            comment.unwrap_or_default()
        )
    });
    let modules = list(&export.modules, |m| format!("<code>{}</code>", escape(m)));
    let mut flag = export
        .flag
        .as_deref()
        .map(|f| format!("<p class=\"flag\">{}</p>", escape(f)))
        .unwrap_or_default();
    if export.public_figures {
        flag.push_str(
            "<p class=\"notice\">The scenario publishes its figures: once released, these rows \
             appear in the public record, signed, for anyone to read.</p>",
        );
    }
    // The returned request this one answers, and the one that answered it: side by side.
    for (other, words) in [
        (&export.amends, "Amends export"),
        (&export.amended_by, "Amended by export"),
    ] {
        if let Some(other) = other {
            flag.push_str(&format!(
                "<p class=\"notice\">{words} <a href=\"/console/exports/{id}\">{id}</a>.</p>",
                id = escape(other)
            ));
        }
    }
    format!(
        r#"<h1>Export {id}: {state}</h1>
{flag}<p>Job {job}, requested by {by}. Threshold k = {k}; {groups} group(s), {suppressed} suppressed; {rows} row(s) released. Approvals required: {required}.</p>
<h2>Gate report</h2>
<table><tr><th>check</th><th>result</th><th>numbers</th></tr>
{checks}</table>
<h2>Query</h2><pre>{query}</pre>
<h2>Plan</h2><pre>{plan}</pre>
<h2>Modules</h2><ul>{modules}</ul>
<h2>Preview (as it would be released)</h2><table>
{preview}</table>
<h2>Earlier exports of this scenario, and over the same data</h2><ul>{earlier}</ul>
<h2>Reviews</h2><ul>{reviews}</ul>
<h2>History</h2><ol>{history}</ol>
"#,
        id = escape(&export.id),
        state = export.state.as_str(),
        job = escape(&export.job),
        by = escape(&export.requested_by),
        k = report.threshold_k,
        groups = report.groups_total,
        suppressed = report.groups_suppressed,
        rows = report.rows_released,
        required = export.required_approvals,
        query = optional(&export.query),
        plan = optional(&export.plan),
    )
}

/// The styles of the pages: one sheet, served by the console at `/console/style.css` and
/// inlined in the stand-alone pages the API gives with `?format=html`.
pub(crate) const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:72em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #999;padding:.3em .6em;vertical-align:top}\
tr.fail td{background:#fdd}tr.flag td,p.flag{background:#ffd}tr.pass td:nth-child(2){color:#060}\
pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap;overflow-wrap:anywhere}\
nav a,nav button{margin-right:1em}nav form{display:inline}textarea{width:100%;max-width:40em}\
p.notice{background:#eef;padding:.5em}p.error{background:#fdd;padding:.5em}\
@media (max-width:40em){body{margin:.5em}td,th{padding:.2em}}";

/// Renders an export and its gate report as the page a reviewer works from: each check with
/// its numbers, the query, the plan, the module hashes, the (masked, suppressed) preview, the
/// scenario's earlier exports and the reviews so far. No scripts; every value escaped.
pub fn export_html(export: &ExportView) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Export {}</title>\n<style>{STYLE}</style>\n</head><body>\n{}</body></html>\n",
        escape(&export.id),
        export_sections(export)
    )
}

/// Renders the annual report as an HTML page.
pub fn annual_report_html(report: &tidegate_runtime::AnnualReport) -> String {
    let mut rows = String::new();
    for s in &report.scenarios {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&s.name),
            escape(&s.key_area),
            escape(s.state.as_str()),
            if s.public_interest { "yes" } else { "no" },
            s.jobs,
            s.jobs_failed,
            s.exports_released,
            s.exports_rejected,
        ));
    }
    let t = &report.totals;
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
        year = report.year,
        org = escape(&report.org),
        jobs = t.jobs,
        fuel = t.fuel,
        rows_scanned = t.rows_scanned,
        bytes = t.bytes_scanned,
        output = t.output_bytes,
        failed = report.incidents.failed_jobs,
        rejected = report.incidents.rejected_exports,
    )
}

/// S18: a provider's contribution report as a page: every value escaped, no script.
pub(crate) fn contribution_html(report: &tidegate_runtime::ContributionReport) -> String {
    let categories: Vec<&str> = tidegate_runtime::PRICE_ITEMS
        .iter()
        .map(|(_, category, ..)| *category)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut head = String::from(
        "<tr><th>dataset</th><th>level</th><th>version</th><th>quality score</th>\
         <th>rows failing rules</th><th>scenarios</th><th>jobs</th><th>rows scanned</th>\
         <th>rows failing rules read</th><th>products</th>",
    );
    for c in &categories {
        head.push_str(&format!("<th>{} (fen)</th>", escape(&c.replace('_', " "))));
    }
    head.push_str("<th>fees (fen)</th></tr>\n");
    let mut rows = String::new();
    for d in &report.datasets {
        let score = d
            .quality_score
            .map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0));
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            escape(&d.name),
            d.level,
            d.version,
            escape(&score),
            d.rule_failures.map_or("-".to_string(), |f| f.to_string()),
            d.scenarios,
            d.jobs,
            d.rows_scanned,
            d.rule_failures_read,
            d.products,
        ));
        for c in &categories {
            rows.push_str(&format!(
                "<td>{}</td>",
                d.fees_fen.get(*c).copied().unwrap_or(0)
            ));
        }
        rows.push_str(&format!("<td>{}</td></tr>\n", d.fees_total_fen));
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Contribution {year} - {org}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:.3em .6em}}</style>
</head><body>
<h1>Data contribution {year}</h1>
<p>Provider: <strong>{org}</strong>. Fees its data earned: <strong>{total}</strong> fen.</p>
<table>
{head}{rows}</table>
<p>How fees are attributed: {attribution}.</p>
</body></html>
"#,
        year = report.year,
        org = escape(&report.org),
        total = report.fees_total_fen,
        attribution = escape(&report.attribution),
    )
}

/// The public record (S19) as a page: every value escaped, no script.
pub(crate) fn public_record_html(record: &Value) -> String {
    let rows = |items: &Value, cols: &[(&str, &str)]| -> String {
        let mut out = String::from("<table><tr>");
        for (_, title) in cols {
            out.push_str(&format!("<th>{}</th>", escape(title)));
        }
        out.push_str("</tr>");
        for item in items.as_array().into_iter().flatten() {
            out.push_str("<tr>");
            for (key, _) in cols {
                let v = &item[*key];
                let shown = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                out.push_str(&format!("<td>{}</td>", escape(&shown)));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
        out
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Public record - Tidegate</title><link rel=\"stylesheet\" href=\"/console/style.css\"></head><body>\
         <h1>Public record</h1><p>As of {}. The same record, signed by the platform, is at \
         <a href=\"/public/record.json\">/public/record.json</a>; it verifies with the key at \
         <a href=\"/v1/public-key\">/v1/public-key</a>. Released products are listed; their figures only \
         where the scenario's approved rules publish them.</p>\
         <h2>Authorized units</h2>{}<h2>Scenarios</h2>{}<h2>Released products</h2>{}{}<h2>Fees this year (fen, by category)</h2>{}\
         </body></html>\n",
        escape(record["generated_at"].as_str().unwrap_or("")),
        rows(
            &record["units"],
            &[
                ("id", "unit"),
                ("name", "name"),
                ("authorized_since", "since"),
                ("authorized_until", "until"),
                ("exited_at", "exited")
            ]
        ),
        rows(
            &record["scenarios"],
            &[
                ("id", "scenario"),
                ("name", "name"),
                ("org", "unit"),
                ("key_area", "key area"),
                ("purpose", "purpose"),
                ("term", "term"),
                ("state", "state")
            ]
        ),
        rows(
            &record["products"],
            &[
                ("title", "title"),
                ("scenario", "scenario"),
                ("released_at", "released"),
                ("export", "export")
            ]
        ),
        published_figures(&record["products"]),
        rows(
            &record["fees"],
            &[
                ("org", "unit"),
                ("year", "year"),
                ("fen_by_category", "fees")
            ]
        ),
    )
}

/// The figures the public record publishes, a table per product, every cell escaped.
fn published_figures(products: &Value) -> String {
    let mut out = String::new();
    for p in products.as_array().into_iter().flatten() {
        let f = &p["figures"];
        if f.is_null() {
            continue;
        }
        out.push_str(&format!(
            "<h3>Figures of {} ({})</h3>",
            escape(p["title"].as_str().unwrap_or_default()),
            escape(p["export"].as_str().unwrap_or_default())
        ));
        if let Some(why) = f["withheld"].as_str() {
            out.push_str(&format!("<p>Withheld: {}.</p>", escape(why)));
            continue;
        }
        out.push_str("<table><tr>");
        for c in f["columns"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "<th>{}</th>",
                escape(c.as_str().unwrap_or_default())
            ));
        }
        out.push_str("</tr>");
        for row in f["rows"].as_array().into_iter().flatten() {
            out.push_str("<tr>");
            for cell in row.as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "<td>{}</td>",
                    escape(cell.as_str().unwrap_or_default())
                ));
            }
            out.push_str("</tr>");
        }
        out.push_str(&format!(
            "</table><p>SHA-256 of the released result: <code>{}</code></p>",
            escape(f["result_sha256"].as_str().unwrap_or_default())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_figures_are_escaped_cell_by_cell() {
        let record = serde_json::json!({
            "generated_at": "2026-12-01T00:00:00Z",
            "products": [
                { "title": "<b>t</b>", "export": "ex1", "figures": {
                    "result_sha256": "ab", "columns": ["<script>"], "rows": [["<img src=x onerror=alert(1)>"]] } },
                { "title": "private", "export": "ex2" }
            ]
        });
        let page = public_record_html(&record);
        assert!(
            !page.contains("<script>") && !page.contains("<img"),
            "{page}"
        );
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{page}"
        );
        assert!(
            page.contains("Figures of &lt;b&gt;t&lt;/b&gt; (ex1)"),
            "{page}"
        );
        assert!(!page.contains("Figures of private"), "{page}");
    }

    #[test]
    fn a_contribution_page_escapes_every_value_and_runs_no_script() {
        let report: tidegate_runtime::ContributionReport =
            serde_json::from_value(serde_json::json!({
                "org": "<script>alert(1)</script>",
                "year": 2026,
                "attribution": "a & b",
                "fees_total_fen": 300,
                "datasets": [{
                    "dataset": "d_1", "name": "<img src=x onerror=alert(1)>", "level": "L2",
                    "version": 1, "quality_score": 0.5, "rule_failures": 3, "scenarios": 1,
                    "jobs": 2, "rows_scanned": 10, "rule_failures_read": 6, "products": 1,
                    "fees_fen": { "security_services": 300 }, "fees_total_fen": 300
                }]
            }))
            .unwrap();
        let page = contribution_html(&report);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;img src=x"), "{page}");
        assert!(page.contains("<td>50%</td>"), "{page}");
        assert!(page.contains("<td>300</td>"), "{page}");
    }

    #[test]
    fn a_preview_value_with_a_comma_or_a_newline_stays_in_its_cell() {
        let export: ExportView = serde_json::from_value(serde_json::json!({
            "id": "ex_1", "job": "job_1", "requested_by": "p_1", "state": "in_review",
            "gate_report": {
                "checks": [], "threshold_k": 10, "groups_total": 2, "groups_suppressed": 0,
                "rows_released": 2,
            },
            "result_hash": null, "required_approvals": 1, "reviews": [],
            "preview": "area,n\n\"Helsinki, FI\",12\n\"two\nlines\",13",
        }))
        .unwrap();
        let html = export_sections(&export);
        assert!(html.contains("<td>Helsinki, FI</td><td>12</td>"), "{html}");
        assert!(html.contains("<td>two\nlines</td><td>13</td>"), "{html}");
        assert_eq!(html.matches("<tr><td>").count(), 2, "two rows: {html}");
    }

    #[test]
    fn names_are_escaped_in_the_page() {
        let report = tidegate_runtime::AnnualReport {
            org: "org_1".into(),
            year: 2026,
            scenarios: vec![tidegate_runtime::AnnualScenario {
                id: "sc_1".into(),
                name: "<script>x</script>".into(),
                key_area: "<b>".into(),
                state: tidegate_policy::ScenarioState::Active,
                public_interest: false,
                term: ("2026-01-01".into(), "2026-12-31".into()),
                jobs: 2,
                jobs_failed: 0,
                exports_released: 0,
                exports_rejected: 0,
            }],
            totals: Default::default(),
            incidents: Default::default(),
            evaluation: None,
            may_reapply: true,
        };
        let html = annual_report_html(&report);
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(html.contains("<td>&lt;b&gt;</td>"));
        assert!(!html.contains("<script>"));
    }
}
