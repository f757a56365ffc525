//! Mock datasets: a faithful stand-in for a dataset, generated from the public metadata its
//! provider declares for each column, never from its values, so that scientists can write and
//! test their code before they touch the real data.
//!
//! Generation is a pure function of the column, its metadata, the number of rows and a seed.
//! Identifiers are well-formed values of their type (DOMAIN.md section 3) that the policy's own
//! detectors accept, drawn at random from built-in lists and documentation ranges.

use std::collections::HashMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::detect::{SensitiveType, resident_id_check_char};
use crate::model::{ColumnSpec, ColumnTag, DataType, TimeUnit};

/// The most rows a mock may have: enough to test a module's speed and the gate's thresholds,
/// small enough to make on a request.
pub const MAX_MOCK_ROWS: u64 = 1_000_000;
/// The most categories a text column may declare.
const MAX_CATEGORIES: usize = 1_000;
/// The longest category, in bytes.
const MAX_CATEGORY_BYTES: usize = 200;
/// The default range of numbers when none is declared.
const DEFAULT_NUMBERS: (f64, f64) = (0.0, 1_000.0);
/// The default first day of dates and times: 2024-01-01, in days since 1970-01-01.
const DEFAULT_FIRST_DAY: i32 = 19_723;
/// The default last day of dates and times: 2026-12-31.
const DEFAULT_LAST_DAY: i32 = 20_818;
/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// The public metadata of one column, declared by its provider: all that a mock of the column
/// is made from. Scientists see it, so it must say nothing a real row would not already make
/// public to them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MockSpec {
    /// The share of rows that are NULL, from 0 to 1 (never applied to an entity column).
    pub null_rate: f64,
    /// The least value of a number column (default 0).
    pub min: Option<f64>,
    /// The greatest value of a number column (default 1,000).
    pub max: Option<f64>,
    /// The first day of a date or timestamp column, written `YYYY-MM-DD` (default 2024-01-01).
    pub min_date: Option<String>,
    /// The last day of a date or timestamp column, written `YYYY-MM-DD` (default 2026-12-31).
    pub max_date: Option<String>,
    /// The closed set of values of a text column, each drawn as often as the others.
    pub categories: Vec<String>,
    /// How many distinct values the column holds. Rows draw from that many stand-ins, so an
    /// entity column (default: a quarter of the rows) has several rows per subject.
    pub distinct: Option<u64>,
}

/// One generated value, in the representation of its column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum MockValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Counted in the column's unit since 1970-01-01T00:00:00 UTC.
    Timestamp(i64),
    /// The unscaled value: `12345` in a `decimal(7,2)` column is 123.45.
    Decimal(i128),
}

/// Checks a column's mock metadata, with a reason that names the column. Categories are refused
/// on a direct identifier: a list of its values would publish real identifiers.
pub fn check_mock_spec(column: &ColumnSpec, spec: &MockSpec) -> Result<(), String> {
    macro_rules! refuse {
        ($($why:tt)+) => {
            return Err(format!("column `{}`: {}", column.name, format_args!($($why)+)))
        };
    }
    let data_type = &column.data_type;
    if !(0.0..=1.0).contains(&spec.null_rate) {
        refuse!("a null rate is between 0 and 1, not {}", spec.null_rate);
    }
    for (what, bound) in [("min", spec.min), ("max", spec.max)] {
        let Some(value) = bound else { continue };
        if data_type.is_temporal() {
            refuse!("{data_type} columns take min_date and max_date (YYYY-MM-DD), not {what}");
        }
        if matches!(data_type, DataType::Utf8 | DataType::Boolean) {
            refuse!("{data_type} columns have no order: they take no {what}");
        }
        if !value.is_finite() {
            refuse!("{what} is a finite number, not {value}");
        }
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        refuse!("min {min} is above max {max}");
    }
    if let Some(whole) = whole_numbers(data_type) {
        let (type_lo, type_hi, factor) = whole;
        for (what, bound) in [("min", spec.min), ("max", spec.max)] {
            if let Some(value) = bound
                && !(type_lo as f64..=type_hi as f64).contains(&(value * factor))
            {
                refuse!("{what} {value} is outside what {data_type} can hold");
            }
        }
        let (lo, hi) = whole_range(spec, whole);
        if lo > hi {
            refuse!("no {data_type} value lies between min and max");
        }
    }
    for (what, day) in [("min_date", &spec.min_date), ("max_date", &spec.max_date)] {
        let Some(day) = day else { continue };
        if !data_type.is_temporal() {
            refuse!("{data_type} columns take no {what}");
        }
        if parse_day(day).is_none() {
            refuse!("{what} `{day}` is not a date written YYYY-MM-DD");
        }
    }
    let first = spec.min_date.as_deref().and_then(parse_day);
    let last = spec.max_date.as_deref().and_then(parse_day);
    if let (Some(first), Some(last)) = (first, last)
        && first > last
    {
        refuse!("min_date is after max_date");
    }
    let categories = &spec.categories;
    if !categories.is_empty() && *data_type != DataType::Utf8 {
        refuse!("categories are for text columns, not {data_type}");
    }
    // A list of an identifying column's values would publish them: only a dimension or a
    // plain column (places, kinds, bands) takes categories, and none that reads as an
    // identifier by the detectors' rules.
    if !categories.is_empty()
        && (column.is_identifier()
            || column.has_tag(ColumnTag::Entity)
            || column.has_tag(ColumnTag::Quasi))
    {
        refuse!(
            "an identifying column (pii, entity or quasi) takes no categories: the list would publish its values"
        );
    }
    if let Some(at) = categories
        .iter()
        .position(|c| crate::detect::scan_value(c).iter().any(|d| d.certain))
    {
        refuse!(
            "category {} reads as a direct identifier; categories are never identifiers",
            at + 1
        );
    }
    if categories.len() > MAX_CATEGORIES {
        refuse!(
            "at most {MAX_CATEGORIES} categories, not {}",
            categories.len()
        );
    }
    if let Some(at) = categories.iter().position(|c| c.len() > MAX_CATEGORY_BYTES) {
        refuse!(
            "category {} is longer than {MAX_CATEGORY_BYTES} bytes",
            at + 1
        );
    }
    if spec.distinct == Some(0) {
        refuse!("a column has at least 1 distinct value, not 0");
    }
    Ok(())
}

/// A mock of one column: `rows` values, the same for the same column name, spec, rows and seed
/// (the name is mixed into the seed, so two columns differ). Expects a spec that
/// [`check_mock_spec`] accepts; what it would refuse is clamped here, never a panic.
pub fn mock_column(column: &ColumnSpec, spec: &MockSpec, rows: usize, seed: u64) -> Vec<MockValue> {
    let base = column_seed(seed, &column.name);
    let mut rng = ChaCha8Rng::seed_from_u64(base);
    let entity = column.has_tag(ColumnTag::Entity);
    let rows_u64 = u64::try_from(rows).unwrap_or(u64::MAX);
    let declared = if entity {
        Some(spec.distinct.unwrap_or(rows_u64 / 4))
    } else {
        spec.distinct
    };
    let pool = declared.map(|d| d.max(1));
    let null_rate = if entity { 0.0 } else { spec.null_rate };
    // Each stand-in value is drawn once, from its own stream of the column's generator.
    let mut stand_ins: HashMap<u64, MockValue> = HashMap::new();
    (0..rows)
        .map(|_| {
            if null_rate > 0.0 && unit(&mut rng) < null_rate {
                return MockValue::Null;
            }
            let Some(pool) = pool else {
                return draw(column, spec, None, rows_u64, &mut rng);
            };
            let k = 1 + below(&mut rng, pool);
            stand_ins
                .entry(k)
                .or_insert_with(|| {
                    let mut own = ChaCha8Rng::seed_from_u64(base);
                    own.set_stream(k);
                    draw(column, spec, Some(k), rows_u64, &mut own)
                })
                .clone()
        })
        .collect()
}

/// One value of the column; `subject` is the stand-in's number when the column draws from a
/// fixed number of them.
fn draw(
    column: &ColumnSpec,
    spec: &MockSpec,
    subject: Option<u64>,
    rows: u64,
    rng: &mut ChaCha8Rng,
) -> MockValue {
    let pii = column.tags.iter().find_map(|t| match t {
        ColumnTag::Pii(kind) => Some(*kind),
        _ => None,
    });
    if let Some(kind) = pii {
        let text = identifier(kind, rng);
        if column.data_type == DataType::Utf8 {
            return MockValue::Text(text);
        }
        // A mobile or card number kept as an integer; other identifiers do not fit one.
        if column.data_type == DataType::Int64
            && let Ok(n) = text.parse()
        {
            return MockValue::Int(n);
        }
    }
    let entity = column.has_tag(ColumnTag::Entity);
    match (&column.data_type, subject) {
        (DataType::Utf8, _) if !spec.categories.is_empty() => {
            MockValue::Text(spec.categories[index(rng, spec.categories.len())].clone())
        }
        (DataType::Utf8, Some(k)) if entity => MockValue::Text(format!("mock-subject-{k:06}")),
        (DataType::Utf8, k) => {
            let n = k.unwrap_or_else(|| 1 + below(rng, rows));
            MockValue::Text(format!("mock-{}-{n}", column.name))
        }
        // Subjects numbered from 1, as an integer key would be.
        (DataType::Int32 | DataType::Int64, Some(k)) if entity => {
            MockValue::Int(k.min(i32::MAX as u64) as i64)
        }
        (DataType::Boolean, _) => MockValue::Bool(rng.next_u64() >> 63 == 1),
        (DataType::Float64, _) => {
            let (lo, hi) = declared_range(spec.min, spec.max, DEFAULT_NUMBERS);
            let u = unit(rng);
            let value = ((lo * (1.0 - u) + hi * u) * 100.0).round() / 100.0;
            MockValue::Float(value.clamp(lo, hi))
        }
        (DataType::Int32 | DataType::Int64 | DataType::Decimal { .. }, _) => {
            let Some(whole) = whole_numbers(&column.data_type) else {
                return MockValue::Null;
            };
            let (lo, hi) = whole_range(spec, whole);
            let value = uniform(rng, lo, hi.max(lo));
            match column.data_type {
                DataType::Decimal { .. } => MockValue::Decimal(value),
                _ => MockValue::Int(i64::try_from(value).unwrap_or_default()),
            }
        }
        (DataType::Date32, _) => {
            let (first, last) = day_range(spec);
            MockValue::Date(i32::try_from(uniform(rng, first, last)).unwrap_or_default())
        }
        (
            DataType::Timestamp {
                unit: time_unit, ..
            },
            _,
        ) => {
            let per_second: i128 = match time_unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1_000,
                TimeUnit::Microsecond => 1_000_000,
            };
            let (first, last) = day_range(spec);
            let start = first * 86_400 * per_second;
            let end = (last + 1) * 86_400 * per_second - 1;
            MockValue::Timestamp(i64::try_from(uniform(rng, start, end)).unwrap_or_default())
        }
    }
}

/// The whole numbers a column of this type stores, and the factor a declared number is scaled
/// by to reach them (10^scale for a decimal); none for a type that stores no whole numbers.
fn whole_numbers(data_type: &DataType) -> Option<(i128, i128, f64)> {
    match *data_type {
        DataType::Int32 => Some((i32::MIN.into(), i32::MAX.into(), 1.0)),
        DataType::Int64 => Some((i64::MIN.into(), i64::MAX.into(), 1.0)),
        DataType::Decimal { precision, scale } => {
            let precision = precision.clamp(1, DataType::MAX_DECIMAL_PRECISION);
            let limit = 10i128.pow(u32::from(precision)) - 1;
            Some((-limit, limit, 10f64.powi(i32::from(scale.min(precision)))))
        }
        _ => None,
    }
}

/// The declared range of a whole-number column (default 0 to 1,000) in its stored units,
/// within what its type holds. Empty (`lo > hi`) when no stored value lies in it.
fn whole_range(spec: &MockSpec, (type_lo, type_hi, factor): (i128, i128, f64)) -> (i128, i128) {
    let (lo, hi) = declared_range(spec.min, spec.max, DEFAULT_NUMBERS);
    let lo = ((lo * factor).ceil() as i128).clamp(type_lo, type_hi);
    let hi = ((hi * factor).floor() as i128).clamp(type_lo, type_hi);
    (lo, hi)
}

/// The first and last day of a date or timestamp column.
fn day_range(spec: &MockSpec) -> (i128, i128) {
    let day = |d: &Option<String>| d.as_deref().and_then(parse_day).map(f64::from);
    let default = (f64::from(DEFAULT_FIRST_DAY), f64::from(DEFAULT_LAST_DAY));
    let (first, last) = declared_range(day(&spec.min_date), day(&spec.max_date), default);
    (first as i128, last as i128)
}

/// A declared range, finite and in order. A missing bound is the default's, widened to keep
/// the default's width past a declared bound beyond it (`min` 5,000 alone gives 5,000 to 6,000).
fn declared_range(min: Option<f64>, max: Option<f64>, default: (f64, f64)) -> (f64, f64) {
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    let (min, max) = (finite(min), finite(max));
    let width = default.1 - default.0;
    let lo = min.unwrap_or(match max {
        Some(hi) if hi < default.0 => hi - width,
        _ => default.0,
    });
    let hi = max.unwrap_or(if lo > default.1 {
        lo + width
    } else {
        default.1
    });
    (lo, hi.max(lo))
}

/// Days since 1970-01-01 of a real date written `YYYY-MM-DD`.
fn parse_day(text: &str) -> Option<i32> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(text, format).ok()?;
    Some(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
}

/// The seed of one column: the dataset's seed mixed with the column's name (FNV-1a, then the
/// splitmix64 finalizer).
fn column_seed(seed: u64, name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut z = (seed ^ hash).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw from `0..n` (`n` at least 1), by multiplication: a bias of at most n / 2^64,
/// immaterial for a mock.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n.max(1))) >> 64) as u64
}

fn index(rng: &mut ChaCha8Rng, len: usize) -> usize {
    below(rng, len as u64) as usize
}

/// A draw from `[0, 1)`.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A draw from `lo..=hi` (`lo <= hi`).
fn uniform(rng: &mut ChaCha8Rng, lo: i128, hi: i128) -> i128 {
    let word = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    let offset = match hi.abs_diff(lo).checked_add(1) {
        Some(width) => word % width,
        None => word,
    };
    lo.wrapping_add_unsigned(offset)
}

/// One of the space-separated words of `words`.
fn pick<'a>(rng: &mut ChaCha8Rng, words: &'a str) -> &'a str {
    let at = index(rng, words.split(' ').count());
    words.split(' ').nth(at).unwrap_or_default()
}

/// `n` random decimal digits (`n` at most 19).
fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    format!("{:0n$}", below(rng, 10u64.pow(n as u32)))
}

fn pick_char(rng: &mut ChaCha8Rng, chars: &str) -> char {
    let at = index(rng, chars.chars().count());
    chars.chars().nth(at).unwrap_or('?')
}

/// Province-level prefixes of resident ID numbers on the mainland (GB/T 2260).
const ID_PROVINCES: &str =
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65";
/// The carriers' mobile number segments (all of 13x and 18x).
const MOBILE_PREFIXES: &str =
    "13 18 145 147 149 150 151 152 153 155 156 157 158 159 166 173 175 176 177 178 198 199";
/// Area codes of Beijing and the two-digit cities (the detector is certain of these).
const AREA_CODES: &str = "010 020 021 022 023 024 025 027 028 029";
const PLATE_PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";
/// Letters of plates and passports: no I or O.
const LETTERS: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ";
const PLATE_CHARS: &str = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789";
/// Common single surnames, none the first character of a compound surname.
const SURNAMES: &str = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹";
const COMPOUND_SURNAMES: &str = "欧阳 司马 诸葛 上官";
const GIVEN_NAME_CHARS: &str = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超霞平刚英华玉兰萍红建国志晨欣怡";
const PINYIN_SURNAMES: &str = "wang li zhang liu chen yang zhao huang zhou wu";
const PINYIN_GIVEN: &str = "wei fang na min jing lei yang jie tao ming";
/// Domains reserved for documentation (RFC 2606): no mailbox can exist under them.
const EMAIL_DOMAINS: &str = "example.com example.org example.net";
/// Networks reserved for documentation (RFC 5737).
const IPV4_NETWORKS: &str = "192.0.2 198.51.100 203.0.113";
/// A province, a city and one of its districts.
const DISTRICTS: &str = "浙江省杭州市西湖区 江苏省南京市玄武区 广东省广州市天河区 \
    四川省成都市武侯区 湖北省武汉市洪山区 山东省济南市历下区 福建省福州市鼓楼区";
const ROADS: &str = "人民 中山 解放 建设 和平 新华 文化 长江";

/// A well-formed identifier of the given type, made up from the lists above.
fn identifier(kind: SensitiveType, rng: &mut ChaCha8Rng) -> String {
    match kind {
        SensitiveType::ResidentId => resident_id(rng),
        SensitiveType::Mobile => {
            let prefix = pick(rng, MOBILE_PREFIXES);
            format!("{prefix}{}", digits(rng, 11 - prefix.len()))
        }
        SensitiveType::Landline => {
            let area = pick(rng, AREA_CODES);
            format!("{area}-{}{}", 2 + below(rng, 7), digits(rng, 7))
        }
        SensitiveType::BankCard => {
            // UnionPay: 62, then 13 digits, then the Luhn check digit.
            let payload = format!("62{}", digits(rng, 13));
            let check = luhn_check_digit(&payload);
            format!("{payload}{check}")
        }
        SensitiveType::CreditCode => credit_code(rng),
        SensitiveType::Plate => {
            let (province, city) = (pick_char(rng, PLATE_PROVINCES), pick_char(rng, LETTERS));
            // One in four a new-energy plate: D or F, then five digits.
            let body = match below(rng, 4) {
                0 => format!("{}{}", pick_char(rng, "DF"), digits(rng, 5)),
                _ => format!("{}{}", pick_char(rng, PLATE_CHARS), digits(rng, 4)),
            };
            format!("{province}{city}{body}")
        }
        SensitiveType::Passport => match below(rng, 2) {
            0 => format!("E{}", digits(rng, 8)),
            _ => format!("E{}{}", pick_char(rng, LETTERS), digits(rng, 7)),
        },
        SensitiveType::Email => {
            let (surname, given) = (pick(rng, PINYIN_SURNAMES), pick(rng, PINYIN_GIVEN));
            let number = digits(rng, 2);
            format!("{surname}.{given}{number}@{}", pick(rng, EMAIL_DOMAINS))
        }
        // One in four in the IPv6 documentation prefix (RFC 3849).
        SensitiveType::Ip => match below(rng, 4) {
            0 => format!(
                "2001:db8:{:x}::{:x}",
                below(rng, 65_536),
                1 + below(rng, 0xffff)
            ),
            _ => format!("{}.{}", pick(rng, IPV4_NETWORKS), 1 + below(rng, 254)),
        },
        SensitiveType::Name => {
            let mut name = match below(rng, 20) {
                0 => pick(rng, COMPOUND_SURNAMES).to_string(),
                _ => pick_char(rng, SURNAMES).to_string(),
            };
            for _ in 0..1 + below(rng, 2) {
                name.push(pick_char(rng, GIVEN_NAME_CHARS));
            }
            name
        }
        SensitiveType::Address => {
            let (district, road) = (pick(rng, DISTRICTS), pick(rng, ROADS));
            format!("{district}{road}路{}号", 1 + below(rng, 300))
        }
        // Within mainland China's bounding box, to six decimals.
        SensitiveType::Gps => format!(
            "{:.6},{:.6}",
            18.0 + unit(rng) * 35.0,
            73.5 + unit(rng) * 61.5
        ),
        SensitiveType::MedicalRecord => format!("MR{}", digits(rng, 8)),
    }
}

/// A resident ID number: a mainland province, a birth date from 1950 to 2005 (day 1 to 28 of a
/// month, always real) and its ISO 7064 MOD 11-2 check character.
fn resident_id(rng: &mut ChaCha8Rng) -> String {
    let province = pick(rng, ID_PROVINCES);
    let (city, county) = (1 + below(rng, 20), 1 + below(rng, 20));
    let (year, month, day) = (
        1950 + below(rng, 56),
        1 + below(rng, 12),
        1 + below(rng, 28),
    );
    let sequence = 1 + below(rng, 999);
    let first17 = format!("{province}{city:02}{county:02}{year}{month:02}{day:02}{sequence:03}");
    let check = resident_id_check_char(first17.as_bytes()).map_or('0', char::from);
    format!("{first17}{check}")
}

/// The Luhn check digit to append to `payload` (ASCII digits).
fn luhn_check_digit(payload: &str) -> u32 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            match i % 2 {
                0 if d * 2 > 9 => d * 2 - 9,
                0 => d * 2,
                _ => d,
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

const CREDIT_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// A unified social credit code of a business (registered by market regulation, `9`): its
/// type, a division code, an organization code and the GB 32100 check character.
fn credit_code(rng: &mut ChaCha8Rng) -> String {
    let (kind, province) = (1 + below(rng, 3), pick(rng, ID_PROVINCES));
    let (city, org) = (1 + below(rng, 20), digits(rng, 9));
    let first17 = format!("9{kind}{province}{city:02}00{org}");
    let sum: u32 = first17
        .bytes()
        .map(|b| CREDIT_ALPHABET.iter().position(|a| *a == b).unwrap_or(0) as u32)
        .zip(CREDIT_WEIGHTS)
        .map(|(v, w)| v * w)
        .sum();
    let check = CREDIT_ALPHABET[((31 - sum % 31) % 31) as usize];
    format!("{first17}{}", char::from(check))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::detect::scan_value;
    use crate::model::parse_tags;

    fn column(name: &str, data_type: &str, tags: &str) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            data_type: data_type.parse().unwrap(),
            tags: parse_tags(tags).unwrap(),
        }
    }

    fn spec(json: &str) -> MockSpec {
        serde_json::from_str(json).unwrap()
    }

    fn texts(values: &[MockValue]) -> Vec<&str> {
        fn text(v: &MockValue) -> &str {
            match v {
                MockValue::Text(t) => t.as_str(),
                other => panic!("not text: {other:?}"),
            }
        }
        values.iter().map(text).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_column_and_another_seed_another() {
        let visits = column("visits", "int64", "");
        let sparse = spec(r#"{"null_rate": 0.1}"#);
        let once = mock_column(&visits, &sparse, 200, 1);
        assert_eq!(once, mock_column(&visits, &sparse, 200, 1));
        assert_ne!(once, mock_column(&visits, &sparse, 200, 2));
        // Two columns of the same spec and seed differ by their names.
        assert_ne!(
            once,
            mock_column(&column("fares", "int64", ""), &sparse, 200, 1)
        );
    }

    #[test]
    fn every_mock_identifier_of_every_type_is_one_the_policy_detects() {
        let kinds = "resident_id mobile landline bank_card credit_code plate passport email ip \
                     name address gps medical_record";
        for kind in kinds
            .split_whitespace()
            .map(|k| k.parse::<SensitiveType>().unwrap())
        {
            let who = column("who", "utf8", &format!("pii:{kind}"));
            for value in texts(&mock_column(&who, &MockSpec::default(), 2_000, 11)) {
                // Names and record numbers are found where a form's label announces them.
                let text = match kind {
                    SensitiveType::Name => format!("姓名：{value}"),
                    SensitiveType::MedicalRecord => format!("病历号：{value}"),
                    _ => value.to_string(),
                };
                // The detector is never certain of a passport number without context.
                let found = scan_value(&text)
                    .iter()
                    .any(|d| d.kind == kind && (d.certain || kind == SensitiveType::Passport));
                assert!(found, "{kind}: {value}");
            }
        }
    }

    #[test]
    fn a_mock_resident_id_has_a_valid_check_digit_and_a_plausible_birth_date() {
        let ids = column("id", "utf8", "pii:resident_id");
        for id in texts(&mock_column(&ids, &MockSpec::default(), 500, 4)) {
            let b = id.as_bytes();
            assert_eq!(resident_id_check_char(&b[..17]), Some(b[17]), "{id}");
            assert!(
                (1950..=2005).contains(&id[6..10].parse::<u32>().unwrap()),
                "{id}"
            );
        }
    }

    #[test]
    fn an_entity_column_draws_from_its_distinct_subjects_and_is_never_null() {
        let ten = spec(r#"{"distinct": 10, "null_rate": 0.5}"#);
        for tags in ["entity", "pii:resident_id,entity"] {
            let values = mock_column(&column("person", "utf8", tags), &ten, 1_000, 3);
            assert_eq!(values.len(), 1_000);
            let subjects: BTreeSet<&str> = texts(&values).into_iter().collect();
            assert!((2..=10).contains(&subjects.len()), "{tags}: {subjects:?}");
        }
        // By default a quarter as many subjects as rows, numbered from 1 in an integer column.
        let key = column("person_id", "int64", "entity");
        let keys = mock_column(&key, &MockSpec::default(), 400, 3);
        assert!(keys.iter().all(|k| matches!(k, MockValue::Int(1..=100))));
    }

    #[test]
    fn a_null_rate_of_three_tenths_makes_about_three_rows_in_ten_null() {
        let fare = column("fare", "float64", "");
        let values = mock_column(&fare, &spec(r#"{"null_rate": 0.3}"#), 10_000, 5);
        let nulls = values.iter().filter(|v| **v == MockValue::Null).count();
        assert!((2_700..=3_300).contains(&nulls), "{nulls}");
    }

    #[test]
    fn numbers_dates_and_times_stay_within_their_declared_range() {
        let values = |data_type: &str, json: &str| {
            mock_column(&column("x", data_type, ""), &spec(json), 1_000, 8)
        };
        for v in values("int32", r#"{"min": -5, "max": 5}"#) {
            assert!(matches!(v, MockValue::Int(-5..=5)), "{v:?}");
        }
        for v in values("int32", "{}") {
            assert!(matches!(v, MockValue::Int(0..=1_000)), "{v:?}");
        }
        let cents = |x: f64| (x * 100.0).round() / 100.0 == x;
        for v in values("float64", r#"{"min": 1.5, "max": 2.5}"#) {
            let within = matches!(v, MockValue::Float(x) if (1.5..=2.5).contains(&x) && cents(x));
            assert!(within, "{v:?}");
        }
        for v in values("decimal(5,2)", r#"{"min": 0, "max": 10}"#) {
            assert!(matches!(v, MockValue::Decimal(0..=1_000)), "{v:?}");
        }
        // The default range is cut to what a narrow decimal holds.
        for v in values("decimal(3,1)", "{}") {
            assert!(matches!(v, MockValue::Decimal(0..=999)), "{v:?}");
        }
        let march = r#"{"min_date": "2025-03-01", "max_date": "2025-03-31"}"#;
        let first = parse_day("2025-03-01").unwrap();
        let last = parse_day("2025-03-31").unwrap();
        for v in values("date32", march) {
            assert!(
                matches!(v, MockValue::Date(d) if (first..=last).contains(&d)),
                "{v:?}"
            );
        }
        let start = i64::from(first) * 86_400_000;
        let end = i64::from(last + 1) * 86_400_000;
        for v in values("timestamp(ms)", march) {
            assert!(
                matches!(v, MockValue::Timestamp(t) if (start..end).contains(&t)),
                "{v:?}"
            );
        }
        assert_eq!(parse_day("2024-01-01"), Some(DEFAULT_FIRST_DAY));
        assert_eq!(parse_day("2026-12-31"), Some(DEFAULT_LAST_DAY));
        let coins = values("boolean", "{}");
        let heads = coins
            .iter()
            .filter(|v| **v == MockValue::Bool(true))
            .count();
        assert!((400..=600).contains(&heads), "{heads}");
    }

    #[test]
    fn a_text_column_draws_only_from_its_categories_or_else_mock_words() {
        let spots = spec(r#"{"categories": ["West Lake", "Grand Canal", "Lingyin"]}"#);
        let spot = column("spot", "utf8", "dimension");
        let drawn = mock_column(&spot, &spots, 3_000, 9);
        let seen: BTreeSet<&str> = texts(&drawn).into_iter().collect();
        let all: BTreeSet<&str> = spots.categories.iter().map(String::as_str).collect();
        assert_eq!(seen, all);
        let words = mock_column(&spot, &MockSpec::default(), 100, 9);
        assert!(texts(&words).iter().all(|w| w.starts_with("mock-spot-")));
    }

    #[test]
    fn a_bad_mock_spec_is_refused_with_the_column_it_is_wrong_for() {
        let many: Vec<String> = (0..1_001).map(|i| i.to_string()).collect();
        let many = format!(r#"{{"categories": {many:?}}}"#);
        let long = format!(r#"{{"categories": ["{}"]}}"#, "x".repeat(201));
        let refusals = [
            ("int32", r#"{"null_rate": 1.5}"#, "null rate"),
            ("int32", r#"{"min": 10, "max": 1}"#, "above max"),
            ("int32", r#"{"min": 0.2, "max": 0.8}"#, "no int32 value"),
            ("int32", r#"{"max": 3e9}"#, "outside what int32 can hold"),
            (
                "decimal(3,1)",
                r#"{"max": 100}"#,
                "outside what decimal(3,1) can hold",
            ),
            ("utf8", r#"{"min": 0}"#, "no order"),
            ("boolean", r#"{"max": 1}"#, "no order"),
            ("date32", r#"{"max": 1}"#, "take min_date and max_date"),
            ("date32", r#"{"min_date": "2025-02-30"}"#, "YYYY-MM-DD"),
            (
                "timestamp",
                r#"{"min_date": "2026-01-01", "max_date": "2025-01-01"}"#,
                "after",
            ),
            ("int32", r#"{"min_date": "2025-01-01"}"#, "take no min_date"),
            ("int32", r#"{"categories": ["a"]}"#, "text columns"),
            ("utf8", many.as_str(), "at most 1000 categories"),
            ("utf8", long.as_str(), "longer than 200 bytes"),
            ("utf8", r#"{"distinct": 0}"#, "at least 1"),
        ];
        let refused = |column: &ColumnSpec, spec: &MockSpec, reason: &str| {
            let err = check_mock_spec(column, spec).unwrap_err();
            let named = err.starts_with(&format!("column `{}`: ", column.name));
            assert!(named && err.contains(reason), "{reason}: {err}");
        };
        for (data_type, json, reason) in refusals {
            refused(&column("fare", data_type, ""), &spec(json), reason);
        }
        let names = column("contact", "utf8", "pii:name");
        refused(
            &names,
            &spec(r#"{"categories": ["张三"]}"#),
            "identifying column",
        );
        // Nor an entity key or a quasi-identifier, nor a list of identifiers on a plain column.
        for tags in ["entity", "quasi"] {
            refused(
                &column("rider", "utf8", tags),
                &spec(r#"{"categories": ["r1", "r2"]}"#),
                "identifying column",
            );
        }
        refused(
            &column("note", "utf8", ""),
            &spec(r#"{"categories": ["plain", "11010519491231002X"]}"#),
            "category 2 reads as a direct identifier",
        );
        let nan = MockSpec {
            null_rate: f64::NAN,
            ..MockSpec::default()
        };
        refused(&column("fare", "float64", ""), &nan, "null rate");
        let infinite = MockSpec {
            max: Some(f64::INFINITY),
            ..MockSpec::default()
        };
        refused(&column("fare", "float64", ""), &infinite, "finite");
        let fine = spec(r#"{"null_rate": 0.2, "min": -5, "max": 5, "distinct": 3}"#);
        assert_eq!(check_mock_spec(&column("fare", "int32", ""), &fine), Ok(()));
        let days = spec(r#"{"min_date": "2025-01-01", "max_date": "2025-12-31"}"#);
        assert_eq!(
            check_mock_spec(&column("day", "timestamptz", ""), &days),
            Ok(())
        );
        assert!(serde_json::from_str::<MockSpec>(r#"{"nulls": 0.1}"#).is_err());
    }
}
