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

/// Findings of one value, each type reported once (certain if any occurrence is).
#[derive(Default)]
struct Findings(Vec<Detection>);

impl Findings {
    fn push(&mut self, kind: SensitiveType, certain: bool) {
        if let Some(existing) = self.0.iter_mut().find(|e| e.kind == kind) {
            existing.certain |= certain;
        } else {
            self.0.push(Detection { kind, certain });
        }
    }
}

/// Luhn check over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

const CREDIT_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const CREDIT_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// GB 32100 check of an 18-character unified social credit code: `None` when the shape is
/// wrong, otherwise whether the check character matches.
fn credit_code_check(c: &[u8]) -> Option<bool> {
    let pos = |b: u8| CREDIT_ALPHABET.iter().position(|a| *a == b);
    if c.len() != 18 || !c[2..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let values: Vec<usize> = c.iter().map(|b| pos(*b)).collect::<Option<_>>()?;
    let sum: u32 = values[..17]
        .iter()
        .zip(CREDIT_WEIGHTS)
        .map(|(v, w)| *v as u32 * w)
        .sum();
    let check = (31 - sum % 31) % 31;
    Some(values[17] as u32 == check)
}

/// Classifies one run of digits (with a possible trailing X).
fn classify_digits(run: &[u8], f: &mut Findings) {
    let n = run.len();
    if n == 18 && id18_shape(run) {
        let certain =
            resident_id_check_char(&run[..17]).is_some_and(|c| c == run[17].to_ascii_uppercase());
        f.push(SensitiveType::ResidentId, certain);
        return;
    }
    if !run.iter().all(u8::is_ascii_digit) {
        return;
    }
    if n == 15 && id15_shape(run) {
        f.push(SensitiveType::ResidentId, false);
    }
    let mobile = |r: &[u8]| r.len() == 11 && r[0] == b'1' && (b'3'..=b'9').contains(&r[1]);
    if mobile(run) || (n == 13 && run.starts_with(b"86") && mobile(&run[2..])) {
        f.push(SensitiveType::Mobile, true);
    }
    let landline = match run {
        [b'0', b'1', b'0', ..] | [b'0', b'2', _, ..] => (9..=11).contains(&n),
        [b'0', b'3'..=b'9', ..] => (10..=12).contains(&n),
        [b'4' | b'8', b'0', b'0', b'1'..=b'9', ..] => n == 10,
        _ => false,
    };
    if landline {
        f.push(
            SensitiveType::Landline,
            run.starts_with(b"010") || run.starts_with(b"02"),
        );
    }
    let is_mobile = mobile(run) || (n == 13 && run.starts_with(b"86") && mobile(&run[2..]));
    if (15..=19).contains(&n) && !is_mobile && !(n == 15 && id15_shape(run)) {
        if luhn(run) {
            f.push(SensitiveType::BankCard, true);
        } else if run.starts_with(b"62") && n >= 16 {
            f.push(SensitiveType::BankCard, false);
        }
    }
}

/// Maximal runs of digits; with `joined`, a single space or hyphen between two digits does
/// not break a run ("138-1234-5678", "6222 0212 3456 7890").
fn digit_runs(bytes: &[u8], joined: bool) -> Vec<Vec<u8>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let mut run = Vec::new();
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                run.push(bytes[i]);
                i += 1;
            } else if joined
                && matches!(bytes[i], b' ' | b'-')
                && i + 1 < bytes.len()
                && bytes[i + 1].is_ascii_digit()
            {
                i += 1;
            } else {
                break;
            }
        }
        if run.len() == 17 && i < bytes.len() && matches!(bytes[i], b'X' | b'x') {
            run.push(bytes[i]);
            i += 1;
        }
        runs.push(run);
    }
    runs
}

/// Maximal runs of ASCII letters and digits.
fn alnum_runs(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|r| !r.is_empty())
}

const PLATE_PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

fn plate_char(c: char) -> bool {
    (c.is_ascii_uppercase() || c.is_ascii_digit()) && c != 'I' && c != 'O'
}

fn scan_plates(value: &str, f: &mut Findings) {
    // A plate starts with a province character, never ASCII.
    if value.is_ascii() {
        return;
    }
    let chars: Vec<char> = value.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if !PLATE_PROVINCES.contains(*c) {
            continue;
        }
        let rest = &chars[i + 1..];
        let letter = rest
            .first()
            .is_some_and(|l| l.is_ascii_uppercase() && *l != 'I' && *l != 'O');
        let body = rest.iter().skip(1).take_while(|c| plate_char(**c)).count();
        if letter && (body == 5 || body == 6) {
            f.push(SensitiveType::Plate, true);
        }
    }
}

fn scan_email(value: &str, f: &mut Findings) {
    let b = value.as_bytes();
    for (at, _) in value.match_indices('@') {
        let local = b[..at]
            .iter()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || b"._%+-".contains(c))
            .count();
        let domain: &[u8] = &b[at + 1..];
        let dlen = domain
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || b".-".contains(c))
            .count();
        let domain = &domain[..dlen];
        let tld_ok = domain.iter().rposition(|c| *c == b'.').is_some_and(|dot| {
            dot > 0
                && domain.len() - dot > 2
                && domain[dot + 1..].iter().all(u8::is_ascii_alphabetic)
        });
        if local > 0 && tld_ok {
            f.push(SensitiveType::Email, true);
        }
    }
}

fn scan_ip(value: &str, f: &mut Findings) {
    let v4 = value.split(|c: char| !(c.is_ascii_digit() || c == '.'));
    if value.contains('.')
        && v4
            .filter(|t| t.matches('.').count() == 3)
            .any(|t| t.parse::<std::net::Ipv4Addr>().is_ok())
    {
        f.push(SensitiveType::Ip, true);
    }
    let v6 = value.split(|c: char| !(c.is_ascii_hexdigit() || c == ':'));
    if value.contains(':')
        && v6
            .filter(|t| t.matches(':').count() >= 2)
            .any(|t| t.parse::<std::net::Ipv6Addr>().is_ok())
    {
        f.push(SensitiveType::Ip, true);
    }
}

fn scan_gps(value: &str, f: &mut Findings) {
    // Both coordinates carry at least four decimals.
    if value.bytes().filter(|b| *b == b'.').count() < 2 {
        return;
    }
    let nums: Vec<&str> = value
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|t| !t.is_empty())
        .collect();
    let precise = |t: &str| t.split_once('.').is_some_and(|(_, d)| d.len() >= 4);
    for pair in nums.windows(2) {
        let (Ok(a), Ok(b)) = (pair[0].parse::<f64>(), pair[1].parse::<f64>()) else {
            continue;
        };
        if precise(pair[0]) && precise(pair[1]) && a.abs() <= 90.0 && b.abs() <= 180.0 {
            f.push(SensitiveType::Gps, true);
        }
    }
}

/// Words that announce a person's name in Chinese text.
const NAME_CONTEXT: [&str; 6] = ["姓名", "联系人", "申请人", "法定代表人", "负责人", "收件人"];

/// Compound surnames first: they are matched before single ones.
const COMPOUND_SURNAMES: [&str; 16] = [
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "长孙", "宇文",
    "司徒", "夏侯", "轩辕", "端木",
];

/// The most common single-character surnames (they cover most of the population).
const SURNAMES: &str = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤";

fn is_cjk(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c)
}

/// The rest of `text` after a context word and its separators (colon, full-width colon, spaces).
fn after_context<'a>(text: &'a str, words: &[&str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    for w in words {
        for (at, _) in text.match_indices(w) {
            let rest =
                text[at + w.len()..].trim_start_matches([':', '：', ' ', '\u{3000}', '为', '是']);
            out.push(rest);
        }
    }
    out
}

/// A name after a context word: a known surname (compound or single), then one or two CJK
/// characters, then not another CJK character.
fn scan_name(value: &str, f: &mut Findings) {
    for rest in after_context(value, &NAME_CONTEXT) {
        let surname = COMPOUND_SURNAMES
            .iter()
            .find(|s| rest.starts_with(**s))
            .map(|s| s.chars().count())
            .or_else(|| {
                rest.chars()
                    .next()
                    .filter(|c| SURNAMES.contains(*c))
                    .map(|_| 1)
            });
        let Some(surname) = surname else { continue };
        let given = rest
            .chars()
            .skip(surname)
            .take_while(|c| is_cjk(*c))
            .count();
        // A surname right after a context word is a name, even when the text runs on
        // without a break ("联系人张伟电话..."): certain when one or two characters follow it.
        if given >= 1 {
            f.push(SensitiveType::Name, given <= 2);
        }
    }
}

/// A street-level address: administrative division cues and a street, number or village cue.
/// A district-level place ("杭州市西湖区") is not one: that is what addresses generalize to.
fn scan_address(value: &str, f: &mut Findings) {
    const DIVISIONS: [&str; 6] = ["省", "市", "区", "县", "镇", "乡"];
    const STREETS: [&str; 6] = ["街道", "路", "街", "号", "村", "弄"];
    if !STREETS.iter().any(|c| value.contains(*c)) {
        return;
    }
    let divisions = DIVISIONS.iter().filter(|c| value.contains(**c)).count();
    let numbered = value.contains('号') && value.chars().any(|c| c.is_ascii_digit());
    if divisions >= 2 {
        f.push(SensitiveType::Address, numbered || divisions >= 3);
    }
}

/// A medical record or social insurance number after its keyword.
fn scan_record_number(value: &str, f: &mut Findings) {
    const KEYWORDS: [&str; 5] = ["病历号", "病案号", "住院号", "医保卡号", "社保卡号"];
    for rest in after_context(value, &KEYWORDS) {
        let len = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .count();
        if len >= 6 {
            f.push(SensitiveType::MedicalRecord, true);
        }
    }
}

/// Every sensitive value found in `value`, by type (each type reported once). Covers resident
/// IDs, mobiles, landlines, bank cards, credit codes, plates, passports and permits, e-mail,
/// IP addresses and GPS points; names and record numbers where a context word announces them
/// ("联系人：张三", "病历号 A1234567"), and street-level addresses.
pub fn scan_value(value: &str) -> Vec<Detection> {
    let mut f = Findings::default();
    let bytes = value.as_bytes();
    for joined in [false, true] {
        for run in digit_runs(bytes, joined) {
            classify_digits(&run, &mut f);
        }
    }
    for run in alnum_runs(value) {
        let r = run.as_bytes();
        if r.len() == 18 && r.iter().any(u8::is_ascii_alphabetic) && !id18_shape(r) {
            match credit_code_check(&run.to_ascii_uppercase().into_bytes()) {
                Some(true) => f.push(SensitiveType::CreditCode, true),
                Some(false) if r.iter().all(u8::is_ascii_uppercase_or_digit) => {
                    f.push(SensitiveType::CreditCode, false)
                }
                _ => {}
            }
        }
        if r.len() == 18
            && r.iter().all(u8::is_ascii_digit)
            && credit_code_check(r) == Some(true)
            && !id18_shape(r)
        {
            f.push(SensitiveType::CreditCode, true);
        }
        let passport = r.len() == 9
            && match r[0] {
                b'E' => {
                    r[1..].iter().all(u8::is_ascii_digit)
                        || (r[1].is_ascii_uppercase()
                            && r[1] != b'I'
                            && r[1] != b'O'
                            && r[2..].iter().all(u8::is_ascii_digit))
                }
                b'C' | b'W' | b'L' | b'T' => r[1..].iter().all(u8::is_ascii_digit),
                _ => false,
            };
        if passport {
            f.push(SensitiveType::Passport, false);
        }
    }
    scan_plates(value, &mut f);
    scan_email(value, &mut f);
    scan_ip(value, &mut f);
    scan_gps(value, &mut f);
    if !value.is_ascii() {
        scan_name(value, &mut f);
        scan_address(value, &mut f);
        scan_record_number(value, &mut f);
    }
    f.0
}

trait UpperOrDigit {
    fn is_ascii_uppercase_or_digit(&self) -> bool;
}

impl UpperOrDigit for u8 {
    fn is_ascii_uppercase_or_digit(&self) -> bool {
        self.is_ascii_uppercase() || self.is_ascii_digit()
    }
}

/// A proposed tag for a column, from a sample of its values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TagProposal {
    /// A tag in the vocabulary of SPEC.md (`pii:TYPE`), or `None` when nothing was found.
    pub tag: Option<String>,
    /// The share of sampled non-NULL values that matched, with a validated check where the
    /// type has one; between 0 and 1.
    pub confidence: f64,
    /// Non-NULL values sampled.
    pub sampled: usize,
    /// The tag comes from the column's name, not from its values.
    pub by_name: bool,
}

/// The tags proposed for one column of a file a provider is about to import, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnProposal {
    pub tags: Vec<String>,
    /// Between 0 and 1.
    pub confidence: f64,
    pub why: &'static str,
}

/// Proposes a column's tags from what a sample of it shows: its sensitive type (`found`), its
/// declared type, and how many distinct values (`distinct`, counted up to a bound) its `rows`
/// non-NULL rows hold. Resident ID numbers are the natural subject key (`entity`); dates and
/// times are quasi-identifiers; text with few distinct values is a group-by key.
pub fn propose_column_tags(
    found: &TagProposal,
    data_type: &crate::model::DataType,
    distinct: usize,
    rows: usize,
) -> ColumnProposal {
    let (tags, confidence, why) = match (&found.tag, data_type) {
        (Some(t), _) if t == "pii:resident_id" => (
            vec![t.clone(), "entity".into()],
            found.confidence,
            "resident ID numbers; the natural subject key",
        ),
        (Some(t), _) if found.by_name => (
            vec![t.clone()],
            found.confidence,
            "the column's name (its values show no context)",
        ),
        (Some(t), _) => (
            vec![t.clone()],
            found.confidence,
            "values of a sensitive data type",
        ),
        (None, t) if t.is_temporal() => (
            vec!["quasi".into()],
            0.5,
            "dates and times (birth, visit) are quasi-identifiers",
        ),
        (None, crate::model::DataType::Utf8) if distinct <= 100 && rows >= 10 * distinct => (
            vec!["dimension".into()],
            0.5,
            "few distinct values: a group-by key",
        ),
        (None, _) => (vec![], 0.0, "nothing found"),
    };
    ColumnProposal {
        tags,
        confidence,
        why,
    }
}

/// Proposes a `pii:TYPE` tag for a column from `values` (a sample): the type found in most
/// values, with the share of values where it was found and validated as the confidence. A
/// type found in fewer than a fifth of the values is not proposed.
pub fn propose_tag<'a>(values: impl IntoIterator<Item = &'a str>) -> TagProposal {
    let mut counts: Vec<(SensitiveType, usize, usize)> = Vec::new();
    let mut sampled = 0;
    for v in values {
        sampled += 1;
        for d in scan_value(v) {
            match counts.iter_mut().find(|c| c.0 == d.kind) {
                Some(c) => {
                    c.1 += 1;
                    c.2 += usize::from(d.certain);
                }
                None => counts.push((d.kind, 1, usize::from(d.certain))),
            }
        }
    }
    let best = counts.into_iter().max_by_key(|c| c.1);
    match best {
        Some((kind, found, certain)) if sampled > 0 && found * 5 >= sampled => TagProposal {
            tag: Some(format!("pii:{kind}")),
            confidence: (found + certain) as f64 / (2 * sampled) as f64,
            sampled,
            by_name: false,
        },
        _ => TagProposal {
            tag: None,
            confidence: 0.0,
            sampled,
            by_name: false,
        },
    }
}

/// [`propose_tag`], and when the values show nothing, the column's name: a column called
/// `姓名` or `contact_name` holds names even when no context word stands in its values, and a
/// `病历号` column holds record numbers. A proposal from the name alone has confidence 0.5.
pub fn propose_tag_for<'a>(column: &str, values: impl IntoIterator<Item = &'a str>) -> TagProposal {
    let by_values = propose_tag(values);
    if by_values.tag.is_some() {
        return by_values;
    }
    let name = column.to_lowercase();
    let rules: [(SensitiveType, &[&str]); 3] = [
        (
            SensitiveType::MedicalRecord,
            &[
                "病历号",
                "病案号",
                "住院号",
                "医保卡号",
                "社保卡号",
                "medical_record",
                "mrn",
            ],
        ),
        (
            SensitiveType::Name,
            &[
                "姓名",
                "联系人",
                "申请人",
                "法定代表人",
                "full_name",
                "person_name",
                "contact_name",
            ],
        ),
        (SensitiveType::Address, &["地址", "住址", "address"]),
    ];
    let found = rules
        .iter()
        .find(|(_, words)| words.iter().any(|w| name.contains(w)))
        .map(|(kind, _)| *kind);
    match found {
        Some(kind) => TagProposal {
            tag: Some(format!("pii:{kind}")),
            confidence: 0.5,
            sampled: by_values.sampled,
            by_name: true,
        },
        None => by_values,
    }
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
        // Keep the surname: the first character (two for a compound surname).
        SensitiveType::Name => {
            let compound = COMPOUND_SURNAMES.iter().any(|s| value.starts_with(*s));
            keep(if compound { 2 } else { 1 }, 0)
        }
        // Generalize to the district: everything up to the first district or county.
        SensitiveType::Address => match chars.iter().position(|c| *c == '区' || *c == '县') {
            Some(at) => chars[..=at].iter().collect(),
            None => "*".repeat(chars.len()),
        },
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
    fn a_scanned_column_is_proposed_the_tags_its_sample_shows() {
        use crate::model::DataType;
        let ids = propose_tag_for("who", ["11010519491231002X"; 20]);
        let p = propose_column_tags(&ids, &DataType::Utf8, 1, 20);
        assert_eq!(p.tags, ["pii:resident_id", "entity"]);
        let nothing = propose_tag_for("when", ["2026-05-01"; 20]);
        assert_eq!(
            propose_column_tags(&nothing, &DataType::Date32, 20, 20).tags,
            ["quasi"]
        );
        let spots = propose_tag_for("spot", ["Lake"; 50]);
        assert_eq!(
            propose_column_tags(&spots, &DataType::Utf8, 3, 50).tags,
            ["dimension"]
        );
        assert!(
            propose_column_tags(&spots, &DataType::Utf8, 30, 50)
                .tags
                .is_empty()
        );
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
    fn formatted_mobiles_and_bank_cards_are_found() {
        check("138-1234-5678", &[(SensitiveType::Mobile, true)]);
        // A Luhn-valid test card number, with and without spaces.
        check("4111111111111111", &[(SensitiveType::BankCard, true)]);
        check(
            "卡号 6222 0212 3456 7891",
            &[(SensitiveType::BankCard, false)],
        );
    }

    #[test]
    fn landlines_are_found_by_area_code() {
        check("010-62751234", &[(SensitiveType::Landline, true)]);
        check("0571-87001234", &[(SensitiveType::Landline, false)]);
        check("400-8001234", &[(SensitiveType::Landline, false)]);
    }

    #[test]
    fn credit_codes_are_checked_with_gb_32100() {
        check("91350100M000100Y43", &[(SensitiveType::CreditCode, true)]);
        check("91350100M000100Y44", &[(SensitiveType::CreditCode, false)]);
    }

    #[test]
    fn names_addresses_and_record_numbers_in_chinese_text() {
        check("联系人：张三", &[(SensitiveType::Name, true)]);
        check(
            "法定代表人 欧阳娜娜，电话另附",
            &[(SensitiveType::Name, true)],
        );
        check("申请人为李小明", &[(SensitiveType::Name, true)]);
        // The text runs on after the name: still a name, not a certain one.
        check("联系人张伟电话另附", &[(SensitiveType::Name, false)]);
        check("张三", &[]);
        check("联系人：市场部", &[]);
        check(
            "浙江省杭州市西湖区文三路90号",
            &[(SensitiveType::Address, true)],
        );
        check("杭州市西湖区", &[]);
        check("西湖区灵隐街道", &[]);
        check("病历号：A1234567", &[(SensitiveType::MedicalRecord, true)]);
        check(
            "住院号 2026-0012345",
            &[(SensitiveType::MedicalRecord, true)],
        );
        check("病历号待补", &[]);
        assert_eq!(mask(SensitiveType::Name, "张三丰"), "张**");
        assert_eq!(mask(SensitiveType::Name, "欧阳娜娜"), "欧阳**");
        assert_eq!(
            mask(SensitiveType::Address, "浙江省杭州市西湖区文三路90号"),
            "浙江省杭州市西湖区"
        );
    }

    #[test]
    fn a_column_name_proposes_what_its_values_cannot_show() {
        let p = propose_tag_for("联系人姓名", ["张三", "李四"]);
        assert_eq!((p.tag.as_deref(), p.confidence), (Some("pii:name"), 0.5));
        let p = propose_tag_for("病历号", ["A1234567"]);
        assert_eq!(p.tag.as_deref(), Some("pii:medical_record"));
        let p = propose_tag_for("home_address", ["somewhere"]);
        assert_eq!(p.tag.as_deref(), Some("pii:address"));
        let p = propose_tag_for("spot", ["West Lake"]);
        assert_eq!(p.tag, None);
        // Values win over the name.
        let p = propose_tag_for("contact_name", ["13812345678"]);
        assert_eq!(p.tag.as_deref(), Some("pii:mobile"));
    }

    #[test]
    fn plates_passports_emails_ips_and_gps_points() {
        check("车牌浙A12345", &[(SensitiveType::Plate, true)]);
        check("浙AD12345", &[(SensitiveType::Plate, true)]);
        check("E12345678", &[(SensitiveType::Passport, false)]);
        check(
            "mail wang.li@example.com now",
            &[(SensitiveType::Email, true)],
        );
        check("192.168.1.20", &[(SensitiveType::Ip, true)]);
        check("2001:db8::1", &[(SensitiveType::Ip, true)]);
        check("30.2741,120.1551", &[(SensitiveType::Gps, true)]);
    }

    #[test]
    fn aggregate_looking_values_are_clean() {
        check("46.4", &[]);
        check("7546798.52", &[]);
        check("30137", &[]);
        check("12:30:00", &[]);
        check("v1.2.3", &[]);
    }

    #[test]
    fn a_column_of_ids_is_proposed_as_pii_with_high_confidence() {
        let ids = [
            "11010519491231002X",
            "110105194912310021",
            "n/a",
            "11010519491231002X",
        ];
        let p = propose_tag(ids);
        assert_eq!(p.tag.as_deref(), Some("pii:resident_id"));
        assert_eq!(p.sampled, 4);
        assert!((p.confidence - 0.625).abs() < 1e-9, "{}", p.confidence);
        let spots = propose_tag(["West Lake", "Grand Canal"]);
        assert_eq!((spots.tag, spots.confidence), (None, 0.0));
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
