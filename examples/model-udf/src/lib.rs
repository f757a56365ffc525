//! A whole-model job as a table function: `standardize` sees every value of a column before
//! it writes any row (it needs the mean and the spread), then writes each value's z-score with
//! its group label.
//!
//! ```sql
//! SELECT label, count(*) AS n, avg(z) AS mean_z
//! FROM standardize('visits', 'spend', 'spot') GROUP BY label
//! ```

use tidegate_udf_sdk::{Batch, Rows, TableFunction, Type};

#[derive(Default)]
pub struct Standardize {
    rows: Vec<(Option<f64>, Option<String>)>,
}

impl TableFunction for Standardize {
    fn input() -> Vec<Type> {
        vec![Type::Float64, Type::Utf8]
    }

    fn output() -> Vec<(&'static str, Type)> {
        vec![("label", Type::Utf8), ("z", Type::Float64)]
    }

    fn push(&mut self, batch: &Batch<'_>, _out: &mut Rows) -> Result<(), String> {
        let (x, label) = (batch.column(0), batch.column(1));
        for row in 0..batch.n_rows {
            self.rows.push((
                x.value::<f64>(row),
                label.value::<&str>(row).map(str::to_string),
            ));
        }
        Ok(())
    }

    fn close(&mut self, out: &mut Rows) -> Result<(), String> {
        let (n, z) = standardize(self.rows.iter().map(|(x, _)| *x));
        for ((_, label), z) in self.rows.drain(..).zip(z) {
            out.push(0, label)?;
            out.push(1, if n > 1 { z } else { None })?;
        }
        Ok(())
    }
}

/// The z-scores of the values (NULL stays NULL), and how many values there were.
pub fn standardize(values: impl Iterator<Item = Option<f64>> + Clone) -> (usize, Vec<Option<f64>>) {
    let present: Vec<f64> = values.clone().flatten().collect();
    let n = present.len();
    let mean = present.iter().sum::<f64>() / n.max(1) as f64;
    let var =
        present.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n.saturating_sub(1).max(1) as f64;
    let sd = var.sqrt();
    let z = values
        .map(|x| x.filter(|_| sd > 0.0).map(|x| (x - mean) / sd))
        .collect();
    (n, z)
}

tidegate_udf_sdk::export_udfs! {
    table standardize = Standardize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_scores_have_mean_zero_and_keep_nulls() {
        let (n, z) = standardize([Some(1.0), None, Some(3.0), Some(5.0)].into_iter());
        assert_eq!(n, 3);
        assert_eq!(z[1], None);
        assert_eq!(z[0], Some(-1.0));
        assert_eq!(z[3], Some(1.0));
    }
}
