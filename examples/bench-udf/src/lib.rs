//! The benchmark workloads as guest functions: memory-bound, compute-bound and string.

/// x + 1: memory-bound.
pub fn plus_one(x: f64) -> Option<f64> {
    Some(x + 1.0)
}

/// Greatest common divisor by Euclid's algorithm: compute-bound.
pub fn int_gcd(a: i64, b: i64) -> Option<i64> {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a).ok()
}

/// The first 3 and last 4 characters of a mobile number, the middle masked.
pub fn mask_mobile(mobile: &str) -> Option<String> {
    let b = mobile.as_bytes();
    if b.len() != 11 || !mobile.is_ascii() {
        return None;
    }
    let mut out = String::with_capacity(11);
    out.push_str(&mobile[..3]);
    out.push_str("****");
    out.push_str(&mobile[7..]);
    Some(out)
}

/// Sum of squares per group: the aggregate workload.
#[derive(Default)]
pub struct SumSquares(f64);

impl tidegate_udf_sdk::Aggregate for SumSquares {
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

tidegate_udf_sdk::export_udfs! {
    scalar fn plus_one(x: f64) -> f64;
    scalar fn int_gcd(a: i64, b: i64) -> i64;
    scalar fn mask_mobile(mobile: &str) -> String;
    aggregate sum_sq = SumSquares;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workloads_compute_what_they_say() {
        assert_eq!(plus_one(1.5), Some(2.5));
        assert_eq!(int_gcd(12, -18), Some(6));
        assert_eq!(mask_mobile("13812345678").as_deref(), Some("138****5678"));
    }
}
