//! `tidegate dataset`: a local file's proposed tags (`scan`), its import as a new encrypted
//! version (provider), the datasets one may see, their approval and privacy budget.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use tidegate_runtime::{ColumnInput, DatasetView, ImportRequest};

use super::{Remote, print};
use crate::client::decode;

#[derive(Subcommand)]
pub(super) enum DatasetCommand {
    /// Import a CSV or Parquet file as a new encrypted version.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        level: String,
        /// csv or parquet (from the file name when absent)
        #[arg(long)]
        format: Option<String>,
        /// NAME:TYPE:TAGS, e.g. resident_id:utf8:pii:resident_id,entity (TYPE may be empty)
        #[arg(long = "column")]
        columns: Vec<String>,
        /// An org whose approval every scenario using this dataset needs (repeatable), e.g.
        /// the province for data it returned.
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// A JSON file of public metadata per column for the dataset's mocks, e.g.
        /// {"spend": {"min": 0, "max": 500}, "spot": {"categories": ["A", "B"]}}
        #[arg(long)]
        mock: Option<PathBuf>,
        /// A JSON file of quality rules checked on this import and every later one, e.g.
        /// [{"column": "spend", "check": "range", "min": 0, "max": 800, "on_fail": "quarantine"},
        ///  {"column": "resident_id", "check": "check_digits", "on_fail": "refuse"}];
        /// checks: not_null, range, categories (values), unique, check_digits, fresh
        /// (within_days); on_fail: refuse, quarantine (stored sealed until an admin unseals
        /// it; the default), report.
        #[arg(long)]
        quality_rules: Option<PathBuf>,
    },
    /// A mock of a dataset as your scenario grants it (its granted columns and entity key),
    /// generated from its provider's declared metadata, never from its values: Parquet marked
    /// as a mock.
    Mock {
        dataset: String,
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 1000)]
        rows: u64,
        /// The same seed gives the same mock.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// A sample of a dataset version's rows, drawn at random, to inspect its quality
    /// (its provider, the authority's admins; audited).
    Sample {
        id: String,
        #[arg(long)]
        version: i64,
        #[arg(long, default_value_t = 20)]
        rows: u64,
    },
    /// Where a dataset is used: the scenarios granting it, the jobs that read it, the products
    /// released from it (its provider, the authority). A provider downloads those products
    /// free with `export download`.
    Usage { id: String },
    /// Seal a dataset version (admin): no job may read it; it is kept for inspection.
    Seal {
        id: String,
        #[arg(long)]
        version: i64,
        #[arg(long)]
        reason: String,
    },
    /// Lift a dataset version's seal (admin).
    Unseal {
        id: String,
        #[arg(long)]
        version: i64,
        #[arg(long)]
        reason: String,
    },
    /// Destroy a dataset version (admin): its key and file; scenarios pinned to it are
    /// suspended; prints the signed destruction certificate.
    Destroy {
        id: String,
        #[arg(long)]
        version: i64,
        #[arg(long)]
        reason: String,
    },
    /// List the datasets you may see, with their versions and columns.
    List,
    /// Approve an operating unit's social data (admin).
    Approve { id: String },
    /// Set a dataset's differential privacy budget (its provider): the epsilon all private
    /// scenarios together may draw from it, and the most one org may.
    Budget {
        id: String,
        #[arg(long)]
        total: f64,
        #[arg(long)]
        per_org: f64,
    },
    /// Before any import: the proposed tag and confidence of every column of a local file.
    Scan {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(command: DatasetCommand, remote: &Remote) -> Result<()> {
    match command {
        DatasetCommand::Import {
            file,
            name,
            level,
            format,
            columns,
            approvers,
            mock,
            quality_rules,
        } => {
            // Checked here, before a file of any size is read and sent.
            let level: tidegate_policy::Level = level
                .to_ascii_uppercase()
                .parse()
                .map_err(|e: String| anyhow!("--level {level}: {e}"))?;
            let data = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let size = data.metadata().map(|m| m.len()).unwrap_or(0);
            let format = format.unwrap_or_else(|| guess_format(&file));
            let mut columns: Vec<ColumnInput> = columns
                .iter()
                .map(|c| parse_column(c))
                .collect::<Result<_>>()?;
            if let Some(path) = mock {
                add_mock_metadata(&mut columns, &path)?;
            }
            eprintln!("importing {} ({size} bytes, streamed)...", file.display());
            let request = ImportRequest {
                name,
                level,
                format,
                columns,
                approvers,
                // The file goes as the body of the upload, not inside the request.
                data_base64: String::new(),
                quality_rules: quality_rules
                    .map(|path| -> Result<_> {
                        let text = std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        serde_json::from_str(&text).with_context(|| {
                            format!("{} is not a JSON list of quality rules", path.display())
                        })
                    })
                    .transpose()?,
            };
            // Bytes and rate while the file goes; the server reads it once it has all
            // arrived, and the answer says how many rows it held.
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(size),
                indicatif::ProgressDrawTarget::stderr(),
            )
            .with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("the template is valid"),
            );
            let mut sent = bar.wrap_read(data);
            let client = remote.client()?;
            let answer = client.upload_dataset(&request, &mut sent);
            bar.finish_and_clear();
            let answer = answer?;
            if let Some(rows) = decode::<DatasetView>(&answer, "a dataset")?.rows {
                eprintln!(
                    "imported {rows} rows ({size} bytes in {:.1} s)",
                    bar.elapsed().as_secs_f64()
                );
            }
            print(&answer);
        }
        DatasetCommand::Mock {
            dataset,
            scenario,
            rows,
            seed,
            out,
        } => {
            let bytes = remote
                .client()?
                .mock_dataset(&scenario, &dataset, rows, seed)?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "wrote a mock of {dataset}: {rows} rows to {} (not real data)",
                out.display()
            );
        }
        DatasetCommand::Usage { id } => print(&remote.client()?.dataset_usage(&id)?),
        DatasetCommand::Sample { id, version, rows } => {
            let answer = remote.client()?.sample_dataset(&id, version, rows)?;
            let sample: tidegate_runtime::SampleView = decode(&answer, "a sample")?;
            // Values are the data's text: written out, never obeyed by the terminal.
            println!(
                "{}",
                tidegate_runtime::defuse(&sample.columns.join(" | "), 1 << 12)
            );
            for row in &sample.rows {
                println!("{}", tidegate_runtime::defuse(&row.join(" | "), 1 << 14));
            }
            eprintln!(
                "{} rows sampled from version {} of {} (inspection only; audited)",
                sample.rows.len(),
                sample.version,
                sample.dataset
            );
        }
        DatasetCommand::Seal {
            id,
            version,
            reason,
        } => print(
            &remote
                .client()?
                .dataset_custody(&id, version, "seal", &reason)?,
        ),
        DatasetCommand::Unseal {
            id,
            version,
            reason,
        } => print(
            &remote
                .client()?
                .dataset_custody(&id, version, "unseal", &reason)?,
        ),
        DatasetCommand::Destroy {
            id,
            version,
            reason,
        } => print(
            &remote
                .client()?
                .dataset_custody(&id, version, "destroy", &reason)?,
        ),
        DatasetCommand::List => print(&remote.client()?.list_datasets()?),
        DatasetCommand::Approve { id } => print(&remote.client()?.approve_dataset(&id)?),
        DatasetCommand::Budget { id, total, per_org } => {
            print(&remote.client()?.set_dataset_budget(&id, total, per_org)?)
        }
        DatasetCommand::Scan { file, json } => scan(&file, json)?,
    }
    Ok(())
}

fn scan(file: &Path, as_json: bool) -> Result<()> {
    let report = scan_report(file)?;
    if as_json {
        print(&report);
    } else {
        println!(
            "{:<24} {:<10} {:<28} {:>10}  why",
            "column", "type", "proposed tags", "confidence"
        );
        for r in &report {
            println!(
                "{:<24} {:<10} {:<28} {:>10}  {}",
                r.column,
                r.data_type.to_string(),
                if r.proposed_tags.is_empty() {
                    "-".to_string()
                } else {
                    r.proposed_tags.join(",")
                },
                r.confidence,
                r.why
            );
        }
    }
    Ok(())
}

/// The tags proposed for one column of a local file, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnScan {
    pub column: String,
    #[serde(rename = "type")]
    pub data_type: tidegate_policy::DataType,
    pub proposed_tags: Vec<String>,
    /// 0 to 1, to two decimals.
    pub confidence: f64,
    /// How many values were sampled.
    pub sampled: usize,
    pub why: &'static str,
}

/// Proposes tags for every column of a local file from a sample of up to 1,000 values.
pub fn scan_report(file: &Path) -> Result<Vec<ColumnScan>> {
    use std::collections::HashSet;
    let table = tidegate_runtime::local_table("scan", file)?;
    let tidegate_runtime::TableData::Memory(batches) = &table.data else {
        bail!("{} was not read into memory", file.display());
    };
    let mut report = Vec::new();
    for (i, column) in table.columns.iter().enumerate() {
        let mut values = Vec::new();
        let mut distinct = HashSet::new();
        let mut rows = 0usize;
        for b in batches {
            let a = b.column(i);
            rows += a.len();
            for r in 0..a.len() {
                if a.is_null(r) {
                    continue;
                }
                let v = arrow::util::display::array_value_to_string(a, r)?;
                if distinct.len() <= 1_000 {
                    distinct.insert(v.clone());
                }
                if values.len() < 1_000 {
                    values.push(v);
                }
            }
        }
        let p = tidegate_policy::propose_tag_for(&column.name, values.iter().map(String::as_str));
        let proposal =
            tidegate_policy::propose_column_tags(&p, &column.data_type, distinct.len(), rows);
        report.push(ColumnScan {
            column: column.name.clone(),
            data_type: column.data_type.clone(),
            proposed_tags: proposal.tags,
            confidence: (proposal.confidence * 100.0).round() / 100.0,
            sampled: p.sampled,
            why: proposal.why,
        });
    }
    Ok(report)
}

/// A `--column` spec, `NAME[:TYPE[:TAGS]]`, as the import declares it.
fn parse_column(spec: &str) -> Result<ColumnInput> {
    // NAME[:TYPE[:TAGS]]; a type with parentheses (`timestamptz(us, +08:00)`) may hold colons.
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    if name.is_empty() {
        return Err(anyhow!("`{spec}`: a column spec starts with its name"));
    }
    let (data_type, tags) = match (rest.find('('), rest.find(')')) {
        (Some(open), Some(close)) if open < close && !rest[..open].contains(':') => {
            let after = &rest[close + 1..];
            let tags = match after.strip_prefix(':') {
                Some(t) => Some(t),
                None if after.is_empty() => None,
                None => return Err(anyhow!("`{spec}`: NAME:TYPE:TAGS")),
            };
            (Some(&rest[..=close]), tags)
        }
        _ => {
            let mut parts = rest.splitn(2, ':');
            (parts.next(), parts.next())
        }
    };
    let data_type = data_type.filter(|t| !t.is_empty());
    let tags = match tags {
        Some(t) => tidegate_policy::parse_tags(t).map_err(|e| anyhow!(e))?,
        None => Vec::new(),
    };
    // The names users type (`string`, `integer`, `double`, `date`...) go as the canonical one.
    let data_type = data_type
        .map(|t| {
            t.parse::<tidegate_policy::DataType>()
                .map_err(|e| anyhow!(e))
        })
        .transpose()?;
    Ok(ColumnInput {
        name: name.to_string(),
        data_type,
        tags,
        mock: None,
    })
}

/// Reads a JSON object of mock metadata by column name into the import's columns (a column it
/// names that `--column` did not gets an entry of its own, with no type or tags).
fn add_mock_metadata(columns: &mut Vec<ColumnInput>, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let specs: std::collections::BTreeMap<String, tidegate_policy::MockSpec> =
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not mock metadata by column", path.display()))?;
    for (name, spec) in specs {
        match columns.iter_mut().find(|c| c.name == name) {
            Some(c) => c.mock = Some(spec),
            None => columns.push(ColumnInput {
                name,
                data_type: None,
                tags: Vec::new(),
                mock: Some(spec),
            }),
        }
    }
    Ok(())
}

fn guess_format(file: &Path) -> String {
    match file.extension().and_then(|e| e.to_str()) {
        Some("parquet") | Some("pq") => "parquet".into(),
        _ => "csv".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_column;
    use serde_json::json;

    #[test]
    fn a_column_spec_is_name_type_tags_and_a_type_may_hold_commas_and_colons() {
        let cases = [
            (
                "spot",
                json!({ "name": "spot", "data_type": null, "tags": [] }),
            ),
            (
                "spot::dimension",
                json!({ "name": "spot", "data_type": null, "tags": ["dimension"] }),
            ),
            (
                "spend:double:sensitive",
                json!({ "name": "spend", "data_type": "float64", "tags": ["sensitive"] }),
            ),
            (
                "price:decimal(12,2)",
                json!({ "name": "price", "data_type": "decimal(12,2)", "tags": [] }),
            ),
            (
                "paid_at:timestamptz(us, +08:00):quasi",
                json!({ "name": "paid_at", "data_type": "timestamptz(us, +08:00)", "tags": ["quasi"] }),
            ),
        ];
        for (spec, expected) in cases {
            let column = serde_json::to_value(parse_column(spec).unwrap()).unwrap();
            assert_eq!(column, expected, "{spec}");
        }
        for bad in [
            ":utf8",
            "at:timestamptz(us, +08:00)x",
            "price:decimal(40,2)",
            "x:money",
        ] {
            assert!(parse_column(bad).is_err(), "{bad}");
        }
    }
}
