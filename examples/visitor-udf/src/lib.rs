//! Example UDFs over the demo's scenic-spot visitor records, built with `tidegate-udf-sdk`.

use tidegate_udf_sdk::{Date32, date::civil_from_days};

/// Age in whole years at the visit, from the birth date inside an 18-digit resident ID.
pub fn age_at_visit(resident_id: &str, visit: Date32) -> Option<i32> {
    let id = resident_id.as_bytes();
    if id.len() != 18 || !id[6..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| {
        id[r]
            .iter()
            .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'))
    };
    let (by, bm, bd) = (n(6..10), n(10..12) as u32, n(12..14) as u32);
    let (vy, vm, vd) = civil_from_days(visit.0);
    let age = vy - by - i32::from((vm, vd) < (bm, bd));
    (0..=150).contains(&age).then_some(age)
}

/// A mobile number with the middle four digits masked, as DOMAIN.md's default mask.
pub fn mask_mobile(mobile: &str) -> Option<String> {
    let chars: Vec<char> = mobile.chars().collect();
    if chars.len() != 11 {
        return None;
    }
    Some(format!(
        "{}****{}",
        chars[..3].iter().collect::<String>(),
        chars[7..].iter().collect::<String>()
    ))
}

tidegate_udf_sdk::export_udfs! {
    scalar fn age_at_visit(resident_id: &str, visit: Date32) -> i32;
    scalar fn mask_mobile(mobile: &str) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_whole_years_at_the_visit_date() {
        // 2026-11-27 is day 20784; the holder was born 1949-12-31.
        assert_eq!(age_at_visit("11010519491231002X", Date32(20_784)), Some(76));
        // 2026-12-31 is day 20818: the birthday has come.
        assert_eq!(age_at_visit("11010519491231002X", Date32(20_818)), Some(77));
        assert_eq!(age_at_visit("not an id", Date32(0)), None);
    }

    #[test]
    fn mobile_is_masked_in_the_middle() {
        assert_eq!(mask_mobile("13812345678").as_deref(), Some("138****5678"));
    }
}
