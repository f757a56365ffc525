//! The gate's promise, checked on generated queries (R-GATE 3 and 7): over a small table with
//! one target subject, every cell an exact release lets out has at least k subjects and no
//! subject dominating any of its measures, computed here independently from the raw rows; and
//! under differential privacy, removing the target moves the bounded values the noise is added
//! to by no more than the sensitivity the noise is scaled to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use proptest::prelude::*;
use tidegate_policy::{
    CheckOutcome, ColumnSpec, ColumnTag, ContributionBounds, DataType as ColType, DominanceRule,
    Level, SensitiveType,
};
use tidegate_runtime::{EngineLimits, GateInput, TableData, TableInput, evaluate_gate, run_query};

const K: u64 = 3;
const GROUPS: [&str; 3] = ["a", "b", "c"];

/// A row of `v`: group, value, subject.
type Row = (usize, i64, String);

fn spec(name: &str, data_type: ColType, tags: Vec<ColumnTag>) -> ColumnSpec {
    ColumnSpec {
        name: name.into(),
        data_type,
        tags,
    }
}

/// `v(g, x, id)` and `w(g, y, id)` with subjects; `l(g, f)` a lookup without subjects, with
/// two rows for group `a` (a join with it repeats rows).
fn tables(v: &[Row], w: &[Row]) -> Vec<TableInput> {
    let with_subjects = |name: &str, value: &str, rows: &[Row]| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, false),
            Field::new(value, DataType::Int64, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("__tg_entity", DataType::Utf8, false),
        ]));
        let g = StringArray::from_iter_values(rows.iter().map(|r| GROUPS[r.0]));
        let x = Int64Array::from_iter_values(rows.iter().map(|r| r.1));
        let id = StringArray::from_iter_values(rows.iter().map(|r| r.2.clone()));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(g), Arc::new(x), Arc::new(id.clone()), Arc::new(id)],
        )
        .unwrap();
        TableInput {
            name: name.into(),
            columns: vec![
                spec("g", ColType::Utf8, vec![ColumnTag::Dimension]),
                spec(value, ColType::Int64, vec![ColumnTag::Sensitive]),
                spec(
                    "id",
                    ColType::Utf8,
                    vec![ColumnTag::Pii(SensitiveType::ResidentId), ColumnTag::Entity],
                ),
            ],
            data: TableData::Memory(vec![batch]),
        }
    };
    let lookup = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8, false),
            Field::new("f", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a", "a", "b", "c"])),
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
        ],
    )
    .unwrap();
    vec![
        with_subjects("v", "x", v),
        with_subjects("w", "y", w),
        TableInput {
            name: "l".into(),
            columns: vec![
                spec("g", ColType::Utf8, vec![ColumnTag::Dimension]),
                spec("f", ColType::Int64, vec![]),
            ],
            data: TableData::Memory(vec![lookup]),
        },
    ]
}

/// The generated query's parts, evaluated here as well as by the platform.
#[derive(Debug, Clone, Copy)]
struct Query {
    /// 0: v; 1: v joined to the lookup; 2: v cross w; 3: v joined to w on the group.
    from: usize,
    /// 0: x; 1: x + 1000; 2: x * 3; 3: CASE WHEN g = 'a' THEN x ELSE 7 END; 4: x - 500.
    expr: usize,
    /// 0: count(*); 1: sum; 2: avg.
    agg: usize,
    /// Keep only rows with x > 10.
    filter: bool,
}

impl Query {
    fn sql(&self) -> String {
        let from = [
            "v",
            "v JOIN l ON v.g = l.g",
            "v CROSS JOIN w",
            "v JOIN w ON v.g = w.g",
        ][self.from];
        let expr = [
            "v.x",
            "v.x + 1000",
            "v.x * 3",
            "CASE WHEN v.g = 'a' THEN v.x ELSE 7 END",
            "v.x - 500",
        ][self.expr];
        let agg = match self.agg {
            0 => "count(*)".to_string(),
            1 => format!("sum({expr})"),
            _ => format!("avg({expr})"),
        };
        let filter = if self.filter { "WHERE v.x > 10" } else { "" };
        format!("SELECT v.g AS g, {agg} AS m FROM {from} {filter} GROUP BY v.g")
    }

    fn value(&self, group: usize, x: i64) -> f64 {
        (match self.expr {
            0 => x,
            1 => x + 1000,
            2 => x * 3,
            3 if group == 0 => x,
            3 => 7,
            _ => x - 500,
        }) as f64
    }

    /// The rows the query aggregates: group, v's value, the subjects of the row.
    fn rows(&self, v: &[Row], w: &[Row]) -> Vec<(usize, i64, Vec<String>)> {
        let lookup_rows = |g: usize| if g == 0 { 2 } else { 1 };
        let mut out = Vec::new();
        for r in v.iter().filter(|r| !self.filter || r.1 > 10) {
            match self.from {
                0 => out.push((r.0, r.1, vec![r.2.clone()])),
                1 => {
                    for _ in 0..lookup_rows(r.0) {
                        out.push((r.0, r.1, vec![r.2.clone()]));
                    }
                }
                _ => {
                    for s in w.iter().filter(|s| self.from == 2 || s.0 == r.0) {
                        out.push((r.0, r.1, vec![r.2.clone(), s.2.clone()]));
                    }
                }
            }
        }
        out
    }
}

/// Whether a cell's measure fails dominance: `parts` per subject, `total` over rows.
fn dominated(parts: &BTreeMap<String, f64>, total: f64) -> bool {
    let mut top: Vec<f64> = parts.values().copied().collect();
    top.sort_by(|a, b| b.total_cmp(a));
    DominanceRule::default().dominated(total, &top)
}

fn data() -> impl Strategy<Value = (Vec<Row>, Vec<Row>)> {
    // Subjects s0..s7 and the target t, who sometimes spends a fortune.
    let row = (0..3usize, 0..100i64, 0..9usize);
    (
        proptest::collection::vec(row.clone(), 10..40),
        proptest::collection::vec(row, 3..10),
        any::<bool>(),
    )
        .prop_map(|(v, w, rich)| {
            let name = |s: usize| {
                if s == 8 {
                    "t".to_string()
                } else {
                    format!("s{s}")
                }
            };
            let v = v
                .into_iter()
                .map(|(g, x, s)| (g, if s == 8 && rich { x * 10_000 } else { x }, name(s)))
                .collect();
            let w = w.into_iter().map(|(g, x, s)| (g, x, name(s))).collect();
            (v, w)
        })
}

fn query() -> impl Strategy<Value = Query> {
    (0..4usize, 0..5usize, 0..3usize, any::<bool>()).prop_map(|(from, expr, agg, filter)| Query {
        from,
        expr,
        agg,
        filter,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_cell_an_exact_release_lets_out_has_k_subjects_none_dominant(
        (v, w) in data(),
        q in query(),
    ) {
        let limits = EngineLimits { level: Level::L2, ..EngineLimits::default() };
        let output = runtime().block_on(run_query(&q.sql(), &tables(&v, &w), vec![], limits));
        let output = match output {
            Ok(o) => o,
            Err(e) => panic!("{}: {e}", q.sql()),
        };
        let masking = BTreeMap::new();
        let gate = evaluate_gate(
            &GateInput {
                level: Level::L2,
                threshold_k: K,
                shape: &output.shape,
                provenance: CheckOutcome::Pass("generated".into()),
                max_rows: 1000,
                max_bytes: 1 << 20,
                masking: &masking,
                privacy: None,
                earlier: &[],
                pseudonyms: None,
                dominance: DominanceRule::default(),
                memory: None,
            },
            &output.batches,
        )
        .unwrap();
        let rows = q.rows(&v, &w);
        for b in &gate.released {
            let g = b.column_by_name("g").unwrap().as_string::<i32>();
            for i in 0..b.num_rows() {
                let group = GROUPS.iter().position(|x| *x == g.value(i)).unwrap();
                let cell: Vec<_> = rows.iter().filter(|r| r.0 == group).collect();
                let subjects: BTreeSet<&String> = cell.iter().flat_map(|r| &r.2).collect();
                prop_assert!(subjects.len() as u64 >= K, "{}: group {group} released with {} subjects", q.sql(), subjects.len());
                // Each measure: rows for a count, the value and v's column for a sum.
                let mut measures: Vec<Box<dyn Fn(usize, i64) -> f64>> = Vec::new();
                if q.agg == 0 {
                    measures.push(Box::new(|_, _| 1.0));
                } else {
                    measures.push(Box::new(|g, x| q.value(g, x).abs()));
                    measures.push(Box::new(|_, x| (x as f64).abs()));
                }
                for m in &measures {
                    let mut parts: BTreeMap<String, f64> = BTreeMap::new();
                    let mut total = 0.0;
                    for r in &cell {
                        let value = m(r.0, r.1);
                        total += value;
                        for s in r.2.iter().collect::<BTreeSet<_>>() {
                            *parts.entry(s.clone()).or_default() += value;
                        }
                    }
                    prop_assert!(!dominated(&parts, total), "{}: group {group} released though dominated: {parts:?} of {total}", q.sql());
                }
            }
        }
    }

    #[test]
    fn removing_the_target_moves_the_bounded_values_by_at_most_the_sensitivity(
        (v, w) in data(),
        q in query(),
    ) {
        let bounds = ContributionBounds { sum_bound: Some(50.0), count_bound: 2, max_groups: 1 };
        let limits = EngineLimits { level: Level::L2, privacy: Some(bounds), ..EngineLimits::default() };
        let bounded = |rows: &[Row]| {
            runtime()
                .block_on(run_query(&q.sql(), &tables(rows, &w), vec![], limits.clone()))
                .map(|o| {
                    let mut by_group = BTreeMap::new();
                    for b in &o.batches {
                        let g = b.column_by_name("g").unwrap().as_string::<i32>();
                        let m = arrow::compute::cast(b.column_by_name("__tg_dp_0").unwrap(), &DataType::Float64).unwrap();
                        let m: &Float64Array = m.as_primitive::<Float64Type>();
                        for i in 0..b.num_rows() {
                            by_group.insert(g.value(i).to_string(), m.value(i));
                        }
                    }
                    by_group
                })
        };
        let with = bounded(&v);
        if q.from >= 2 {
            // Rows of two tables with subjects cannot be bounded: refused before running.
            let refused = matches!(&with, Err(tidegate_runtime::Error::Refused(r)) if r.contains("one subject only"));
            prop_assert!(refused, "{}: {with:?}", q.sql());
            return Ok(());
        }
        let with = with.unwrap();
        let without: Vec<Row> = v.iter().filter(|r| r.2 != "t").cloned().collect();
        let without = bounded(&without).unwrap();
        let sensitivity = if q.agg == 0 { 2.0 } else { 50.0 };
        let moved: f64 = GROUPS
            .iter()
            .map(|g| (with.get(*g).copied().unwrap_or(0.0) - without.get(*g).copied().unwrap_or(0.0)).abs())
            .sum();
        prop_assert!(moved <= sensitivity + 1e-9, "{}: the target moved the bounded values by {moved}", q.sql());
    }
}
