//! What a job's result reveals, computed from its plan (R-GATE 2, 3 and 7): the lineage of
//! every column through every operator, the privacy units of every row, and the plans that
//! give each subject's contribution to each released cell.
//!
//! The analysis walks the logical plan the SQL planner built, not the query text. Every scan of
//! a granted table with subjects gets the table's entity key as a hidden *unit* column
//! (`__tg_u*`) and each numeric column as a hidden *source* (`__tg_s*`); the rewrite carries
//! them through every projection, join, union and alias up to the one aggregate, so a row
//! belongs to every subject of every table it was made from. Tags come from the granted
//! columns a value is computed from, never from a column's name or qualifier; the user's SQL
//! cannot name `__tg*` columns (refused before this runs), so nothing of the user's can pose
//! as a unit. What a release may contain is an allow-list (see `tidegate_policy::release`):
//! everything else is refused, with the operator or column named.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::functions_aggregate::{count::count_udaf, sum::sum_udaf};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias, Union,
};
use datafusion::prelude::{cast, lit};
use tidegate_policy::{
    BoundedAggregate, ColumnTag, ContributionBounds, DatasetRows, Level, Lineage, PrivacyShape,
    QueryShape, Released, SubjectSet, releasable_aggregate, releasable_group_key,
};

use crate::error::{Error, Result};
use crate::hidden::{
    self, ARGUMENT_PREFIX, BRANCH, FILTER_PREFIX, GROUP_KEY_PREFIX, PART_PREFIX, ROW_PREFIX, ROWS,
    SIGNED_PREFIX, SOURCE_PREFIX, STORED_PREFIX, SUBJECT, TOTAL_PREFIX, UNIT_OF_PREFIX,
    UNIT_PREFIX, is_reserved,
};
use crate::tables::TableInput;

mod parts;
pub(crate) use parts::{Builder, Lane, Room, RowSpill, Share};

/// Bits of a row's measures: the cell and at most 31 counts and sums.
const MAX_MEASURES: usize = 32;
/// A row element's mask keeps its table above this bit (the measures below it).
const TABLE_SHIFT: u32 = 48;
/// The most tables a release's rows may be read from (the tally's records keep a row's table
/// in eight bits): a query that reads more is refused before it runs.
const MAX_TABLES: usize = 256;
/// The unit of a row whose entity key is NULL: all such rows are one subject.
const NULL_KEY: &str = "\u{0}null";

/// What the dominance rules check per cell: an aggregate's own value (rows for a count), or
/// one numeric column it reads (so an offset added to every row hides nothing).
#[derive(Debug, Clone)]
pub(crate) struct Measure {
    /// The hidden result column with the cell's total.
    pub total: String,
    /// The contribution column with one subject's part.
    pub part: String,
    /// It counts rows (bounded by the count bound under differential privacy, not the sum
    /// bound).
    pub count: bool,
    /// For a sum: the same sum above its cell's smallest value, per subject `part - n *
    /// min` (hidden result columns of the cell's minimum and count, and the subject's count).
    /// An indicator spelled 2-or-1, or with an offset, is then the one subject's it is.
    pub above_minimum: Option<AboveMinimum>,
}

/// The hidden columns of a sum measured above its cell's minimum.
#[derive(Debug, Clone)]
pub(crate) struct AboveMinimum {
    pub min_total: String,
    pub n_total: String,
    pub n_part: String,
}

/// One aggregate as differential privacy bounds it: its signed part per subject.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub kind: Released,
    pub column: String,
}

/// The analysis of a job's plan.
pub(crate) struct Analysis {
    /// The plan to run: the query, with the hidden columns the gate reads.
    pub plan: LogicalPlan,
    /// Each subject's contribution to each cell: grouped by the hidden keys and the subject.
    pub contributions: Option<Contributions>,
    pub measures: Vec<Measure>,
    /// Per aggregate (by position), its signed part, when bounded for differential privacy.
    pub signed: Vec<Option<Signed>>,
    pub shape: QueryShape,
    /// The bits of a row element's mask that mark a sum's rows (a value, not a count).
    pub value_bits: u64,
}

/// The gate's per-subject plan: the input's rows, each with its subject (`input`), grouped by
/// the cell's keys and the subject (`by`) into each subject's parts (`aggregates`). The job
/// runs `input` once and aggregates its rows a group of subjects at a time
/// ([`crate::spill`]), so that no pool must hold every subject at once.
#[derive(Debug, Clone)]
pub(crate) struct Contributions {
    /// The query's rows below its aggregate, with what the query's aggregate and the gate
    /// read of each: computed once, read by both (the analysis's plan and `input` read it as
    /// the table [`hidden::SHARED`]).
    pub shared: LogicalPlan,
    pub input: LogicalPlan,
    pub by: Vec<Expr>,
    pub aggregates: Vec<Expr>,
    /// Each aggregate's column name and how it is computed, in the same order.
    parts: Vec<(String, PartExpr)>,
    /// A column of the input that is another's (the same expression), by its name: `input`
    /// carries that one only.
    same: HashMap<String, String>,
}

impl Contributions {
    /// The name of the input's column that carries the shared input's column `name`.
    pub(crate) fn carrier<'a>(&'a self, name: &'a str) -> &'a str {
        self.same.get(name).map_or(name, String::as_str)
    }

    /// The aggregation over `rows` (the input's rows, from wherever they were kept).
    pub(crate) fn over(&self, rows: LogicalPlan) -> Result<LogicalPlan> {
        LogicalPlanBuilder::from(rows)
            .aggregate(self.by.clone(), self.aggregates.clone())
            .map_err(internal)?
            .build()
            .map_err(internal)
    }
}

/// An expression without its alias.
fn unaliased(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    }
}

/// The functions of a job that are modules' (approved), by name.
pub(crate) struct Context<'a> {
    pub tables: &'a [TableInput],
    pub level: Level,
    pub privacy: Option<ContributionBounds>,
}

/// Analyses `plan`. Over L2 or L3 data a plan outside the allow-list is refused here, before
/// it runs, with the reason; over L1 data it runs as written and its result is not an
/// aggregate the gate vouches for.
pub(crate) fn analyze(plan: LogicalPlan, cx: &Context<'_>) -> Result<Analysis> {
    let protected = cx.level > Level::L1;
    let mut walk = Walk {
        tables: cx.tables,
        next: 0,
        strict: protected,
    };
    let outcome = no_subqueries(&plan)
        .and_then(|()| walk.release(plan.clone(), cx.privacy))
        .and_then(|a| releasable_types(&a.plan).map(|()| a));
    match outcome {
        Ok(a) => Ok(a),
        Err(Error::Refused(reason)) if protected => Err(Error::Refused(format!(
            "{reason}. A job over {} data must be one grouped aggregate the export gate can check; nothing else runs",
            cx.level
        ))),
        Err(Error::Refused(reason)) => Ok(Analysis {
            plan,
            contributions: None,
            measures: Vec::new(),
            signed: Vec::new(),
            value_bits: 0,
            shape: QueryShape {
                aggregated: false,
                not_aggregated_reason: Some(reason),
                ..QueryShape::default()
            },
        }),
        Err(e) => Err(e),
    }
}

/// A release carries numbers, text, truth values, dates and times: a nested value (a struct,
/// a list, a map) or a binary one has no column in the released file and no scan for
/// identifiers.
fn releasable_types(plan: &LogicalPlan) -> Result<()> {
    use arrow::datatypes::DataType as T;
    for f in plan.schema().fields() {
        if is_reserved(f.name()) {
            continue;
        }
        let ok = f.data_type().is_numeric()
            || matches!(
                f.data_type(),
                T::Boolean
                    | T::Utf8
                    | T::LargeUtf8
                    | T::Utf8View
                    | T::Date32
                    | T::Date64
                    | T::Timestamp(..)
                    | T::Time32(_)
                    | T::Time64(_)
                    | T::Null
            );
        if !ok {
            return refuse(format!(
                "column `{}` is of type {}; a release carries numbers, text, truth values, dates and times only",
                f.name(),
                f.data_type()
            ));
        }
    }
    Ok(())
}

fn refuse<T>(reason: impl Into<String>) -> Result<T> {
    Err(Error::Refused(reason.into()))
}

fn internal(e: datafusion::error::DataFusionError) -> Error {
    Error::Internal(format!("plan analysis: {e}"))
}

/// Subqueries inside expressions (IN, EXISTS, scalar subqueries) read data outside the flow
/// the analysis follows: refused anywhere in the plan.
fn no_subqueries(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            e.apply(|sub| {
                if matches!(
                    sub,
                    Expr::ScalarSubquery(_)
                        | Expr::InSubquery(_)
                        | Expr::Exists(_)
                        | Expr::OuterReferenceColumn(..)
                ) {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })
    .map_err(internal)?;
    if found {
        return refuse(
            "a subquery inside an expression (IN, EXISTS or a scalar subquery) is not allowed; join the tables instead",
        );
    }
    Ok(())
}

/// A hidden column the rewrite carries up from a scan.
#[derive(Debug, Clone)]
struct Carried {
    name: String,
    unit: bool,
    /// A scan's row identities (for the gate's memory).
    row: bool,
    /// The scan it comes from (a unit and the rows of one scan share it).
    scan: usize,
    /// The granted table that scan reads (its index among the job's tables).
    table: usize,
}

/// A rewritten plan below the aggregate: each output column's lineage, and the hidden
/// columns it carries.
struct Node {
    plan: LogicalPlan,
    columns: Vec<Lineage>,
    carried: Vec<Carried>,
}

impl Node {
    fn column(&self, name: &str) -> Result<Expr> {
        column_named(self.plan.schema(), name)
    }
}

fn column_named(schema: &DFSchema, name: &str) -> Result<Expr> {
    schema
        .iter()
        .find(|(_, f)| f.name() == name)
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .ok_or_else(|| Error::Internal(format!("plan analysis: hidden column {name} lost")))
}

struct Walk<'a> {
    tables: &'a [TableInput],
    next: usize,
    /// Over L2 or L3 data: the release rules refuse. Over L1 data they only say what the
    /// gate can vouch for.
    strict: bool,
}

/// The name of a plan operator, as a refusal names it.
fn operator(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Join(j) => format!("{} join", j.join_type).to_lowercase(),
        LogicalPlan::Distinct(_) => "DISTINCT".into(),
        LogicalPlan::Window(_) => "window function".into(),
        LogicalPlan::Aggregate(_) => "second aggregate".into(),
        LogicalPlan::Unnest(_) => "unnest".into(),
        LogicalPlan::Union(_) => "UNION (without ALL)".into(),
        other => other
            .display()
            .to_string()
            .split([':', ' '])
            .next()
            .unwrap_or("query")
            .to_string(),
    }
}

impl Walk<'_> {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    /// The lineage of an expression over an input with these columns.
    fn lineage(&self, e: &Expr, schema: &DFSchema, columns: &[Lineage]) -> Result<Lineage> {
        Ok(match e {
            Expr::Column(c) => {
                let at = schema.index_of_column(c).map_err(internal)?;
                columns[at].clone()
            }
            Expr::Alias(a) => self.lineage(&a.expr, schema, columns)?,
            Expr::IsNull(e) | Expr::IsNotNull(e) => {
                Lineage::presence(&self.lineage(e, schema, columns)?)
            }
            Expr::Literal(..) | Expr::Placeholder(_) | Expr::ScalarVariable(..) => {
                Lineage::constant()
            }
            Expr::ScalarFunction(f) => {
                let parts = f
                    .args
                    .iter()
                    .map(|a| self.lineage(a, schema, columns))
                    .collect::<Result<Vec<_>>>()?;
                if crate::sandbox::is_guest_scalar(&f.func) {
                    Lineage::through_module(&parts)
                } else {
                    Lineage::combine(&parts)
                }
            }
            Expr::AggregateFunction(_) | Expr::WindowFunction(_) => {
                return refuse(format!(
                    "`{}` is an aggregate or window function where a row value is expected",
                    e.schema_name()
                ));
            }
            other => {
                let mut parts = Vec::new();
                let mut failed = None;
                other
                    .apply_children(|child| {
                        match self.lineage(child, schema, columns) {
                            Ok(l) => parts.push(l),
                            Err(e) => {
                                failed = Some(e);
                                return Ok(TreeNodeRecursion::Stop);
                            }
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })
                    .map_err(internal)?;
                if let Some(e) = failed {
                    return Err(e);
                }
                Lineage::combine(&parts)
            }
        })
    }

    /// The whole query: the steps above the aggregate, the aggregate, and below it.
    fn release(
        &mut self,
        plan: LogicalPlan,
        privacy: Option<ContributionBounds>,
    ) -> Result<Analysis> {
        match plan {
            LogicalPlan::Aggregate(agg) => self.aggregate(agg, privacy),
            LogicalPlan::Projection(p) => {
                let mut a = self.release(p.input.as_ref().clone(), privacy)?;
                if let Some(shape) = a.shape.privacy.as_mut() {
                    follow_projection(&mut shape.aggregates, &p.expr);
                }
                let input = a.plan;
                let mut exprs = p.expr.clone();
                // The runtime's hidden columns ride along every projection above the aggregate.
                for (q, f) in input.schema().iter() {
                    if is_reserved(f.name()) {
                        exprs.push(Expr::Column(Column::new(q.cloned(), f.name())));
                    }
                }
                a.plan = LogicalPlan::Projection(
                    Projection::try_new(exprs, Arc::new(input)).map_err(internal)?,
                );
                Ok(a)
            }
            node @ (LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)) => {
                let child = node.inputs()[0].clone();
                let mut a = self.release(child, privacy)?;
                if let Some(shape) = a.shape.privacy.as_mut() {
                    let step = match &node {
                        LogicalPlan::Filter(_) => "filter",
                        LogicalPlan::Sort(s) if s.fetch.is_some() => "limit",
                        LogicalPlan::Sort(_) => "sort",
                        LogicalPlan::Limit(_) => "limit",
                        _ => "alias",
                    };
                    shape.after_aggregate.push(step.to_string());
                }
                a.plan = rebuild(&node, vec![a.plan])?;
                Ok(a)
            }
            other => {
                let has_aggregate = {
                    let mut found = false;
                    other
                        .apply(|n| {
                            found |= matches!(n, LogicalPlan::Aggregate(_));
                            Ok(if found {
                                TreeNodeRecursion::Stop
                            } else {
                                TreeNodeRecursion::Continue
                            })
                        })
                        .map_err(internal)?;
                    found
                };
                if has_aggregate {
                    refuse(format!(
                        "a {} step follows the aggregate; allowed above it: {}",
                        operator(&other),
                        tidegate_policy::OPERATORS_ABOVE_AGGREGATE.join(", ")
                    ))
                } else {
                    refuse("the query has no GROUP BY aggregate")
                }
            }
        }
    }

    fn aggregate(
        &mut self,
        agg: datafusion::logical_expr::Aggregate,
        privacy: Option<ContributionBounds>,
    ) -> Result<Analysis> {
        let input = self.below(agg.input.as_ref().clone())?;
        let units: Vec<&Carried> = input.carried.iter().filter(|c| c.unit).collect();
        if units.is_empty() {
            return refuse(
                "the aggregate reads no table with subjects, so the gate cannot count them",
            );
        }
        if agg
            .group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        {
            return refuse(
                "GROUPING SETS, ROLLUP and CUBE are not allowed: their totals could reveal a suppressed cell; run one query per grouping",
            );
        }
        let schema = input.plan.schema().clone();
        let mut shape = QueryShape {
            aggregated: true,
            ..QueryShape::default()
        };
        for g in &agg.group_expr {
            let shown = match g {
                Expr::Column(c) => c.name.clone(),
                other => other.schema_name().to_string(),
            };
            let lineage = self.lineage(g, &schema, &input.columns)?;
            let tags = match releasable_group_key(&lineage, &shown) {
                Ok(()) => Some(vec![ColumnTag::Dimension]),
                Err(reason) if self.strict => return refuse(reason),
                Err(_) => None,
            };
            shape.group_keys.push((shown, tags));
        }
        // Each aggregate: what it is, its argument and filter, and what the gate measures.
        struct Part {
            /// None: not releasable (over L1 data only); nothing is measured.
            kind: Option<Released>,
            argument: Expr,
            filter: Option<Expr>,
            sources: BTreeSet<usize>,
        }
        let mut parts = Vec::new();
        for a in &agg.aggr_expr {
            let inner = match a {
                Expr::Alias(al) => al.expr.as_ref(),
                e => e,
            };
            let Expr::AggregateFunction(f) = inner else {
                return refuse(format!(
                    "`{}` is not an aggregate function",
                    inner.schema_name()
                ));
            };
            let (identity, module) = aggregate_identity(&f.func);
            let args = f
                .params
                .args
                .iter()
                .map(|x| self.lineage(x, &schema, &input.columns))
                .collect::<Result<Vec<_>>>()?;
            let argument = Lineage::combine(&args);
            let argument = match args.as_slice() {
                [one] => Lineage {
                    entity: one.entity,
                    ..argument
                },
                _ => argument,
            };
            let filter = match &f.params.filter {
                Some(x) => Some(self.lineage(x, &schema, &input.columns)?),
                None => None,
            };
            if !f.params.order_by.is_empty() {
                return refuse(format!(
                    "`{}`: ORDER BY inside an aggregate is not allowed",
                    inner.schema_name()
                ));
            }
            let kind = match releasable_aggregate(
                &identity,
                module,
                f.params.distinct,
                f.params.args.len(),
                &argument,
                filter.as_ref(),
                &inner.schema_name().to_string(),
            ) {
                Ok(kind) => Some(kind),
                Err(reason) if self.strict => return refuse(reason),
                Err(_) => None,
            };
            shape.aggregates.push(identity);
            parts.push(Part {
                kind,
                argument: f.params.args.first().cloned().unwrap_or_else(|| lit(1i64)),
                filter: f.params.filter.as_deref().cloned(),
                sources: argument.sources,
            });
        }

        // The measures: per aggregate, its value (rows for a count), and each numeric column
        // it reads; the cell totals ride in the query's own aggregate.
        let with_filter = |func, arg: Expr, filter: &Option<Expr>| {
            Expr::AggregateFunction(AggregateFunction::new_udf(
                func,
                vec![arg],
                false,
                filter.clone().map(Box::new),
                vec![],
                None,
            ))
        };
        let as_double = |e: Expr| cast(e, arrow::datatypes::DataType::Float64);
        // The cells' totals are computed over the shared input (below): each aggregate's
        // argument and filter, each unit and source is a column of it.
        let shared = |name: String| Expr::Column(Column::from_name(name));
        let argument = |j: usize| shared(format!("{ARGUMENT_PREFIX}{j}"));
        let filter = |j: usize| {
            parts[j]
                .filter
                .as_ref()
                .map(|_| shared(format!("{FILTER_PREFIX}{j}")))
        };
        // A row belongs to a subject when one of its units is set; rows of constants (a VALUES
        // list, a lookup table) belong to nobody and count in no cell's total.
        let has_subject = units
            .iter()
            .map(|u| shared(u.name.clone()).is_not_null())
            .reduce(Expr::or)
            .expect("at least one unit");
        let of_subjects = |filter: &Option<Expr>| {
            Some(match filter {
                Some(f) => f.clone().and(has_subject.clone()),
                None => has_subject.clone(),
            })
        };
        let mut measures = Vec::new();
        let mut totals = Vec::new();
        // (part column, expression over the per-unit projection), built below.
        let mut part_exprs: Vec<(String, PartExpr)> = Vec::new();
        let mut signed = Vec::new();
        // Every cell: each subject's rows. One subject in nearly every row of a cell (a crowd
        // joined to it) dominates it, whatever the aggregates.
        let rows_total = format!("{TOTAL_PREFIX}rows");
        totals.push(with_filter(count_udaf(), lit(1i64), &of_subjects(&None)).alias(&rows_total));
        part_exprs.push((format!("{PART_PREFIX}rows"), PartExpr::Rows));
        measures.push(Measure {
            total: rows_total,
            part: format!("{PART_PREFIX}rows"),
            count: true,
            above_minimum: None,
        });
        for (j, p) in parts.iter().enumerate() {
            // Signed sums, per subject and per cell: a subject's rows that cancel one another
            // (a negated copy of everyone but one) leave the cell to the one.
            let value = match p.kind {
                None => None,
                // Each subject counted once: its part is 1 where its rows pass the FILTER.
                Some(Released::CountSubjects) => Some((
                    Expr::AggregateFunction(AggregateFunction::new_udf(
                        count_udaf(),
                        vec![argument(j)],
                        true,
                        of_subjects(&filter(j)).map(Box::new),
                        vec![],
                        None,
                    )),
                    PartExpr::Subjects(j),
                )),
                Some(Released::Count) => Some((
                    with_filter(count_udaf(), argument(j), &of_subjects(&filter(j))),
                    PartExpr::Count(j),
                )),
                Some(Released::Sum) => Some((
                    with_filter(sum_udaf(), as_double(argument(j)), &of_subjects(&filter(j))),
                    PartExpr::Sum(j),
                )),
            };
            if let Some((total, part)) = value {
                let (t, c) = (format!("{TOTAL_PREFIX}{j}"), format!("{PART_PREFIX}{j}"));
                totals.push(total.alias(&t));
                part_exprs.push((c.clone(), part));
                measures.push(Measure {
                    total: t.clone(),
                    part: c.clone(),
                    count: matches!(part, PartExpr::Count(_) | PartExpr::Subjects(_)),
                    above_minimum: None,
                });
                if matches!(part, PartExpr::Sum(_)) {
                    let above = AboveMinimum {
                        min_total: format!("{TOTAL_PREFIX}{j}_min"),
                        n_total: format!("{TOTAL_PREFIX}{j}_n"),
                        n_part: format!("{PART_PREFIX}{j}_n"),
                    };
                    totals.push(
                        with_filter(
                            datafusion::functions_aggregate::min_max::min_udaf(),
                            as_double(argument(j)),
                            &of_subjects(&filter(j)),
                        )
                        .alias(&above.min_total),
                    );
                    totals.push(
                        with_filter(count_udaf(), argument(j), &of_subjects(&filter(j)))
                            .alias(&above.n_total),
                    );
                    part_exprs.push((above.n_part.clone(), PartExpr::Count(j)));
                    measures.push(Measure {
                        total: t,
                        part: c,
                        count: false,
                        above_minimum: Some(above),
                    });
                }
            }
            if p.kind == Some(Released::Sum) {
                for n in &p.sources {
                    let source = shared(format!("{SOURCE_PREFIX}{n}"));
                    let (t, c) = (
                        format!("{TOTAL_PREFIX}{j}_{n}"),
                        format!("{PART_PREFIX}{j}_{n}"),
                    );
                    totals
                        .push(with_filter(sum_udaf(), source, &of_subjects(&filter(j))).alias(&t));
                    part_exprs.push((c.clone(), PartExpr::Source(j, *n)));
                    measures.push(Measure {
                        total: t,
                        part: c,
                        count: false,
                        above_minimum: None,
                    });
                }
            }
            signed.push(match (privacy, p.kind) {
                (Some(_), Some(kind @ (Released::Count | Released::Sum))) => {
                    let c = format!("{SIGNED_PREFIX}{j}");
                    part_exprs.push((
                        c.clone(),
                        match kind {
                            Released::Count => PartExpr::Count(j),
                            _ => PartExpr::Sum(j),
                        },
                    ));
                    Some(Signed { kind, column: c })
                }
                _ => None,
            });
        }

        // The contributions: the input projected once to the keys, the arguments, filters and
        // sources and every unit; with several units each row is repeated once per unit (a
        // cross join with their indices), so a row of a join belongs to the subject of every
        // table it came from; grouped by key and subject.
        let several_units = units.len() > 1;
        let sources: BTreeSet<usize> = parts.iter().flat_map(|p| p.sources.clone()).collect();
        let mut exprs = Vec::new();
        let mut carried = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            let name = format!("{GROUP_KEY_PREFIX}{i}");
            exprs.push(g.clone().alias(&name));
            carried.push(name);
        }
        for (j, p) in parts.iter().enumerate() {
            exprs.push(p.argument.clone().alias(format!("{ARGUMENT_PREFIX}{j}")));
            carried.push(format!("{ARGUMENT_PREFIX}{j}"));
            if let Some(f) = &p.filter {
                exprs.push(f.clone().alias(format!("{FILTER_PREFIX}{j}")));
                carried.push(format!("{FILTER_PREFIX}{j}"));
            }
        }
        for n in &sources {
            let name = format!("{SOURCE_PREFIX}{n}");
            exprs.push(input.column(&name)?.alias(&name));
            carried.push(name);
        }
        for unit in &units {
            exprs.push(input.column(&unit.name)?.alias(&unit.name));
        }
        let rows: Vec<&Carried> = input.carried.iter().filter(|c| c.row).collect();
        for row in &rows {
            exprs.push(input.column(&row.name)?.alias(&row.name));
        }
        // Each contribution row's stored row is the one its subject's own scan read, and it
        // belongs to that scan's table: a row of a join is each side's stored row in each
        // side's memory, as a plain query over either table names it.
        let row_of = |unit: &Carried| -> Expr {
            match rows.iter().find(|r| r.scan == unit.scan) {
                Some(r) => cast(
                    Expr::Column(Column::from_name(&r.name)),
                    arrow::datatypes::DataType::UInt64,
                ),
                None => lit(ScalarValue::UInt64(None)),
            }
        };
        // An aggregate's further arguments (a module's aggregate of several columns): the
        // query's aggregate reads them from the shared input too.
        let mut further: Vec<Vec<Expr>> = Vec::new();
        for (j, a) in agg.aggr_expr.iter().enumerate() {
            let mut names = Vec::new();
            if let Expr::AggregateFunction(f) = unaliased(a) {
                for (k, x) in f.params.args.iter().enumerate().skip(1) {
                    // A constant stays one (some aggregates take only a literal there).
                    if matches!(x, Expr::Literal(..)) {
                        names.push(x.clone());
                        continue;
                    }
                    let name = format!("{ARGUMENT_PREFIX}{j}_{k}");
                    exprs.push(x.clone().alias(&name));
                    names.push(shared(name));
                }
            }
            further.push(names);
        }
        // The shared input: the query's rows below its aggregate, each with everything the
        // query's aggregate and the gate read of it. The job computes it once and hands each
        // batch to both (`crate::tee`): one scan, one call of each module function per row.
        // An expression named twice (`sum(f(x)), avg(f(x))`, a key also summed) is computed
        // once: module functions are volatile to the engine, which never merges two calls.
        let mut once: Vec<(Expr, String)> = Vec::new();
        let mut named = Vec::new();
        // The gate's rows carry such a column once too (the spill writes it once), unless it
        // is a group's key (the tally reads every key by its name).
        let mut same: HashMap<String, String> = HashMap::new();
        for e in exprs {
            let Expr::Alias(a) = e else {
                return Err(Error::Internal(
                    "plan analysis: a shared column unnamed".into(),
                ));
            };
            let first = once.iter().find(|(x, _)| x == a.expr.as_ref());
            named.push(match first {
                Some((_, first)) => {
                    if !a.name.starts_with(GROUP_KEY_PREFIX)
                        && carried.contains(&a.name)
                        && carried.contains(first)
                    {
                        same.insert(a.name.clone(), first.clone());
                    }
                    shared(first.clone()).alias(&a.name)
                }
                None => {
                    once.push((*a.expr, a.name.clone()));
                    shared(a.name)
                }
            });
        }
        carried.retain(|c| !same.contains_key(c));
        let shared_input = LogicalPlanBuilder::from(input.plan.clone())
            .project(once.into_iter().map(|(x, name)| x.alias(name)))
            .map_err(internal)?
            .project(named)
            .map_err(internal)?
            .build()
            .map_err(internal)?;
        let shared_schema = Arc::new(shared_input.schema().as_arrow().clone());
        let placeholder = || -> Result<LogicalPlanBuilder> {
            let schema = Arc::clone(&shared_schema);
            LogicalPlanBuilder::scan(
                hidden::SHARED,
                datafusion::datasource::provider_as_source(Arc::new(
                    datafusion::datasource::empty::EmptyTable::new(schema),
                )),
                None,
            )
            .map_err(internal)
        };
        let projected = placeholder()?;
        let col = |name: &str| Expr::Column(Column::from_name(name));
        let union = if several_units {
            const INDEX: &str = hidden::COPY_INDEX;
            let indices =
                LogicalPlanBuilder::values((0..units.len() as i64).map(|i| vec![lit(i)]).collect())
                    .map_err(internal)?
                    .project(vec![col("column1").alias(INDEX)])
                    .map_err(internal)?
                    .build()
                    .map_err(internal)?;
            let mut subject = datafusion::logical_expr::case(col(INDEX));
            for (i, unit) in units.iter().enumerate() {
                subject = subject.when(lit(i as i64), col(&unit.name));
            }
            let subject = subject.end().map_err(internal)?;
            let mut exprs: Vec<Expr> = carried.iter().map(|c| col(c)).collect();
            exprs.push(subject.alias(SUBJECT));
            exprs.push(col(INDEX).alias(BRANCH));
            for (i, unit) in units.iter().enumerate() {
                exprs.push(row_of(unit).alias(format!("{STORED_PREFIX}{i}")));
            }
            for (i, unit) in units.iter().enumerate() {
                exprs.push(col(&unit.name).alias(format!("{UNIT_OF_PREFIX}{i}")));
            }
            // The copies' indices on the left: the cross join holds its left side and
            // streams its right.
            LogicalPlanBuilder::from(indices)
                .cross_join(projected.build().map_err(internal)?)
                .map_err(internal)?
                .project(exprs)
                .map_err(internal)?
                // A missing side of an outer join is no subject.
                .filter(col(SUBJECT).is_not_null())
                .map_err(internal)?
                .build()
                .map_err(internal)?
        } else {
            let mut exprs: Vec<Expr> = carried.iter().map(|c| col(c)).collect();
            exprs.push(col(&units[0].name).alias(SUBJECT));
            exprs.push(lit(0i64).alias(BRANCH));
            exprs.push(row_of(units[0]).alias(format!("{STORED_PREFIX}0")));
            exprs.push(col(&units[0].name).alias(format!("{UNIT_OF_PREFIX}0")));
            projected
                .project(exprs)
                .map_err(internal)?
                // Rows of constants (a UNION ALL with a VALUES list) are nobody's.
                .filter(col(SUBJECT).is_not_null())
                .map_err(internal)?
                .build()
                .map_err(internal)?
        };
        let column = |name: String| {
            let name = same.get(&name).cloned().unwrap_or(name);
            datafusion::prelude::col(name)
        };
        let filter_of = |j: usize| {
            parts[j]
                .filter
                .as_ref()
                .map(|_| column(format!("{FILTER_PREFIX}{j}")))
        };
        let mut contribution_aggr = Vec::new();
        for (name, part) in &part_exprs {
            let e = match *part {
                PartExpr::Rows => with_filter(count_udaf(), lit(1i64), &None),
                PartExpr::Subjects(j) => Expr::AggregateFunction(AggregateFunction::new_udf(
                    count_udaf(),
                    vec![column(format!("{ARGUMENT_PREFIX}{j}"))],
                    true,
                    filter_of(j).map(Box::new),
                    vec![],
                    None,
                )),
                PartExpr::Count(j) => with_filter(
                    count_udaf(),
                    column(format!("{ARGUMENT_PREFIX}{j}")),
                    &filter_of(j),
                ),
                PartExpr::Sum(j) => with_filter(
                    sum_udaf(),
                    as_double(column(format!("{ARGUMENT_PREFIX}{j}"))),
                    &filter_of(j),
                ),
                PartExpr::Source(j, n) => with_filter(
                    sum_udaf(),
                    column(format!("{SOURCE_PREFIX}{n}")),
                    &filter_of(j),
                ),
            };
            contribution_aggr.push(e.alias(name));
        }
        // The gate's memory: each row of the subject in the cell, with which released measures
        // it adds to (bit 0: the cell; then each count or sum whose FILTER it passes with a
        // value that is not NULL). A value of 0 still adds: a sum with zeros among its rows is
        // not told apart from a count of the same rows (they are other quantities), and a
        // coefficient a query puts on a row (0, 2, an offset) is not seen: see SECURITY.md.
        let mut adds: Vec<Expr> = vec![lit(true)];
        let mut seen = BTreeSet::new();
        // A sum's bit: its rows are those of a value (the gate protects a cell's values when
        // a few subjects dominate them, not its counts).
        let summed: BTreeSet<usize> = part_exprs
            .iter()
            .filter_map(|(_, p)| match *p {
                PartExpr::Sum(j) | PartExpr::Source(j, _) => Some(j),
                _ => None,
            })
            .collect();
        let mut value_bits = 0u64;
        for (_, part) in &part_exprs {
            let j = match *part {
                PartExpr::Subjects(j) | PartExpr::Count(j) | PartExpr::Sum(j) => j,
                PartExpr::Rows | PartExpr::Source(..) => continue,
            };
            if !seen.insert(j) {
                continue;
            }
            if summed.contains(&j) && adds.len() < 64 {
                value_bits |= 1 << adds.len();
            }
            let mut adds_to = column(format!("{ARGUMENT_PREFIX}{j}")).is_not_null();
            if let Some(f) = filter_of(j) {
                adds_to = adds_to.and(f);
            }
            adds.push(adds_to);
        }
        if adds.len() > MAX_MEASURES {
            return refuse(format!(
                "a release has at most {} counts and sums",
                MAX_MEASURES - 1
            ));
        }
        if units.iter().any(|u| u.table >= MAX_TABLES) {
            return refuse(format!(
                "a release reads rows of at most {MAX_TABLES} tables"
            ));
        }
        let element =
            Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
                    RowElement::new(adds.len(), units.iter().map(|u| u.table as u64).collect()),
                )),
                adds.into_iter()
                    .chain([column(BRANCH.to_string())])
                    .chain((0..units.len()).map(|i| column(format!("{STORED_PREFIX}{i}"))))
                    .chain((0..units.len()).map(|i| column(format!("{UNIT_OF_PREFIX}{i}"))))
                    .collect(),
            ));
        // Each input row carries its element; the tally groups them by cell and subject
        // itself (a sort per group of subjects), which is far cheaper than a list per group.
        // Only what the aggregation reads is kept (the units' and rows' columns are in the
        // element now).
        let mut kept: Vec<Expr> = carried.iter().map(|c| column(c.clone())).collect();
        kept.push(column(SUBJECT.to_string()));
        kept.push(element.alias(ROWS));
        let with_elements = LogicalPlanBuilder::from(union)
            .project(kept)
            .map_err(internal)?
            .build()
            .map_err(internal)?;
        let mut by = (0..agg.group_expr.len())
            .map(|i| column(format!("{GROUP_KEY_PREFIX}{i}")))
            .collect::<Vec<_>>();
        by.push(column(SUBJECT.to_string()));
        let contributions = Contributions {
            shared: shared_input,
            input: with_elements,
            by,
            aggregates: contribution_aggr,
            parts: part_exprs,
            same,
        };

        // The query's own aggregate over the shared input, each output under the name and
        // qualifier it had (what the plan above it reads), with each group's keys under hidden
        // names (to match cells across results and releases) and the cells' totals.
        let key = |i: usize| shared(format!("{GROUP_KEY_PREFIX}{i}"));
        // A key named twice is one output (as the planner's own aggregate has it).
        let mut group: Vec<Expr> = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            if agg.group_expr[..i].contains(g) {
                continue;
            }
            let (q, name) = g.qualified_name();
            group.push(key(i).alias_qualified(q, name));
        }
        let mut aggr = Vec::new();
        for (j, a) in agg.aggr_expr.iter().enumerate() {
            let Expr::AggregateFunction(f) = unaliased(a) else {
                return Err(Error::Internal("plan analysis: an aggregate lost".into()));
            };
            let mut f = f.clone();
            if let Some(first) = f.params.args.first() {
                let first = match first {
                    Expr::Literal(..) => first.clone(),
                    _ => argument(j),
                };
                f.params.args = std::iter::once(first)
                    .chain(further[j].iter().cloned())
                    .collect();
            }
            f.params.filter = filter(j).map(Box::new);
            let (q, name) = a.qualified_name();
            aggr.push(Expr::AggregateFunction(f).alias_qualified(q, name));
        }
        for i in 0..agg.group_expr.len() {
            aggr.push(max(key(i)).alias(format!("{GROUP_KEY_PREFIX}{i}")));
        }
        aggr.extend(totals);
        let plan = placeholder()?
            .aggregate(group, aggr)
            .map_err(internal)?
            .build()
            .map_err(internal)?;

        if let Some(bounds) = privacy {
            if several_units {
                return refuse(
                    "under differential privacy a row may belong to one subject only: a join of two tables with subjects cannot be bounded; join a table with subjects to lookup tables only",
                );
            }
            let aggregates = parts
                .iter()
                .enumerate()
                .map(|(j, p)| BoundedAggregate {
                    function: match p.kind {
                        Some(Released::Count) => "count".to_string(),
                        Some(Released::CountSubjects) => "count(DISTINCT)".to_string(),
                        _ => shape.aggregates[j].clone(),
                    },
                    hidden: match p.kind {
                        Some(Released::Count | Released::Sum) => {
                            format!("{}{j}", hidden::BOUNDED_PREFIX)
                        }
                        _ => String::new(),
                    },
                    output: Some(agg.schema.field(agg.group_expr.len() + j).name().clone()),
                    derived: false,
                    also_shown_as: Vec::new(),
                })
                .collect();
            shape.privacy = Some(PrivacyShape {
                bounds,
                aggregates,
                after_aggregate: Vec::new(),
            });
        }
        Ok(Analysis {
            plan,
            contributions: Some(contributions),
            measures,
            signed,
            shape,
            value_bits,
        })
    }

    /// Rewrites the plan below the aggregate, carrying every scan's hidden columns up, and
    /// refuses what is not on the allow-list.
    fn below(&mut self, plan: LogicalPlan) -> Result<Node> {
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Projection(p) => {
                let input = self.below(p.input.as_ref().clone())?;
                let schema = input.plan.schema().clone();
                let mut exprs = p.expr.clone();
                let mut columns = exprs
                    .iter()
                    .map(|e| self.lineage(e, &schema, &input.columns))
                    .collect::<Result<Vec<_>>>()?;
                for c in &input.carried {
                    exprs.push(input.column(&c.name)?);
                    columns.push(self.carried_lineage(c, &schema, &input)?);
                }
                Ok(Node {
                    plan: LogicalPlan::Projection(
                        Projection::try_new(exprs, Arc::new(input.plan)).map_err(internal)?,
                    ),
                    columns,
                    carried: input.carried,
                })
            }
            LogicalPlan::Limit(_)
            | LogicalPlan::Sort(datafusion::logical_expr::Sort { fetch: Some(_), .. }) => {
                // Rows chosen by their position (ORDER BY ... LIMIT) are rows chosen by a
                // value or by whose they are: `max` or `WHERE id <> ...` in other words.
                refuse(format!(
                    "a LIMIT or OFFSET below the aggregate chooses rows by their position; allowed below it: {}",
                    tidegate_policy::OPERATORS_BELOW_AGGREGATE.join(", ")
                ))
            }
            node @ (LogicalPlan::Filter(_) | LogicalPlan::Sort(_)) => {
                let mut input = self.below(node.inputs()[0].clone())?;
                if let LogicalPlan::Filter(f) = &node {
                    let schema = input.plan.schema().clone();
                    let lineage = self.lineage(&f.predicate, &schema, &input.columns)?;
                    self.condition(&lineage, "row filter")?;
                    // A filter over a cross join is a join: lookup columns it ties to the
                    // data's values take those values' lineage, as a JOIN ... ON would.
                    for conjunct in datafusion::logical_expr::utils::split_conjunction(&f.predicate)
                    {
                        let mut data = Vec::new();
                        let mut reads_lookup = false;
                        for c in conjunct.column_refs() {
                            let at = schema.index_of_column(c).map_err(internal)?;
                            let l = &input.columns[at];
                            if l.lookup() {
                                reads_lookup = true;
                            } else if l.subject_data {
                                data.push(l.clone());
                            }
                        }
                        if reads_lookup && !data.is_empty() {
                            let condition = Lineage::combine(&data);
                            for c in input.columns.iter_mut().filter(|c| c.lookup()) {
                                c.joined_on(&condition, true);
                            }
                        }
                    }
                }
                Ok(Node {
                    plan: rebuild(&node, vec![input.plan])?,
                    columns: input.columns,
                    carried: input.carried,
                })
            }
            LogicalPlan::SubqueryAlias(a) => {
                let input = self.below(a.input.as_ref().clone())?;
                Ok(Node {
                    plan: LogicalPlan::SubqueryAlias(
                        SubqueryAlias::try_new(Arc::new(input.plan), a.alias.clone())
                            .map_err(internal)?,
                    ),
                    columns: input.columns,
                    carried: input.carried,
                })
            }
            node @ LogicalPlan::Join(_) => {
                let LogicalPlan::Join(j) = &node else {
                    unreachable!()
                };
                if !matches!(
                    j.join_type,
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
                ) {
                    return refuse(format!(
                        "a {} is not allowed below the aggregate; allowed: {}",
                        operator(&node),
                        tidegate_policy::OPERATORS_BELOW_AGGREGATE.join(", ")
                    ));
                }
                let left = self.below(j.left.as_ref().clone())?;
                let right = self.below(j.right.as_ref().clone())?;
                // What the condition reads of each side, pair by pair.
                let mut of_left = Vec::new();
                let mut of_right = Vec::new();
                for (l, r) in &j.on {
                    let l = self.lineage(l, left.plan.schema(), &left.columns)?;
                    let r = self.lineage(r, right.plan.schema(), &right.columns)?;
                    self.condition(&Lineage::combine([&l, &r]), "join condition")?;
                    of_left.push(l);
                    of_right.push(r);
                }
                let mut columns = left.columns.clone();
                columns.extend(right.columns.clone());
                let joined = rebuild(&node, vec![left.plan.clone(), right.plan.clone()])?;
                if joined.schema().fields().len() != columns.len() {
                    return Err(Error::Internal("plan analysis: join schema".into()));
                }
                if let Some(filter) = &j.filter {
                    let schema = joined.schema().clone();
                    let lineage = self.lineage(filter, &schema, &columns)?;
                    self.condition(&lineage, "join condition")?;
                    // Each side takes on what the filter reads of the other side.
                    let (mut reads_left, mut reads_right) = (Vec::new(), Vec::new());
                    for c in filter.column_refs() {
                        let at = schema.index_of_column(c).map_err(internal)?;
                        if at < left.columns.len() {
                            reads_left.push(columns[at].clone());
                        } else {
                            reads_right.push(columns[at].clone());
                        }
                    }
                    of_left.push(Lineage::combine(&reads_left));
                    of_right.push(Lineage::combine(&reads_right));
                }
                // Each side's columns take on what the condition read of the other side.
                let constant_left = !left.carried.iter().any(|c| c.unit);
                let constant_right = !right.carried.iter().any(|c| c.unit);
                // An outer join keeps the unmatched rows of a side: kept rows of a side without
                // subjects are nobody's, yet how many there are depends on the data they did
                // not match (a list of every possible spend joined to one person's).
                let keeps_left = matches!(j.join_type, JoinType::Left | JoinType::Full);
                let keeps_right = matches!(j.join_type, JoinType::Right | JoinType::Full);
                if self.strict
                    && ((keeps_left && !self.every_row_has_a_subject(&j.left))
                        || (keeps_right && !self.every_row_has_a_subject(&j.right)))
                {
                    return refuse(format!(
                        "a {} keeps the unmatched rows of a side whose rows are not all a subject's (a lookup list, a union with one); keep only sides of tables with subjects (or use an inner join)",
                        operator(&node)
                    ));
                }
                let l_len = left.columns.len();
                for (i, c) in columns.iter_mut().enumerate() {
                    let (other, constant) = if i < l_len {
                        (&of_right, constant_left)
                    } else {
                        (&of_left, constant_right)
                    };
                    for condition in other {
                        c.joined_on(condition, constant);
                    }
                }
                let mut carried = left.carried;
                carried.extend(right.carried);
                Ok(Node {
                    plan: joined,
                    columns,
                    carried,
                })
            }
            LogicalPlan::Union(u) => self.union(u),
            node @ (LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_)) => Ok(Node {
                columns: vec![Lineage::constant(); node.schema().fields().len()],
                plan: node,
                carried: Vec::new(),
            }),
            other => refuse(format!(
                "a {} is not allowed below the aggregate; allowed: {}",
                operator(&other),
                tidegate_policy::OPERATORS_BELOW_AGGREGATE.join(", ")
            )),
        }
    }

    /// Whether every row of a plan (as the SQL planner built it) belongs to a subject: only
    /// then may an outer join keep its unmatched rows (kept rows of nobody are counted by
    /// the query yet measured by no rule, and how many there are depends on the data they
    /// did not match).
    fn every_row_has_a_subject(&self, plan: &LogicalPlan) -> bool {
        match plan {
            LogicalPlan::TableScan(scan) => {
                self.tables
                    .iter()
                    .any(|t| t.name == scan.table_name.table())
                    && plan
                        .schema()
                        .iter()
                        .any(|(_, f)| f.name() == hidden::ENTITY)
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::SubqueryAlias(_) => self.every_row_has_a_subject(plan.inputs()[0]),
            LogicalPlan::Join(j) => {
                let (l, r) = (
                    self.every_row_has_a_subject(&j.left),
                    self.every_row_has_a_subject(&j.right),
                );
                match j.join_type {
                    JoinType::Inner => l || r,
                    JoinType::Left => l,
                    JoinType::Right => r,
                    JoinType::Full => l && r,
                    _ => false,
                }
            }
            LogicalPlan::Union(u) => u.inputs.iter().all(|i| self.every_row_has_a_subject(i)),
            _ => false,
        }
    }

    /// A row filter or join condition: refused over L2 or L3 data when it chooses rows by a
    /// direct identifier.
    fn condition(&self, lineage: &Lineage, what: &str) -> Result<()> {
        match tidegate_policy::releasable_condition(lineage, what) {
            Err(reason) if self.strict => refuse(reason),
            _ => Ok(()),
        }
    }

    fn carried_lineage(&self, c: &Carried, schema: &DFSchema, node: &Node) -> Result<Lineage> {
        let e = column_named(schema, &c.name)?;
        self.lineage(&e, schema, &node.columns)
    }

    /// A granted table: its columns' tags, and the hidden units and sources over it.
    fn scan(&mut self, scan: datafusion::logical_expr::TableScan) -> Result<Node> {
        let name = scan.table_name.table().to_string();
        let Some((table_at, table)) = self.tables.iter().enumerate().find(|(_, t)| t.name == name)
        else {
            return refuse(format!(
                "`{name}` is not a granted table: rows from a table function carry no subjects the gate can count"
            ));
        };
        let plan = LogicalPlan::TableScan(scan);
        let schema = plan.schema().clone();
        let subjects = schema.iter().any(|(_, f)| f.name() == hidden::ENTITY);
        self.next += 1;
        let scan_id = self.next;
        let mut exprs = Vec::new();
        let mut columns = Vec::new();
        let mut carried = Vec::new();
        let mut hidden = Vec::new();
        let mut hidden_lineage = Vec::new();
        for (q, f) in schema.iter() {
            let reference = Expr::Column(Column::new(q.cloned(), f.name()));
            exprs.push(reference.clone());
            if f.name() == hidden::ENTITY {
                columns.push(Lineage::entity_key());
                let unit = self.fresh(UNIT_PREFIX);
                // A NULL key is one subject (DOMAIN.md), never no subject: only rows that
                // come from no table with subjects have none.
                hidden.push(
                    datafusion::functions::expr_fn::coalesce(vec![
                        cast(reference, arrow::datatypes::DataType::Utf8),
                        lit(NULL_KEY),
                    ])
                    .alias(&unit),
                );
                hidden_lineage.push(Lineage::entity_key());
                carried.push(Carried {
                    name: unit,
                    unit: true,
                    row: false,
                    scan: scan_id,
                    table: table_at,
                });
                continue;
            }
            if f.name() == hidden::ROW {
                // The rows' identities ride along like the units (no query can name them).
                columns.push(Lineage::default());
                if subjects {
                    let row = self.fresh(ROW_PREFIX);
                    hidden.push(reference.alias(&row));
                    hidden_lineage.push(Lineage::default());
                    carried.push(Carried {
                        name: row,
                        unit: false,
                        row: true,
                        scan: scan_id,
                        table: table_at,
                    });
                }
                continue;
            }
            let tags = table
                .columns
                .iter()
                .find(|c| c.name == *f.name())
                .map(|c| c.tags.clone())
                .unwrap_or_default();
            let mut lineage = Lineage::of_column(&tags, subjects);
            if subjects && f.data_type().is_numeric() {
                let source = self.fresh(SOURCE_PREFIX);
                let id: usize = source[SOURCE_PREFIX.len()..]
                    .parse()
                    .map_err(|_| Error::Internal("plan analysis: source id".into()))?;
                lineage.sources.insert(id);
                hidden.push(cast(reference, arrow::datatypes::DataType::Float64).alias(&source));
                hidden_lineage.push(lineage.clone());
                carried.push(Carried {
                    name: source,
                    unit: false,
                    row: false,
                    scan: scan_id,
                    table: table_at,
                });
            }
            columns.push(lineage);
        }
        exprs.extend(hidden);
        columns.extend(hidden_lineage);
        Ok(Node {
            plan: LogicalPlan::Projection(
                Projection::try_new(exprs, Arc::new(plan)).map_err(internal)?,
            ),
            columns,
            carried,
        })
    }

    /// UNION ALL: every branch carries every branch's hidden columns (NULL where they are
    /// another branch's), in the same places.
    fn union(&mut self, u: Union) -> Result<Node> {
        let inputs = u
            .inputs
            .iter()
            .map(|i| self.below(i.as_ref().clone()))
            .collect::<Result<Vec<_>>>()?;
        let all: Vec<Carried> = inputs.iter().flat_map(|i| i.carried.clone()).collect();
        let mut columns: Option<Vec<Lineage>> = None;
        let mut branches = Vec::new();
        for input in &inputs {
            let schema = input.plan.schema();
            let own: BTreeSet<&str> = input.carried.iter().map(|c| c.name.as_str()).collect();
            let mut exprs = Vec::new();
            let mut lineage = Vec::new();
            for (i, (q, f)) in schema.iter().enumerate() {
                if !own.contains(f.name().as_str()) {
                    exprs.push(Expr::Column(Column::new(q.cloned(), f.name())));
                    lineage.push(input.columns[i].clone());
                }
            }
            for c in &all {
                if own.contains(c.name.as_str()) {
                    exprs.push(input.column(&c.name)?);
                    lineage.push(self.carried_lineage(c, schema, input)?);
                } else {
                    let null = if c.unit {
                        ScalarValue::Utf8(None)
                    } else if c.row {
                        ScalarValue::UInt64(None)
                    } else {
                        ScalarValue::Float64(None)
                    };
                    exprs.push(lit(null).alias(&c.name));
                    lineage.push(Lineage::default());
                }
            }
            match columns.as_mut() {
                None => columns = Some(lineage),
                Some(have) => {
                    for (h, l) in have.iter_mut().zip(&lineage) {
                        h.merge(l);
                    }
                }
            }
            branches.push(Arc::new(
                LogicalPlanBuilder::from(input.plan.clone())
                    .project(exprs)
                    .map_err(internal)?
                    .build()
                    .map_err(internal)?,
            ));
        }
        Ok(Node {
            plan: LogicalPlan::Union(Union::try_new_with_loose_types(branches).map_err(internal)?),
            columns: columns.unwrap_or_default(),
            carried: all,
        })
    }
}

/// How a contribution column is computed from the per-unit projection.
#[derive(Debug, Clone, Copy)]
enum PartExpr {
    /// The subject's rows in the cell.
    Rows,
    /// Whether the subject is counted by a count of distinct subjects (0 or 1).
    Subjects(usize),
    Count(usize),
    Sum(usize),
    Source(usize, usize),
}

fn rebuild(node: &LogicalPlan, inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    node.with_new_exprs(node.expressions(), inputs)
        .map_err(internal)
}

/// Follows each aggregate's output column through a projection: shown as it is (perhaps
/// under several names), computed from (derived), or dropped.
fn follow_projection(aggregates: &mut [BoundedAggregate], exprs: &[Expr]) {
    for a in aggregates.iter_mut() {
        let names: Vec<String> = a
            .output
            .take()
            .into_iter()
            .chain(a.also_shown_as.drain(..))
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut shown = Vec::new();
        for e in exprs {
            let mut inner = e;
            while let Expr::Alias(al) = inner {
                inner = al.expr.as_ref();
            }
            match inner {
                Expr::Column(c) if names.contains(&c.name) => shown.push(match e {
                    Expr::Alias(al) => al.name.clone(),
                    _ => c.name.clone(),
                }),
                _ if e.column_refs().iter().any(|c| names.contains(&c.name)) => a.derived = true,
                _ => {}
            }
        }
        let mut shown = shown.into_iter();
        a.output = shown.next();
        a.also_shown_as = shown.collect();
    }
}

/// How the cells' keys of rows of `schema` (with the hidden key columns, or none) are put in
/// Arrow's row format, and whether there are no keys (one cell, a constant key).
fn key_fields(schema: Option<&arrow::datatypes::Schema>) -> (Vec<SortField>, bool) {
    let fields: Vec<SortField> = schema
        .map(|s| {
            s.fields()
                .iter()
                .filter(|f| f.name().starts_with(GROUP_KEY_PREFIX))
                .map(|f| SortField::new(f.data_type().clone()))
                .collect()
        })
        .unwrap_or_default();
    match fields.is_empty() {
        true => (vec![SortField::new(DataType::Int8)], true),
        false => (fields, false),
    }
}

/// The hidden key columns of a batch, in order.
fn key_columns(b: &arrow::array::RecordBatch) -> Vec<arrow::array::ArrayRef> {
    b.schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name().starts_with(GROUP_KEY_PREFIX))
        .map(|(i, _)| Arc::clone(b.column(i)))
        .collect()
}

use arrow::array::{Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::row::{RowConverter, SortField};
use std::collections::HashMap;

fn arrow_error(e: arrow::error::ArrowError) -> Error {
    Error::Internal(format!("gate columns: {e}"))
}

/// A column of a batch as doubles.
fn doubles(b: &RecordBatch, name: &str) -> Result<Float64Array> {
    let c = b
        .column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("gate columns: {name} missing")))?;
    Ok(arrow::compute::cast(c, &DataType::Float64)
        .map_err(arrow_error)?
        .as_primitive::<Float64Type>()
        .clone())
}

/// A batch's subjects, as strings.
fn subjects_of(b: &RecordBatch) -> Result<arrow::array::ArrayRef> {
    let subject = b
        .column_by_name(SUBJECT)
        .ok_or_else(|| Error::Internal("gate columns: no subject".into()))?;
    arrow::compute::cast(subject, &DataType::Utf8).map_err(arrow_error)
}

/// A batch's rows' elements for the gate's memory.
fn elements_of(b: &RecordBatch) -> Result<&arrow::array::FixedSizeBinaryArray> {
    b.column_by_name(ROWS)
        .and_then(|c| c.as_fixed_size_binary_opt())
        .filter(|c| c.value_size() == ELEMENT)
        .ok_or_else(|| Error::Internal("gate columns: no rows".into()))
}

/// The bytes of a row's element: its stored row's identity and the mask of its table and
/// the measures it adds to (little-endian).
const ELEMENT: usize = 16;

/// The cells' keys of a batch's rows in Arrow's row format (one constant key without keys).
fn keys_in(converter: &RowConverter, no_keys: bool, b: &RecordBatch) -> Result<arrow::row::Rows> {
    let columns = if no_keys {
        vec![Arc::new(arrow::array::Int8Array::from(vec![0i8; b.num_rows()])) as _]
    } else {
        key_columns(b)
    };
    converter.convert_columns(&columns).map_err(arrow_error)
}

/// A row's element for the gate's memory: the table that stored it, its identity there and
/// the measures it adds to; `None` for a row of no stored row or that adds to nothing.
fn element(column: &arrow::array::FixedSizeBinaryArray, row: usize) -> Option<(u64, u64, u64)> {
    if !column.is_valid(row) {
        return None;
    }
    // The values' bytes (of this slice of them) read in place: every element is ELEMENT
    // bytes ([`elements_of`]), and a short read is no element.
    let bytes = column
        .value_data()
        .get(row * ELEMENT..(row + 1) * ELEMENT)?;
    let identity = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let mask = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let adds = mask & ((1 << TABLE_SHIFT) - 1);
    (adds != 0).then_some((mask >> TABLE_SHIFT, identity, adds))
}

/// One cell's facts: its subjects, per measure the largest parts (descending, absolute) and
/// the signed total of its (bounded) parts.
struct Cell {
    subjects: u64,
    tops: Vec<Vec<f64>>,
    bounded_totals: Vec<f64>,
    /// Per measure, the subjects whose part is not zero.
    contributors: Vec<u64>,
    /// Per measure judged above its cell's minimum, that minimum (0 for the others).
    floors: Vec<f64>,
    /// Its rows for the gate's memory (when kept): the table that stored the row, (row,
    /// subject) named by the subject key, and the mask of the measures each adds to.
    elements: Elements,
    /// More of them, taken by a share of the tally on another thread: joined with `elements`
    /// when they are sorted.
    more: Elements,
    /// Its keys in Arrow's row format.
    key: Box<[u8]>,
}

impl Cell {
    /// A cell of no subjects yet, for `measures` measures, `top` parts kept of each.
    fn empty(measures: usize, top: usize, floors: Vec<f64>, key: Box<[u8]>) -> Cell {
        Cell {
            subjects: 0,
            tops: vec![Vec::with_capacity(top); measures],
            bounded_totals: vec![0.0; measures],
            contributors: vec![0; measures],
            floors,
            elements: Vec::new(),
            more: Vec::new(),
            key,
        }
    }
}

/// How a subject's parts add to a cell's facts: the same for the tally and for a share of it
/// on another thread.
#[derive(Clone)]
pub(crate) struct Adder {
    /// How many of the largest parts each measure keeps (the dominance rule's n).
    top: usize,
    privacy: Option<ContributionBounds>,
    /// Per measure: whether it is a count, its part, and its count of rows above its minimum.
    counts: Vec<bool>,
    measure_parts: Vec<usize>,
    count_parts: Vec<Option<usize>>,
}

impl Adder {
    /// Under differential privacy the dominance rules judge the bounded parts, as released;
    /// values that are not numbers never reach the noise.
    fn clamp(&self, m: usize, v: f64) -> f64 {
        match self.privacy {
            Some(_) if v.is_nan() => 0.0,
            Some(b) if self.counts[m] => v.min(b.count_bound as f64),
            Some(ContributionBounds {
                sum_bound: Some(s), ..
            }) => v.clamp(-s, s),
            _ => v,
        }
    }

    /// Adds one subject's parts to `cell` (each part's value, 0 for NULL, in the order of the
    /// contribution's columns).
    fn add(&self, cell: &mut Cell, values: &[f64]) {
        for m in 0..self.measure_parts.len() {
            let mut raw = values[self.measure_parts[m]];
            if let Some(n) = self.count_parts[m] {
                // Above the cell's minimum: what this subject adds beyond its rows' floor.
                raw -= values[n] * cell.floors[m];
            }
            let signed = self.clamp(m, raw);
            cell.bounded_totals[m] += signed;
            if signed != 0.0 {
                cell.contributors[m] += 1;
            }
            keep_top(&mut cell.tops[m], signed.abs(), self.top);
        }
        cell.subjects += 1;
    }

    /// Adds the facts of `other` (the same cell, of other subjects) to `cell`.
    fn join(&self, cell: &mut Cell, other: Cell) {
        cell.subjects += other.subjects;
        for m in 0..cell.tops.len() {
            cell.bounded_totals[m] += other.bounded_totals[m];
            cell.contributors[m] += other.contributors[m];
            for v in &other.tops[m] {
                keep_top(&mut cell.tops[m], *v, self.top);
            }
        }
        // Moved, not copied, when the cell has none apart yet (always, as it is used).
        if cell.more.is_empty() {
            cell.more = other.elements;
        } else {
            let mut elements = other.elements;
            cell.more.append(&mut elements);
        }
    }
}

/// Adds one subject's elements in `cell` (its rows' (table, row identity, mask), sorted) to
/// the cell's sets.
fn settle(
    cell: &mut Cell,
    key: &crate::crypto::SubjectKey,
    who: u64,
    of_subject: &[(u64, u64, u64)],
) {
    // A stored row read n times in the cell (by n input rows) adds its value n
    // times: it is n elements, its first copy named as a plain read names it.
    for same in of_subject.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (table, identity) = (same[0].0, same[0].1);
        // A table stored without row identities: its subject stands for its rows.
        let base = match identity {
            0 => who,
            i => key.subject(&i.to_le_bytes()),
        };
        // Read once (nearly always): one element, as it is.
        if let [one] = same {
            cell.elements.push((table, base, who, one.2));
            continue;
        }
        let mut times = [0u32; TABLE_SHIFT as usize];
        for e in same {
            let mut mask = e.2;
            while mask != 0 {
                times[mask.trailing_zeros() as usize] += 1;
                mask &= mask - 1;
            }
        }
        let copies = times.iter().copied().max().unwrap_or(0);
        for copy in 1..=copies {
            let mask = times
                .iter()
                .enumerate()
                .filter(|(_, n)| **n >= copy)
                .fold(0u64, |m, (bit, _)| m | 1 << bit);
            let named = match copy {
                1 => base,
                c => {
                    let mut again = [0u8; 12];
                    again[..8].copy_from_slice(&base.to_le_bytes());
                    again[8..].copy_from_slice(&c.to_le_bytes());
                    key.subject(&again)
                }
            };
            cell.elements.push((table, named, who, mask));
        }
    }
}

/// Keeps `v` among a measure's `top` largest parts (descending; a part that is not a number
/// first), if it is one of them.
fn keep_top(tops: &mut Vec<f64>, v: f64, top: usize) {
    let place = tops
        .iter()
        .position(|t| v.is_nan() || v > *t)
        .unwrap_or(tops.len());
    if place < top {
        tops.insert(place, v);
        tops.truncate(top);
    }
}

/// A cell's rows for the gate's memory: (table, row named, subject, mask).
type Elements = Vec<(u64, u64, u64, u64)>;

/// Per subject, under differential privacy: its cells, each with a choice hash and its signed
/// parts.
type Parts = (u64, usize, Vec<f64>);

/// What the gate reads of every subject's contributions, gathered batch by batch as they
/// stream from the engine (nothing of them is held but each cell's facts, and under
/// differential privacy each subject's parts). Cells are matched by their keys in Arrow's row
/// format (byte strings that compare as the values do).
pub(crate) struct Tally<'a> {
    analysis: &'a Analysis,
    rule: tidegate_policy::DominanceRule,
    /// The scenario's k: every measure of a cell aggregates at least this many subjects, or
    /// none.
    threshold: u64,
    privacy: Option<ContributionBounds>,
    converter: RowConverter,
    /// The key columns' types, to make another converter with.
    fields: Vec<SortField>,
    no_keys: bool,
    index: HashMap<Box<[u8]>, usize, foldhash::fast::RandomState>,
    cells: Vec<Cell>,
    by_subject: HashMap<Option<String>, Vec<Parts>>,
    signed: Vec<(usize, Signed)>,
    /// Per cell key, per measure measured above its minimum, the cell's minimum.
    minimums: HashMap<Box<[u8]>, Vec<f64>, foldhash::fast::RandomState>,
    /// Names subjects for the gate's memory: each cell's sets of subjects are kept when set.
    subject_key: Option<crate::crypto::SubjectKey>,
    /// The elements of the rows read since the last [`Tally::settle_elements`]: (cell, subject,
    /// table, row identity, mask).
    pending: Vec<(usize, u64, u64, u64, u64)>,
    /// Per part of a contribution (in [`Contributions`]' order), which value the tally reads
    /// it as: each measure's part and its count of rows above its minimum (in `adder`), and
    /// each signed aggregate's part.
    adder: Adder,
    signed_parts: Vec<usize>,
    /// The names of the parts, in order.
    part_names: Vec<String>,
}

impl<'a> Tally<'a> {
    /// A tally for a result whose hidden key columns look like those of `result`.
    pub(crate) fn new(
        result: &[RecordBatch],
        analysis: &'a Analysis,
        rule: tidegate_policy::DominanceRule,
        threshold: u64,
        privacy: Option<ContributionBounds>,
        subject_key: Option<crate::crypto::SubjectKey>,
    ) -> Result<Tally<'a>> {
        // No GROUP BY: one cell, the same constant key for every row.
        let (fields, no_keys) = key_fields(result.first().map(|b| b.schema_ref().as_ref()));
        let part_names: Vec<String> = analysis
            .contributions
            .iter()
            .flat_map(|c| c.parts.iter().map(|(name, _)| name.clone()))
            .collect();
        let part = |name: &str| {
            part_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| Error::Internal(format!("gate columns: {name} missing")))
        };
        let measure_parts = analysis
            .measures
            .iter()
            .map(|m| part(&m.part))
            .collect::<Result<Vec<_>>>()?;
        let count_parts = analysis
            .measures
            .iter()
            .map(|m| {
                m.above_minimum
                    .as_ref()
                    .map(|a| part(&a.n_part))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let signed: Vec<(usize, Signed)> = analysis
            .signed
            .iter()
            .enumerate()
            .filter_map(|(j, s)| s.clone().map(|s| (j, s)))
            .collect();
        let signed_parts = signed
            .iter()
            .map(|(_, s)| part(&s.column))
            .collect::<Result<Vec<_>>>()?;
        let mut tally = Tally {
            analysis,
            rule,
            threshold,
            privacy,
            converter: RowConverter::new(fields.clone()).map_err(arrow_error)?,
            fields,
            no_keys,
            index: HashMap::default(),
            cells: Vec::new(),
            by_subject: HashMap::new(),
            signed,
            minimums: HashMap::default(),
            subject_key,
            pending: Vec::new(),
            adder: Adder {
                top: rule.top_needed(),
                privacy,
                counts: analysis.measures.iter().map(|m| m.count).collect(),
                measure_parts,
                count_parts,
            },
            signed_parts,
            part_names,
        };
        for b in result {
            let keys = tally.keys_of(b)?;
            let mins = analysis
                .measures
                .iter()
                .map(|m| match &m.above_minimum {
                    Some(a) => doubles(b, &a.min_total).map(Some),
                    None => Ok(None),
                })
                .collect::<Result<Vec<_>>>()?;
            for row in 0..b.num_rows() {
                let values = mins
                    .iter()
                    .map(|c| match c {
                        Some(c) if c.is_valid(row) && c.value(row).is_finite() => c.value(row),
                        _ => 0.0,
                    })
                    .collect();
                tally.minimums.insert(keys.row(row).as_ref().into(), values);
            }
        }
        Ok(tally)
    }

    fn keys_of(&self, b: &RecordBatch) -> Result<arrow::row::Rows> {
        keys_in(&self.converter, self.no_keys, b)
    }

    /// The cell of `key`, made when first seen.
    fn cell_at(&mut self, key: &[u8]) -> usize {
        if let Some(at) = self.index.get(key) {
            return *at;
        }
        let measures = self.analysis.measures.len();
        self.index.insert(key.into(), self.cells.len());
        let floors = self
            .minimums
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![0.0; measures]);
        self.cells
            .push(Cell::empty(measures, self.adder.top, floors, key.into()));
        self.cells.len() - 1
    }

    /// Takes the gate's memory's elements of a batch of input rows (one per row, before any
    /// grouping): kept until [`Tally::settle_elements`] groups them by cell and subject.
    pub(crate) fn add_elements(&mut self, b: &RecordBatch) -> Result<()> {
        let Some(key) = self.subject_key else {
            return Ok(());
        };
        let keys = self.keys_of(b)?;
        let subject = subjects_of(b)?;
        let subject = subject.as_string::<i32>();
        let elements = elements_of(b)?;
        for row in 0..b.num_rows() {
            // Rows of no subject never reach the tally (filtered in its plan).
            if !subject.is_valid(row) {
                continue;
            }
            let Some((table, identity, adds)) = element(elements, row) else {
                continue;
            };
            let at = self.cell_at(keys.row(row).as_ref());
            let who = key.subject(subject.value(row).as_bytes());
            self.pending.push((at, who, table, identity, adds));
        }
        Ok(())
    }

    /// Groups the elements taken since the last call by cell and subject into the cells' sets
    /// (every row of a subject was taken by then: the spill keeps a subject's rows together).
    pub(crate) fn settle_elements(&mut self) {
        let Some(key) = self.subject_key else {
            return;
        };
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable();
        let mut elements = Vec::new();
        for of_subject in pending.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (at, who) = (of_subject[0].0, of_subject[0].1);
            elements.clear();
            elements.extend(of_subject.iter().map(|e| (e.2, e.3, e.4)));
            settle(&mut self.cells[at], &key, who, &elements);
        }
    }

    /// Adds one batch of contributions (one row per cell and subject) as the engine computed
    /// them.
    pub(crate) fn add(&mut self, b: &RecordBatch) -> Result<()> {
        let keys = self.keys_of(b)?;
        let parts = self
            .part_names
            .iter()
            .map(|name| doubles(b, name))
            .collect::<Result<Vec<_>>>()?;
        let subject = subjects_of(b)?;
        let subject = subject.as_string::<i32>();
        let mut values = Vec::with_capacity(parts.len());
        for row in 0..b.num_rows() {
            let at = self.cell_at(keys.row(row).as_ref());
            values.clear();
            values.extend(
                parts
                    .iter()
                    .map(|c| if c.is_null(row) { 0.0 } else { c.value(row) }),
            );
            let who = subject.is_valid(row).then(|| subject.value(row));
            self.add_part(at, who, &values);
        }
        Ok(())
    }

    /// Adds one subject's parts in cell `at` (each part's value, 0 for NULL, in the order of
    /// the contribution's columns).
    fn add_part(&mut self, at: usize, subject: Option<&str>, values: &[f64]) {
        use std::hash::{Hash, Hasher};
        self.adder.add(&mut self.cells[at], values);
        // Under differential privacy each subject's parts are kept, by subject.
        if self.privacy.is_some() {
            let who = subject.map(str::to_string);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&who, &self.cells[at].key[..]).hash(&mut h);
            let values = self.signed_parts.iter().map(|p| values[*p]).collect();
            self.by_subject
                .entry(who)
                .or_default()
                .push((h.finish(), at, values));
        }
    }

    /// Adds what the gate reads to the result: each cell's distinct subjects
    /// (`__tg_subjects`), whether a dominance rule fails for any of its measures
    /// (`__tg_dominated`), and under differential privacy each count and sum again with every
    /// subject's part bounded (`__tg_dp_*`). With a subject key, also each result row's sets of
    /// subjects (the cell's, and each measure's that differs from it), for the gate's memory.
    pub(crate) fn finish(mut self, batches: Vec<RecordBatch>) -> Result<Finished> {
        let value_bits = self.analysis.value_bits;
        // Per cell, per table whose stored rows it holds: its sets and which are a sum's,
        // made as each cell's elements are sorted (by the thread that sorted them).
        let cell_sets: Option<Vec<Vec<TableSets>>> = match self.subject_key {
            Some(_) => Some(sort_elements(
                self.cells
                    .iter_mut()
                    .map(|c| (std::mem::take(&mut c.elements), std::mem::take(&mut c.more)))
                    .collect(),
                move |elements| tables_sets(&elements, value_bits),
            )?),
            None => None,
        };
        // Every table with rows in some cell has a part for every result row.
        let tables: BTreeSet<u64> = cell_sets
            .iter()
            .flatten()
            .flat_map(|c| c.iter().map(|t| t.0))
            .collect();
        let mut row_sets: Vec<(usize, DatasetRows)> = tables
            .iter()
            .map(|t| (*t as usize, DatasetRows::default()))
            .collect();
        let by_subject = std::mem::take(&mut self.by_subject);
        let signed = &self.signed;
        // Bounded totals per cell: one slot per signed aggregate, and the subjects kept last.
        let mut bounded: Vec<Vec<f64>> = vec![vec![0.0; signed.len() + 1]; self.cells.len()];
        if let Some(bounds) = self.privacy {
            for (_, mut cells_of) in by_subject {
                if cells_of.len() as u64 > bounds.max_groups {
                    cells_of.sort_unstable_by_key(|p| p.0);
                    cells_of.truncate(bounds.max_groups as usize);
                }
                for (_, at, values) in cells_of {
                    let total = &mut bounded[at];
                    total[signed.len()] += 1.0;
                    for (i, v) in values.into_iter().enumerate() {
                        // Values that are not numbers never reach the noise.
                        let v = if v.is_nan() { 0.0 } else { v };
                        total[i] += match signed[i].1.kind {
                            Released::Count => v.min(bounds.count_bound as f64),
                            _ => match bounds.sum_bound {
                                Some(b) => v.clamp(-b, b),
                                None if v.is_finite() => v,
                                None => 0.0,
                            },
                        };
                    }
                }
            }
        }
        batches
            .into_iter()
            .map(|b| {
                let keys = self.keys_of(&b)?;
                let totals = self
                    .analysis
                    .measures
                    .iter()
                    .map(|m| {
                        let v = doubles(&b, &m.total)?;
                        match &m.above_minimum {
                            // The cell's sum above its minimum: V - N * min.
                            Some(a) => {
                                let (n, min) =
                                    (doubles(&b, &a.n_total)?, doubles(&b, &a.min_total)?);
                                Ok((0..b.num_rows())
                                    .map(|i| {
                                        let get = |c: &Float64Array| {
                                            if c.is_valid(i) && c.value(i).is_finite() {
                                                c.value(i)
                                            } else {
                                                0.0
                                            }
                                        };
                                        Some(get(&v) - get(&n) * get(&min))
                                    })
                                    .collect::<Float64Array>())
                            }
                            None => Ok(v),
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut subjects = Vec::with_capacity(b.num_rows());
                let mut dominated = Vec::with_capacity(b.num_rows());
                let mut at = Vec::with_capacity(b.num_rows());
                for row in 0..b.num_rows() {
                    let cell = self.index.get(keys.row(row).as_ref()).copied();
                    if let Some(sets) = &cell_sets {
                        for (table, rows) in &mut row_sets {
                            let part =
                                cell.and_then(|c| sets[c].iter().find(|p| p.0 as usize == *table));
                            rows.sets
                                .push(part.map(|p| p.1.clone()).unwrap_or_default());
                            rows.values.push(part.map_or(0, |p| p.2));
                        }
                    }
                    at.push(cell);
                    let cell = cell.map(|c| &self.cells[c]);
                    subjects.push(cell.map_or(0, |c| c.subjects) as i64);
                    let failing = totals.iter().enumerate().any(|(m, t)| {
                        // The cell's value as its subjects make it, signed, then its size.
                        let total = match (self.privacy, cell) {
                            (Some(_), Some(c)) => c.bounded_totals[m],
                            _ if t.is_null(row) => 0.0,
                            _ => t.value(row),
                        }
                        .abs();
                        let tops = cell.map(|c| c.tops[m].as_slice()).unwrap_or(&[]);
                        // Every released number of an exact release aggregates k subjects or
                        // none: a count or sum over a FILTER that one subject passes is that
                        // subject's (the largest spend, by thresholds).
                        // (Above a cell's minimum the subject at the minimum adds nothing:
                        // there dominance alone judges.)
                        let few = self.privacy.is_none()
                            && self.analysis.measures[m].above_minimum.is_none()
                            && cell.is_some_and(|c| {
                                c.contributors[m] > 0 && c.contributors[m] < self.threshold
                            });
                        few || self.rule.dominated(total, tops)
                    });
                    dominated.push(failing);
                }
                let mut out = hidden::append_column(
                    &b,
                    hidden::SUBJECTS,
                    Arc::new(Int64Array::from(subjects)),
                )?;
                out = hidden::append_column(
                    &out,
                    hidden::DOMINATED,
                    Arc::new(BooleanArray::from(dominated)),
                )?;
                if self.privacy.is_some() {
                    let names = signed
                        .iter()
                        .map(|(j, _)| format!("{}{j}", hidden::BOUNDED_PREFIX))
                        .chain([hidden::BOUNDED_SUBJECTS.to_string()]);
                    for (i, name) in names.enumerate() {
                        let values: Float64Array = at
                            .iter()
                            .map(|c| Some(c.map_or(0.0, |c| bounded[c][i])))
                            .collect();
                        out = hidden::append_column(&out, &name, Arc::new(values))?;
                    }
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()
            .map(|batches| Finished {
                batches,
                subject_sets: cell_sets.map(|_| row_sets),
            })
    }
}

/// A result with the gate's columns, and each row's sets of subjects when they were kept.
pub(crate) struct Finished {
    pub batches: Vec<RecordBatch>,
    /// Per table (by index among the job's tables) whose stored rows some cell holds, each
    /// result row's sets over that table's rows.
    pub subject_sets: Option<Vec<(usize, DatasetRows)>>,
}

/// One table's part of a cell: the table, its sets, which of them are a sum's rows.
type TableSets = (u64, Vec<SubjectSet>, u64);

/// A cell's sorted elements' sets, per table whose stored rows it holds.
fn tables_sets(elements: &[(u64, u64, u64, u64)], value_bits: u64) -> Vec<TableSets> {
    elements
        .chunk_by(|a, b| a.0 == b.0)
        .map(|of_table| {
            let (sets, values) = sets_of(of_table, value_bits);
            (of_table[0].0, sets, values)
        })
        .collect()
}

/// Sorts each cell's elements, with more of them taken apart (joined first), takes out the
/// repeats (one row may add to a measure through one join partner and not another: its masks
/// are joined), and gives each cell's to `then` at once (what it makes of them is answered in
/// the cells' order; the elements are freed as each cell is done). A cell's elements run to
/// one per input row: within a runtime (the job's), the cells holding the second half of them
/// are joined, sorted and given to `then` on one of its blocking threads (counted in the job's
/// CPU time) while this thread does the first. A worker that fails fails the job.
fn sort_elements<T: Send + 'static>(
    mut cells: Vec<(Elements, Elements)>,
    then: impl Fn(Elements) -> T + Clone + Send + 'static,
) -> Result<Vec<T>> {
    fn sort(elements: &mut Elements, more: Elements, room: &mut Elements) {
        sort_joined(elements, more, room);
        elements.dedup_by(|b, a| {
            (a.0, a.1, a.2) == (b.0, b.1, b.2) && {
                a.3 |= b.3;
                true
            }
        });
    }
    fn each<T>(
        cells: Vec<(Elements, Elements)>,
        then: impl Fn(Elements) -> T,
    ) -> impl Iterator<Item = T> {
        let mut room = Vec::new();
        cells.into_iter().map(move |(mut elements, more)| {
            sort(&mut elements, more, &mut room);
            then(elements)
        })
    }
    let total: usize = cells.iter().map(|(c, more)| c.len() + more.len()).sum();
    let handle = tokio::runtime::Handle::try_current();
    let handle = match handle {
        Ok(h) if total >= 1 << 16 && crate::threads::parallelism() >= 2 => h,
        _ => return Ok(each(cells, then).collect()),
    };
    let (mut split, mut taken) = (0, 0);
    while split < cells.len() && taken < total / 2 {
        taken += cells[split].0.len() + cells[split].1.len();
        split += 1;
    }
    let theirs = cells.split_off(split);
    let their_then = then.clone();
    let worker = handle.spawn_blocking(move || each(theirs, their_then).collect::<Vec<T>>());
    let mut done: Vec<T> = each(cells, then).collect();
    let theirs = futures::executor::block_on(worker)
        .map_err(|_| Error::Internal("the gate's memory: a sort or its sets failed".into()))?;
    done.extend(theirs);
    Ok(done)
}

/// Sorts a cell's elements as `sort_unstable` does (by table, row name, subject, mask). The
/// row names are keyed hashes, spread evenly: the elements of one table are placed by their
/// name's top bits (in place, by cycles of swaps) into buckets of a few elements each (eight
/// bits at a time while a bucket is larger than a core's caches), each then sorted whole.
/// Equal elements cannot be told apart, so the order is the sort's. Names that do not spread
/// (one subject's rows of a table without row identities are all named by the subject) only
/// cost passes over them: after six rounds of eight bits a bucket is sorted as it is.
fn sort_by_name(elements: &mut [(u64, u64, u64, u64)]) {
    if elements.len() < SMALL || elements.iter().any(|e| e.0 != elements[0].0) {
        elements.sort_unstable();
        return;
    }
    by_bits(elements, 0, &mut Vec::new(), &mut Vec::new());
}

/// A cell's elements and more of them (taken by a share of the tally), joined and sorted as
/// [`sort_by_name`] sorts them. Many of one table are placed by their names' top eight bits
/// as they are moved into `room` (the join's copy and the first round in one pass), then each
/// bucket sorted by [`sort_by_name`]'s rounds; the cell's elements are then those of `room`,
/// and `room` is the cell's old room, used again for the next cell (its pages already made).
/// A cell of more than [`JOINED`] elements is joined and sorted in place, in no room more.
fn sort_joined(elements: &mut Elements, mut more: Elements, room: &mut Elements) {
    let n = elements.len() + more.len();
    let table = elements.first().or(more.first()).map_or(0, |e| e.0);
    if n <= 1 << 15 || n > JOINED || elements.iter().chain(&more).any(|e| e.0 != table) {
        elements.append(&mut more);
        sort_by_name(elements);
        return;
    }
    let bucket = |e: &(u64, u64, u64, u64)| (e.1 >> 56) as usize;
    let mut starts = Vec::new();
    bucket_starts(elements.iter().chain(&more), 256, bucket, &mut starts);
    let mut next = starts[..256].to_vec();
    // Every place is written below: what the room held is not read.
    room.clear();
    room.resize(n, (0, 0, 0, 0));
    for e in elements.iter().chain(&more) {
        let at = &mut next[bucket(e)];
        room[*at] = *e;
        *at += 1;
    }
    drop(more);
    std::mem::swap(elements, room);
    let bounds = starts.clone();
    for b in 0..256 {
        by_bits(
            &mut elements[bounds[b]..bounds[b + 1]],
            8,
            &mut starts,
            &mut next,
        );
    }
}

/// Where each of `buckets` buckets starts among `elements` placed by `bucket`, and where the
/// last ends, in `starts`.
fn bucket_starts<'a>(
    elements: impl Iterator<Item = &'a (u64, u64, u64, u64)>,
    buckets: usize,
    bucket: impl Fn(&(u64, u64, u64, u64)) -> usize,
    starts: &mut Vec<usize>,
) {
    starts.clear();
    starts.resize(buckets + 1, 0);
    for e in elements {
        starts[bucket(e) + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
}

/// The most elements of a cell joined in room of their own (4 Mi: 128 MiB a thread).
const JOINED: usize = 1 << 22;

/// Below this many elements, a bucket is sorted whole.
const SMALL: usize = 64;

/// [`sort_by_name`]'s rounds over elements of one table whose names agree in their top `used`
/// bits.
fn by_bits(
    elements: &mut [(u64, u64, u64, u64)],
    used: u32,
    starts: &mut Vec<usize>,
    next: &mut Vec<usize>,
) {
    let n = elements.len();
    if n < SMALL || used >= 48 {
        elements.sort_unstable();
        return;
    }
    // Within a core's caches: about four elements a bucket, at most 2^13 buckets.
    let last = n <= 1 << 15;
    let bits = match last {
        true => (n / 4).next_power_of_two().trailing_zeros().clamp(1, 13),
        false => 8,
    };
    let (shift, mask) = (64 - used - bits, (1u64 << bits) - 1);
    let bucket = |e: &(u64, u64, u64, u64)| ((e.1 >> shift) & mask) as usize;
    let buckets = 1usize << bits;
    bucket_starts(elements.iter(), buckets, bucket, starts);
    next.clear();
    next.extend_from_slice(&starts[..buckets]);
    for b in 0..buckets {
        while next[b] < starts[b + 1] {
            let mut e = elements[next[b]];
            loop {
                let to = bucket(&e);
                if to == b {
                    break;
                }
                std::mem::swap(&mut e, &mut elements[next[to]]);
                next[to] += 1;
            }
            elements[next[b]] = e;
            next[b] += 1;
        }
    }
    let bounds = std::mem::take(starts);
    for b in 0..buckets {
        let of = &mut elements[bounds[b]..bounds[b + 1]];
        match last {
            true => of.sort_unstable(),
            false => by_bits(of, used + bits, starts, next),
        }
    }
    *starts = bounds;
}

/// A test's stream of numbers: xorshift64 from `seed` (not zero), the same on every run.
#[cfg(test)]
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
mod sharing {
    use super::*;

    #[test]
    fn a_cell_taken_in_two_shares_has_the_facts_of_one_taken_whole() {
        // Three measures: a count (part 0), a sum (part 1), and a sum above the cell's
        // minimum (part 2, its rows counted in part 0); the rule keeps the two largest parts.
        let adder = Adder {
            top: 2,
            privacy: None,
            counts: vec![true, false, false],
            measure_parts: vec![0, 1, 2],
            count_parts: vec![None, None, Some(0)],
        };
        let parts: Vec<[f64; 3]> = (0..40)
            .map(|i| {
                let i = f64::from(i);
                [1.0 + i % 3.0, (i * 7.0) % 11.0 - 5.0, i * 1.5]
            })
            .chain([[1.0, f64::NAN, 2.0], [2.0, 0.0, 0.0]])
            .collect();
        let cell = || Cell::empty(3, 2, vec![0.0, 0.0, 0.25], Box::default());
        let mut whole = cell();
        for p in &parts {
            adder.add(&mut whole, p);
        }
        // Every other subject in the share, as the buckets it claims are taken.
        let (mut mine, mut theirs) = (cell(), cell());
        for (i, p) in parts.iter().enumerate() {
            adder.add(if i % 2 == 0 { &mut mine } else { &mut theirs }, p);
        }
        theirs.elements.push((1, 2, 3, 1));
        adder.join(&mut mine, theirs);
        assert_eq!(mine.subjects, whole.subjects);
        assert_eq!(mine.contributors, whole.contributors);
        let bits = |tops: &[Vec<f64>]| -> Vec<Vec<u64>> {
            tops.iter()
                .map(|t| t.iter().map(|v| v.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(&mine.tops), bits(&whole.tops));
        assert!(
            whole.tops[1][0].is_nan(),
            "a part that is not a number is the largest"
        );
        for (a, b) in mine.bounded_totals.iter().zip(&whole.bounded_totals) {
            assert!(
                a.to_bits() == b.to_bits() || (a - b).abs() < 1e-9 || (a.is_nan() && b.is_nan())
            );
        }
        // The share's elements wait to be joined with the cell's when they are sorted.
        assert_eq!(mine.more, vec![(1, 2, 3, 1)]);
    }
}

#[cfg(test)]
mod sorting {
    use super::*;

    fn elements(cells: usize, each: usize) -> Vec<Elements> {
        // Few distinct (table, row, subject) per cell, so most elements repeat one before
        // them with another mask.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        (0..cells)
            .map(|_| {
                (0..each)
                    .map(|_| (next() % 2, next() % 5_000, next() % 3, 1 << (next() % 4)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_gate_memorys_elements_are_sorted_alike_on_one_thread_and_on_two() {
        let alone = elements(9, 20_000);
        let shared = alone.clone();
        let alone =
            sort_elements(alone.into_iter().map(|c| (c, Vec::new())).collect(), |c| c).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let shared = rt.block_on(async {
            // Each cell's second half taken apart, as a share of the tally takes it.
            let halves: Vec<(Elements, Elements)> = shared
                .into_iter()
                .map(|mut c| {
                    let more = c.split_off(c.len() / 2);
                    (c, more)
                })
                .collect();
            sort_elements(halves, |c| c).unwrap()
        });
        assert_eq!(alone, shared);
        for cell in &alone {
            assert!(
                cell.windows(2)
                    .all(|w| (w[0].0, w[0].1, w[0].2) < (w[1].0, w[1].1, w[1].2))
            );
            // Every repeat's mask joined: the cells here name at most 30,000 elements.
            assert!(cell.len() <= 30_000 && cell.iter().any(|e| e.3.count_ones() > 1));
        }
    }

    #[test]
    fn a_measures_largest_parts_are_kept_with_those_that_are_not_numbers_first() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for top in [0, 1, 2, 5] {
            let parts: Vec<f64> = (0..2_000)
                .map(|_| match next() % 50 {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    r => (r % 7) as f64 * 1.5,
                })
                .collect();
            let mut kept = Vec::new();
            for p in &parts {
                keep_top(&mut kept, *p, top);
            }
            // Descending, the parts that are not numbers first, as many as `top`.
            let mut expected = parts.clone();
            expected.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                (false, false) => b.total_cmp(a),
            });
            expected.truncate(top);
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&kept), bits(&expected), "top {top}");
        }
    }

    #[test]
    fn a_cells_elements_of_one_mask_make_the_sets_each_measure_would() {
        let elements: Vec<(u64, u64, u64, u64)> =
            (0..100u64).map(|i| (1, i * 7, i % 13, 0b1011)).collect();
        for value_bits in [0, 0b1, 0b10, 0b1000, 0b100, u64::MAX] {
            assert_eq!(
                sets_of(&elements, value_bits),
                sets_by_measure(&elements, 0b1011, value_bits)
            );
        }
        // Masks that differ: a set per distinct membership.
        let mut mixed = elements.clone();
        mixed[5].3 = 0b1;
        let (sets, _) = sets_of(&mixed, 0);
        assert_eq!(sets.len(), 2);
        assert_eq!(sets_of(&[], 1), (Vec::new(), 0));
    }

    #[test]
    fn elements_sorted_by_their_names_are_in_the_order_of_a_sort() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut cases: Vec<Elements> = Vec::new();
        // Spread names, of every size around the thresholds, with repeats.
        for n in [0, 1, 63, 64, 65, 1_000, 32_768, 32_769, 200_000] {
            cases.push(
                (0..n)
                    .map(|_| (1, next() | 1 << 63, next() % 50, 1 << (next() % 3)))
                    .collect(),
            );
        }
        // Names that do not spread: one name, or names that differ in their low bits only.
        cases.push((0..70_000).map(|i| (2, 7, i % 9, 1)).collect());
        cases.push((0..70_000).map(|_| (2, next() % 16, next(), 1)).collect());
        // Two tables.
        cases.push((0..5_000).map(|_| (next() % 2, next(), 1, 1)).collect());
        for case in cases {
            let mut expected = case.clone();
            expected.sort_unstable();
            let mut sorted = case;
            sort_by_name(&mut sorted);
            assert!(sorted == expected, "{} elements", sorted.len());
        }
    }

    #[test]
    fn a_cells_elements_joined_with_more_are_in_the_order_of_a_sort() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        let mut spread = |n: usize, table: u64| -> Elements {
            (0..n)
                .map(|_| (table, next(), next() % 50, 1 << (next() % 3)))
                .collect()
        };
        let mut cases: Vec<(Elements, Elements)> = Vec::new();
        // Around the size where the join places them, either half empty, repeats across
        // the halves.
        for (a, b) in [
            (0, 0),
            (10, 0),
            (0, 40_000),
            (16_384, 16_384),
            (16_384, 16_385),
        ] {
            cases.push((spread(a, 1), spread(b, 1)));
        }
        let half = spread(150_000, 3);
        cases.push((half.clone(), half[..70_000].to_vec()));
        // Names that do not spread; a second table in the other half.
        cases.push((
            (0..40_000).map(|i| (2, 7, i % 9, 1)).collect(),
            spread(5, 2),
        ));
        cases.push((spread(40_000, 1), spread(3, 2)));
        // One room for every case, as a thread uses it for every cell.
        let mut room = Vec::new();
        for (mine, more) in cases {
            let mut expected = [mine.clone(), more.clone()].concat();
            expected.sort_unstable();
            let mut sorted = mine;
            sort_joined(&mut sorted, more, &mut room);
            assert!(sorted == expected, "{} elements", sorted.len());
        }
    }
}

/// One table's elements of a cell (sorted, without repeats): a set per measure bit (equal
/// sets once), and which of them are a sum's rows.
fn sets_of(elements: &[(u64, u64, u64, u64)], value_bits: u64) -> (Vec<SubjectSet>, u64) {
    let used = elements.iter().fold(0u64, |m, e| m | e.3);
    // Every element adds to every measure that any adds to (nearly always): one set, made
    // once, as the sets by measure would all be it.
    if !elements.is_empty() && elements.iter().all(|e| e.3 == used) {
        let set: SubjectSet = elements.iter().map(|e| (e.1, e.2)).collect();
        return (vec![set], u64::from(used & value_bits != 0));
    }
    sets_by_measure(elements, used, value_bits)
}

/// [`sets_of`] a set per measure bit, each made and compared with those before.
fn sets_by_measure(
    elements: &[(u64, u64, u64, u64)],
    used: u64,
    value_bits: u64,
) -> (Vec<SubjectSet>, u64) {
    let mut sets: Vec<SubjectSet> = Vec::new();
    let mut values = 0u64;
    for bit in 0..TABLE_SHIFT {
        if used & (1 << bit) == 0 {
            continue;
        }
        let set: SubjectSet = elements
            .iter()
            .filter(|e| e.3 & (1 << bit) != 0)
            .map(|e| (e.1, e.2))
            .collect();
        let at = match sets.iter().position(|s| *s == set) {
            Some(at) => at,
            None => {
                sets.push(set);
                sets.len() - 1
            }
        };
        if value_bits & (1 << bit) != 0 && at < 64 {
            values |= 1 << at;
        }
    }
    (sets, values)
}

/// `__tg_row_element(adds_0, .., adds_m-1, branch, stored_0, .., stored_u-1, unit_0, ..,
/// unit_u-1)`: one row of a contribution as 16 bytes: the stored row its subject's own scan
/// (unit `branch`) read (0 when its table stored none) and a mask of the measures it adds to,
/// with that scan's table above [`TABLE_SHIFT`]. A stored row that an earlier unit of the same
/// input row also read (a row joined to itself; without row identities, the same subject's
/// row of the same table) has no measures: every input row counts each of its stored rows
/// once, so a row read twice (a UNION ALL, a join with two partners) is counted twice. Built
/// by the analysis only: no query can call it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RowElement {
    measures: usize,
    /// Per unit, the table its scan reads.
    tables: Vec<u64>,
    signature: datafusion::logical_expr::Signature,
}

impl RowElement {
    fn new(measures: usize, tables: Vec<u64>) -> RowElement {
        RowElement {
            measures,
            tables,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for RowElement {
    fn name(&self) -> &str {
        hidden::ROW_ELEMENT_FUNCTION
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::FixedSizeBinary(16))
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let units = self.tables.len();
        if arrays.len() != self.measures + 1 + 2 * units {
            return Err(datafusion::error::DataFusionError::Internal(
                "row element: measures, a branch, a row and a subject per unit".into(),
            ));
        }
        let (adds, rest) = arrays.split_at(self.measures);
        // Each measure's rows that add to it: true, not NULL.
        let adds = adds
            .iter()
            .map(|a| {
                let a = arrow::compute::cast(a, &DataType::Boolean)?;
                let a = a.as_boolean();
                Ok(match a.nulls() {
                    Some(nulls) => a.values() & nulls.inner(),
                    None => a.values().clone(),
                })
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let branch = arrow::compute::cast(&rest[0], &DataType::UInt64)?;
        let branch = branch.as_primitive::<arrow::datatypes::UInt64Type>();
        // Subjects are compared only between units: with one unit, none is read.
        let subjects = match units {
            0 | 1 => Vec::new(),
            _ => rest[1 + units..]
                .iter()
                .map(|a| arrow::compute::cast(a, &DataType::Utf8))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        };
        let subjects: Vec<&arrow::array::StringArray> =
            subjects.iter().map(|a| a.as_string::<i32>()).collect();
        let subject_at = |u: usize, i: usize| subjects[u].is_valid(i).then(|| subjects[u].value(i));
        let stored = rest[1..1 + units]
            .iter()
            .map(|a| arrow::compute::cast(a, &DataType::UInt64))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let stored: Vec<&arrow::array::UInt64Array> = stored
            .iter()
            .map(|a| a.as_primitive::<arrow::datatypes::UInt64Type>())
            .collect();
        let row_at = |u: usize, i: usize| stored[u].is_valid(i).then(|| stored[u].value(i));
        let mut out = Vec::with_capacity(n * ELEMENT);
        for i in 0..n {
            let b = if branch.is_valid(i) {
                branch.value(i) as usize
            } else {
                usize::MAX
            };
            let Some(&table) = self.tables.get(b) else {
                return Err(datafusion::error::DataFusionError::Internal(
                    "row element: no such unit".into(),
                ));
            };
            let row = row_at(b, i);
            let again = (0..b).any(|u| {
                self.tables[u] == table
                    && row_at(u, i) == row
                    && (row.is_some()
                        || subject_at(u, i).is_some() && subject_at(u, i) == subject_at(b, i))
            });
            let mut mask = 0u64;
            if !again {
                for (bit, a) in adds.iter().enumerate() {
                    if a.value(i) {
                        mask |= 1 << bit;
                    }
                }
            }
            let identity = row.map_or(0, |r| r.max(1));
            mask |= table.min(0xffff) << TABLE_SHIFT;
            out.extend_from_slice(&identity.to_le_bytes());
            out.extend_from_slice(&mask.to_le_bytes());
        }
        let out = arrow::array::FixedSizeBinaryArray::try_new(
            ELEMENT as i32,
            arrow::buffer::Buffer::from_vec(out),
            None,
        )?;
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            out,
        )))
    }
}

/// Per output column of `plan`, the columns of table scans it is computed from, followed by
/// position through projections, group keys, joins, unions and aliases (not by name, so a
/// rename changes nothing); an aggregate's value has none. A node this does not know gives
/// every column of its scans.
pub(crate) fn column_sources(
    plan: &LogicalPlan,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for (i, f) in plan.schema().fields().iter().enumerate() {
        if is_reserved(f.name()) {
            continue;
        }
        let mut found = BTreeSet::new();
        sources_of(plan, i, &mut found, 0);
        out.insert(f.name().clone(), found.into_iter().collect());
    }
    out
}

fn sources_of(plan: &LogicalPlan, field: usize, out: &mut BTreeSet<String>, depth: usize) {
    // Every column the expression reads, by its position in `input`; read inside the
    // runtime's own `tg_pseudonym` or `tg_mask`, as `function:column` (already masked so).
    fn through(e: &Expr, input: &LogicalPlan, out: &mut BTreeSet<String>, depth: usize) {
        fn collect(e: &Expr, inside: Option<&str>, out: &mut Vec<(Option<String>, Column)>) {
            let _ = e.apply(|n| match n {
                Expr::ScalarFunction(f)
                    if inside.is_none() && matches!(f.name(), "tg_pseudonym" | "tg_mask") =>
                {
                    for a in &f.args {
                        collect(a, Some(f.name()), out);
                    }
                    Ok(TreeNodeRecursion::Jump)
                }
                Expr::Column(c) => {
                    out.push((inside.map(str::to_string), c.clone()));
                    Ok(TreeNodeRecursion::Continue)
                }
                _ => Ok(TreeNodeRecursion::Continue),
            });
        }
        let mut read = Vec::new();
        collect(e, None, &mut read);
        for (inside, c) in read {
            let mut found = BTreeSet::new();
            match input.schema().index_of_column(&c) {
                Ok(i) => sources_of(input, i, &mut found, depth + 1),
                Err(_) => all_scanned(input, &mut found),
            }
            for source in found {
                out.insert(match &inside {
                    Some(f) if !source.contains(':') => format!("{f}:{source}"),
                    _ => source,
                });
            }
        }
    }
    if depth > 256 {
        return all_scanned(plan, out);
    }
    match plan {
        LogicalPlan::TableScan(scan) => {
            if let Some(f) = scan.projected_schema.fields().get(field) {
                out.insert(f.name().clone());
            }
        }
        LogicalPlan::Projection(p) => match p.expr.get(field) {
            Some(e) => through(e, &p.input, out, depth),
            None => all_scanned(plan, out),
        },
        // A group key is its columns' values; an aggregate's value is a count or a total,
        // which no rule for the columns it reads (a pseudonym, a mask) is meant for.
        LogicalPlan::Aggregate(a) => {
            if let Some(e) = a.group_expr.get(field) {
                through(e, &a.input, out, depth);
            }
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Distinct(_)
        | LogicalPlan::Repartition(_) => {
            for input in plan.inputs() {
                sources_of(input, field, out, depth + 1);
            }
        }
        LogicalPlan::Union(u) => {
            for input in &u.inputs {
                sources_of(input, field, out, depth + 1);
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                datafusion::common::JoinType::LeftSemi
                | datafusion::common::JoinType::LeftAnti
                | datafusion::common::JoinType::LeftMark => {
                    sources_of(&j.left, field, out, depth + 1)
                }
                datafusion::common::JoinType::RightSemi
                | datafusion::common::JoinType::RightAnti
                | datafusion::common::JoinType::RightMark => {
                    sources_of(&j.right, field, out, depth + 1)
                }
                _ if field < left => sources_of(&j.left, field, out, depth + 1),
                _ => sources_of(&j.right, field - left, out, depth + 1),
            }
        }
        other => all_scanned(other, out),
    }
}

/// Every column of every scan under `plan`.
fn all_scanned(plan: &LogicalPlan, out: &mut BTreeSet<String>) {
    let _ = plan.apply(|n| {
        if let LogicalPlan::TableScan(scan) = n {
            out.extend(
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone()),
            );
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// The implementations of DataFusion's own aggregate functions, by type.
static BUILTIN_AGGREGATES: std::sync::LazyLock<std::collections::HashSet<std::any::TypeId>> =
    std::sync::LazyLock::new(|| {
        datafusion::execution::SessionStateDefaults::default_aggregate_functions()
            .iter()
            .map(|f| {
                let any: &dyn std::any::Any = f.inner().as_ref();
                any.type_id()
            })
            .collect()
    });

/// What an aggregate of the plan is, by its implementation, never by the name it goes by:
/// DataFusion's own (its name then says which), or a module's function, which no rule of a
/// built-in applies to.
/// Returns the name a rule knows it by, and whether it is a module's.
pub(crate) fn aggregate_identity(f: &datafusion::logical_expr::AggregateUDF) -> (String, bool) {
    let any: &dyn std::any::Any = f.inner().as_ref();
    if BUILTIN_AGGREGATES.contains(&any.type_id()) {
        (f.name().to_ascii_lowercase(), false)
    } else {
        (format!("{} (a module's function)", f.name()), true)
    }
}
