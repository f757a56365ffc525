//! Sensitive data detection (DOMAIN.md section 3): pattern, then validation, then confidence.
//!
//! Digit runs are found by hand rather than with `\b`, so a number inside Chinese text
//! ("身份证号110105...") is still found, and a number inside a longer run of digits is not.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The sensitive data types of DOMAIN.md section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveType {
    ResidentId,
    Mobile,
    Landline,
    BankCard,
    CreditCode,
    Plate,
    Passport,
    Email,
    Ip,
    Name,
    Address,
    Gps,
    MedicalRecord,
}

impl SensitiveType {
    const ALL: [SensitiveType; 13] = [
        SensitiveType::ResidentId,
        SensitiveType::Mobile,
        SensitiveType::Landline,
        SensitiveType::BankCard,
        SensitiveType::CreditCode,
        SensitiveType::Plate,
        SensitiveType::Passport,
        SensitiveType::Email,
        SensitiveType::Ip,
        SensitiveType::Name,
        SensitiveType::Address,
        SensitiveType::Gps,
        SensitiveType::MedicalRecord,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SensitiveType::ResidentId => "resident_id",
            SensitiveType::Mobile => "mobile",
            SensitiveType::Landline => "landline",
            SensitiveType::BankCard => "bank_card",
            SensitiveType::CreditCode => "credit_code",
            SensitiveType::Plate => "plate",
            SensitiveType::Passport => "passport",
            SensitiveType::Email => "email",
            SensitiveType::Ip => "ip",
            SensitiveType::Name => "name",
            SensitiveType::Address => "address",
            SensitiveType::Gps => "gps",
            SensitiveType::MedicalRecord => "medical_record",
        }
    }
}

impl fmt::Display for SensitiveType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SensitiveType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SensitiveType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown sensitive data type `{s}`"))
    }
}

/// One finding in a value. `certain` is false for a well-formed value that fails validation:
/// it is "uncertain", never "clean".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub kind: SensitiveType,
    pub certain: bool,
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";
/// Province-level prefixes of resident ID numbers (GB/T 2260).
const PROVINCES: [u32; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82,
];

/// The ISO 7064 MOD 11-2 check character of the first 17 digits of a resident ID number.
pub fn resident_id_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 || !first17.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    Some(ID_CHECK[(sum % 11) as usize])
}

fn num(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
}

fn real_date(year: u32, month: u32, day: u32) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// Shape of an 18-character resident ID: province, real birth date, 1900-2099.
fn id18_shape(c: &[u8]) -> bool {
    c.len() == 18
        && c[..17].iter().all(u8::is_ascii_digit)
        && (c[17].is_ascii_digit() || c[17] == b'X' || c[17] == b'x')
        && PROVINCES.contains(&num(&c[0..2]))
        && matches!(num(&c[6..8]), 19 | 20)
        && real_date(num(&c[6..10]), num(&c[10..12]), num(&c[12..14]))
}

fn id15_shape(c: &[u8]) -> bool {
    c.len() == 15
        && c.iter().all(u8::is_ascii_digit)
        && PROVINCES.contains(&num(&c[0..2]))
        && real_date(1900 + num(&c[6..8]), num(&c[8..10]), num(&c[10..12]))
}

/// Every sensitive value found in `value`, by type (each type reported once).
pub fn scan_value(value: &str) -> Vec<Detection> {
    let bytes = value.as_bytes();
    let mut found: Vec<Detection> = Vec::new();
    let mut push = |d: Detection| {
        if let Some(existing) = found.iter_mut().find(|e| e.kind == d.kind) {
            existing.certain |= d.certain;
        } else {
            found.push(d);
        }
    };
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // A maximal run of digits, with a trailing X allowed for resident IDs.
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let mut end = i;
        if end - start == 17 && end < bytes.len() && (bytes[end] == b'X' || bytes[end] == b'x') {
            end += 1;
            i = end;
        }
        let run = &bytes[start..end];
        match run.len() {
            18 if id18_shape(run) => {
                let certain = resident_id_check_char(&run[..17])
                    .is_some_and(|c| c == run[17].to_ascii_uppercase());
                push(Detection {
                    kind: SensitiveType::ResidentId,
                    certain,
                });
            }
            15 if id15_shape(run) => push(Detection {
                kind: SensitiveType::ResidentId,
                certain: false,
            }),
            11 if run[0] == b'1' && (b'3'..=b'9').contains(&run[1]) => push(Detection {
                kind: SensitiveType::Mobile,
                certain: true,
            }),
            13 if run.starts_with(b"86") && run[2] == b'1' && (b'3'..=b'9').contains(&run[3]) => {
                push(Detection {
                    kind: SensitiveType::Mobile,
                    certain: true,
                })
            }
            _ => {}
        }
    }
    found
}

/// The default mask of DOMAIN.md section 3 for a value of the given type.
pub fn mask(kind: SensitiveType, value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let keep = |first: usize, last: usize| -> String {
        if chars.len() <= first + last {
            return "*".repeat(chars.len());
        }
        let mut out: String = chars[..first].iter().collect();
        out.extend(std::iter::repeat_n('*', chars.len() - first - last));
        out.extend(&chars[chars.len() - last..]);
        out
    };
    match kind {
        SensitiveType::ResidentId | SensitiveType::Mobile => keep(3, 4),
        SensitiveType::Landline => keep(4, 2),
        SensitiveType::BankCard => keep(6, 4),
        SensitiveType::CreditCode => keep(8, 0),
        SensitiveType::Plate => keep(3, 1),
        SensitiveType::Passport => keep(2, 3),
        _ => "*".repeat(chars.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, expected: &[(SensitiveType, bool)]) {
        let got: Vec<(SensitiveType, bool)> = scan_value(value)
            .into_iter()
            .map(|d| (d.kind, d.certain))
            .collect();
        assert_eq!(got, expected, "scanning {value:?}");
    }

    #[test]
    fn resident_id_with_valid_check_digit_is_certain() {
        check("11010519491231002X", &[(SensitiveType::ResidentId, true)]);
        check("11010519491231002x", &[(SensitiveType::ResidentId, true)]);
    }

    #[test]
    fn resident_id_with_wrong_check_digit_is_uncertain_not_clean() {
        check("110105194912310021", &[(SensitiveType::ResidentId, false)]);
    }

    #[test]
    fn resident_id_inside_chinese_text_is_found() {
        check(
            "身份证号11010519491231002X，请核对",
            &[(SensitiveType::ResidentId, true)],
        );
    }

    #[test]
    fn impossible_birth_date_or_province_is_not_an_id() {
        check("110105194902301234", &[]);
        check("990105194912310021", &[]);
    }

    #[test]
    fn legacy_fifteen_digit_id_is_uncertain() {
        check("110105491231002", &[(SensitiveType::ResidentId, false)]);
    }

    #[test]
    fn mobile_numbers_with_and_without_country_code() {
        check("13812345678", &[(SensitiveType::Mobile, true)]);
        check("+8613812345678", &[(SensitiveType::Mobile, true)]);
        check("联系电话:13812345678。", &[(SensitiveType::Mobile, true)]);
    }

    #[test]
    fn digits_inside_a_longer_run_are_not_a_mobile() {
        check("9913812345678123", &[]);
        check("12812345678", &[]);
    }

    #[test]
    fn ordinary_values_are_clean() {
        check("West Lake", &[]);
        check("2026-11-27", &[]);
        check("1234.5", &[]);
    }

    #[test]
    fn check_char_of_the_reference_number() {
        assert_eq!(resident_id_check_char(b"11010519491231002"), Some(b'X'));
    }

    #[test]
    fn masks_keep_what_domain_md_says() {
        assert_eq!(
            mask(SensitiveType::ResidentId, "11010519491231002X"),
            "110***********002X"
        );
        assert_eq!(mask(SensitiveType::Mobile, "13812345678"), "138****5678");
    }
}
