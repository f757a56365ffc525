//! Aggregate functions as a guest: each keeps a state per group, which the host updates with
//! batches and group indices, merges across partitions and evaluates (see `udf-sdk/ABI.md`).
//! Written with the SDK's attribute macros: `#[udfs]` on the module, a marker on each item.
//!
//! ```sql
//! SELECT spot, sum_sq(spend) AS s, geo_mean(spend) AS g FROM visits GROUP BY spot
//! ```

pub use udfs::*;

#[tidegate_udf_sdk::udfs]
pub mod udfs {
    use tidegate_udf_sdk::Aggregate;

    /// The sum of squares of the values.
    #[aggregate(name = "sum_sq")]
    #[derive(Default)]
    pub struct SumSquares(f64);

    impl Aggregate for SumSquares {
        type Arg = f64;
        type Out = f64;
        type State = (f64,);
        fn update(&mut self, x: f64) {
            self.0 += x * x;
        }
        fn merge(&mut self, (s,): (f64,)) {
            self.0 += s;
        }
        fn state(&self) -> (f64,) {
            (self.0,)
        }
        fn finish(&self) -> Option<f64> {
            Some(self.0)
        }
    }

    /// The geometric mean of the positive values; NULL for a group without one.
    #[aggregate]
    #[derive(Default)]
    pub struct GeoMean {
        log_sum: f64,
        n: i64,
    }

    impl Aggregate for GeoMean {
        type Arg = f64;
        type Out = f64;
        type State = (f64, i64);
        fn update(&mut self, x: f64) {
            if x > 0.0 {
                self.log_sum += x.ln();
                self.n += 1;
            }
        }
        fn merge(&mut self, (log_sum, n): (f64, i64)) {
            self.log_sum += log_sum;
            self.n += n;
        }
        fn state(&self) -> (f64, i64) {
            (self.log_sum, self.n)
        }
        fn finish(&self) -> Option<f64> {
            (self.n > 0).then(|| (self.log_sum / self.n as f64).exp())
        }
    }

    /// The largest value: one row's value, so the export gate releases it only from L1 data.
    #[aggregate]
    #[derive(Default)]
    pub struct Largest(Option<i64>);

    impl Aggregate for Largest {
        type Arg = i64;
        type Out = i64;
        /// The largest value so far and whether there is one (a partition may have seen none).
        type State = (i64, bool);
        fn update(&mut self, x: i64) {
            self.0 = Some(self.0.map_or(x, |m| m.max(x)));
        }
        fn merge(&mut self, (m, seen): (i64, bool)) {
            if seen {
                self.update(m);
            }
        }
        fn state(&self) -> (i64, bool) {
            (self.0.unwrap_or(0), self.0.is_some())
        }
        fn finish(&self) -> Option<i64> {
            self.0
        }
    }

    /// The mean of the values weighted by a count: two arguments.
    #[aggregate]
    #[derive(Default)]
    pub struct WeightedMean {
        sum: f64,
        weight: f64,
    }

    impl Aggregate for WeightedMean {
        type Arg = (f64, i64);
        type Out = f64;
        type State = (f64, f64);
        fn update(&mut self, (x, w): (f64, i64)) {
            self.sum += x * w as f64;
            self.weight += w as f64;
        }
        fn merge(&mut self, (sum, weight): (f64, f64)) {
            self.sum += sum;
            self.weight += weight;
        }
        fn state(&self) -> (f64, f64) {
            (self.sum, self.weight)
        }
        fn finish(&self) -> Option<f64> {
            (self.weight != 0.0).then(|| self.sum / self.weight)
        }
    }

    /// Doubles a value: a module may mix scalars and aggregates.
    #[scalar]
    pub fn double(x: f64) -> Option<f64> {
        Some(x * 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidegate_udf_sdk::Aggregate;

    fn fold<A: Aggregate>(xs: &[A::Arg]) -> A
    where
        A::Arg: Copy,
    {
        let mut a = A::default();
        for x in xs {
            a.update(*x);
        }
        a
    }

    #[test]
    fn partial_states_merge_to_the_whole() {
        let mut left = fold::<GeoMean>(&[1.0, 4.0]);
        left.merge(fold::<GeoMean>(&[16.0, -3.0]).state());
        assert!((left.finish().unwrap() - 4.0).abs() < 1e-12);
        let mut s = fold::<SumSquares>(&[1.0, 2.0]);
        s.merge(fold::<SumSquares>(&[3.0]).state());
        assert_eq!(s.finish(), Some(14.0));
        let mut m = fold::<Largest>(&[3, 9]);
        m.merge(Largest::default().state());
        assert_eq!(m.finish(), Some(9));
        assert_eq!(Largest::default().finish(), None);
    }
}
