//! Example UDFs over the demo's scenic-spot visitor records, built with `tidegate-udf-sdk`.

use tidegate_udf_sdk::{Date32, Decimal, Timestamp, date::civil_from_days};

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

/// The hour of the day (0-23, UTC) of a time of payment or entry.
pub fn visit_hour(at: Timestamp) -> Option<i32> {
    Some(
        at.0.rem_euclid(Timestamp::MICROS_PER_DAY)
            .div_euclid(3_600_000_000) as i32,
    )
}

/// A ticket price after the off-season discount of 10%, to the cent: exact, no float.
pub fn off_season(price: Decimal) -> Option<Decimal> {
    Some(Decimal(price.0 / 10 * 9).round(2))
}

tidegate_udf_sdk::export_udfs! {
    scalar fn age_at_visit(resident_id: &str, visit: Date32) -> i32;
    scalar fn mask_mobile(mobile: &str) -> String;
    scalar fn visit_hour(at: Timestamp) -> i32;
    scalar fn off_season(price: Decimal) -> Decimal;
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
    fn the_hour_is_read_in_utc_and_the_discount_is_exact_to_the_cent() {
        // 2026-05-17T10:23:45Z.
        let at = Timestamp(1_779_013_425_000_000);
        assert_eq!(visit_hour(at), Some(10));
        assert_eq!(visit_hour(Timestamp(-1)), Some(23));
        // 19.99 less 10% is 17.991, to the cent 17.99; 0.05 less 10% is 0.045, to 0.05.
        assert_eq!(off_season(Decimal(19_990_000)), Some(Decimal(17_990_000)));
        assert_eq!(off_season(Decimal(50_000)), Some(Decimal(50_000)));
    }

    #[test]
    fn mobile_is_masked_in_the_middle() {
        assert_eq!(mask_mobile("13812345678").as_deref(), Some("138****5678"));
    }
}
