//! Upload validation: structural caps by parsing before anything is compiled, the exports the
//! ABI requires, the manifest.

use super::*;

/// Names SQL gives a meaning of its own before any function is looked up, or that DataFusion
/// plans itself (`unnest`, which the planner gives to any function of that name first).
pub(crate) const SQL_FORMS: [&str; 26] = [
    "all",
    "and",
    "any",
    "array",
    "case",
    "cast",
    "coalesce",
    "cube",
    "exists",
    "extract",
    "grouping",
    "in",
    "interval",
    "make_array",
    "named_struct",
    "not",
    "nullif",
    "or",
    "overlay",
    "position",
    "rollup",
    "some",
    "struct",
    "try_cast",
    "unnest",
    "unnest_outer",
];

/// Every function name DataFusion defines (scalar, aggregate, window and table functions, with
/// their aliases), read from a session built as a job's is.
static BUILTIN_NAMES: std::sync::LazyLock<std::collections::HashSet<String>> =
    std::sync::LazyLock::new(|| {
        let state = datafusion::prelude::SessionContext::new().state();
        let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
        names.extend(state.scalar_functions().keys().cloned());
        names.extend(state.aggregate_functions().keys().cloned());
        names.extend(state.window_functions().keys().cloned());
        names.extend(state.table_functions().keys().cloned());
        for f in state.scalar_functions().values() {
            names.extend(f.aliases().iter().cloned());
        }
        for f in state.aggregate_functions().values() {
            names.extend(f.aliases().iter().cloned());
        }
        for f in state.window_functions().values() {
            names.extend(f.aliases().iter().cloned());
        }
        names.extend(SQL_FORMS.iter().map(|s| s.to_string()));
        names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
    });

/// A name a module's function may not take: one DataFusion or SQL already gives a meaning,
/// or one of the platform's own (`tg_*`, `__tg*`). A guest function never replaces a built-in,
/// so a query's `sum` is always DataFusion's sum.
pub(crate) fn is_reserved_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("tg_") || crate::hidden::is_reserved(&name) || BUILTIN_NAMES.contains(&name)
}

/// `[a-z_][a-z0-9_]*`, at most 64 bytes: a function or column name of the manifest.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An export the ABI requires, with its exact type.
pub(super) fn check_export(
    module: &Module,
    name: &str,
    params: &[ValType],
    results: &[ValType],
) -> std::result::Result<(), String> {
    match module.get_export(name) {
        Some(ExternType::Func(f))
            if f.params()
                .map(|p| p.to_string())
                .eq(params.iter().map(|p| p.to_string()))
                && f.results()
                    .map(|p| p.to_string())
                    .eq(results.iter().map(|p| p.to_string())) =>
        {
            Ok(())
        }
        Some(_) => Err(format!("export `{name}` has the wrong type")),
        None => Err(format!("required export `{name}` is missing")),
    }
}

/// What a reviewer reads of a module's structure, besides its manifest: parsed, never run.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ModuleFacts {
    pub size_bytes: u64,
    /// Functions the module defines (its code), and how many it imports (none is allowed).
    pub defined_functions: u32,
    pub imports: u32,
    /// Every name it exports.
    pub exports: Vec<String>,
    /// Its memory, in 64 KiB pages: at instantiation, and the most it declares (if any).
    pub memory_initial_pages: Option<u64>,
    pub memory_maximum_pages: Option<u64>,
    /// Bytes of its data segments (constants baked into the module).
    pub data_bytes: u64,
    /// Names of its custom sections (debug information, producers, the manifest).
    pub custom_sections: Vec<String>,
}

/// The structure of a module that passed validation.
pub fn module_facts(bytes: &[u8]) -> std::result::Result<ModuleFacts, String> {
    use wasmparser::{Parser, Payload};
    let mut facts = ModuleFacts {
        size_bytes: bytes.len() as u64,
        ..ModuleFacts::default()
    };
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("malformed: {e}"))? {
            Payload::FunctionSection(r) => facts.defined_functions = r.count(),
            Payload::ImportSection(r) => facts.imports = r.count(),
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(|e| format!("malformed export: {e}"))?;
                    facts.exports.push(e.name.to_string());
                }
            }
            Payload::MemorySection(r) => {
                for m in r {
                    let m = m.map_err(|e| format!("malformed memory: {e}"))?;
                    facts.memory_initial_pages = Some(m.initial);
                    facts.memory_maximum_pages = m.maximum;
                }
            }
            Payload::DataSection(r) => {
                for d in r {
                    let d = d.map_err(|e| format!("malformed data segment: {e}"))?;
                    facts.data_bytes += d.data.len() as u64;
                }
            }
            Payload::CustomSection(c) => facts.custom_sections.push(c.name().to_string()),
            _ => {}
        }
    }
    Ok(facts)
}

/// Structural caps checked by parsing, before anything is compiled: a module too large or too
/// complex is refused cheaply with a report of what is over which limit.
pub(super) fn precheck(bytes: &[u8], memory_cap: usize) -> std::result::Result<(), String> {
    use wasmparser::{ElementItems, Encoding, Parser, Payload};
    let over = |what: &str, n: u64, max: u64| format!("{what}: {n} is over the limit of {max}");
    let mut data_bytes = 0usize;
    let mut element_items = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("malformed: {e}"))? {
            Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                return Err("a component; only core modules are accepted".into());
            }
            Payload::FunctionSection(r) if r.count() > MAX_DEFINED_FUNCTIONS => {
                return Err(over(
                    "functions",
                    r.count().into(),
                    MAX_DEFINED_FUNCTIONS.into(),
                ));
            }
            Payload::CodeSectionEntry(body) if body.range().len() > MAX_BODY_BYTES => {
                return Err(over(
                    "bytes in one function body",
                    body.range().len() as u64,
                    MAX_BODY_BYTES as u64,
                ));
            }
            Payload::GlobalSection(r) if r.count() > MAX_GLOBALS => {
                return Err(over("globals", r.count().into(), MAX_GLOBALS.into()));
            }
            Payload::ExportSection(r) if r.count() > MAX_EXPORTS => {
                return Err(over("exports", r.count().into(), MAX_EXPORTS.into()));
            }
            Payload::MemorySection(r) => {
                if r.count() > 1 {
                    return Err(over("memories", r.count().into(), 1));
                }
                for m in r {
                    let m = m.map_err(|e| format!("malformed memory: {e}"))?;
                    let max_pages = (memory_cap / 65536) as u64;
                    if m.initial > max_pages {
                        return Err(over("initial memory pages", m.initial, max_pages));
                    }
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    let t = t.map_err(|e| format!("malformed table: {e}"))?;
                    if t.ty.initial > MAX_TABLE_ELEMENTS {
                        return Err(over(
                            "initial table elements",
                            t.ty.initial,
                            MAX_TABLE_ELEMENTS,
                        ));
                    }
                }
            }
            Payload::ElementSection(r) => {
                for e in r {
                    let e = e.map_err(|e| format!("malformed element segment: {e}"))?;
                    element_items += match e.items {
                        ElementItems::Functions(f) => u64::from(f.count()),
                        ElementItems::Expressions(_, x) => u64::from(x.count()),
                    };
                    if element_items > MAX_ELEMENT_ITEMS {
                        return Err(over(
                            "element segment items",
                            element_items,
                            MAX_ELEMENT_ITEMS,
                        ));
                    }
                }
            }
            Payload::DataSection(r) => {
                if r.count() > MAX_DATA_SEGMENTS {
                    return Err(over(
                        "data segments",
                        r.count().into(),
                        MAX_DATA_SEGMENTS.into(),
                    ));
                }
                for d in r {
                    let d = d.map_err(|e| format!("malformed data segment: {e}"))?;
                    data_bytes += d.data.len();
                    if data_bytes > MAX_DATA_BYTES {
                        return Err(over(
                            "bytes of data segments",
                            data_bytes as u64,
                            MAX_DATA_BYTES as u64,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn parse_manifest(text: &str) -> std::result::Result<Vec<FunctionSig>, String> {
    let mut out: Vec<FunctionSig> = Vec::new();
    for line in text.lines() {
        let bad = || {
            format!(
                "manifest line `{}` is malformed",
                line.chars().take(80).collect::<String>()
            )
        };
        let (kind, rest) = if let Some(rest) = line.strip_prefix("scalar ") {
            ("scalar", rest)
        } else if let Some(rest) = line.strip_prefix("aggregate ") {
            ("aggregate", rest)
        } else if let Some(rest) = line.strip_prefix("table ") {
            ("table", rest)
        } else {
            return Err("a manifest line is `scalar NAME(TYPES) -> TYPE` or `aggregate NAME(TYPE) -> TYPE state(TYPES)`".into());
        };
        let (name, rest) = rest.split_once('(').ok_or_else(bad)?;
        let (args, ret) = rest.split_once(") -> ").ok_or_else(bad)?;
        let (ret, state) = match kind {
            "aggregate" => {
                let (ret, state) = ret.split_once(" state(").ok_or_else(bad)?;
                let state = state.strip_suffix(')').ok_or_else(bad)?;
                let state: Vec<WasmType> = state
                    .split(',')
                    .map(|t| WasmType::parse(t.trim()).ok_or_else(bad))
                    .collect::<std::result::Result<_, _>>()?;
                if state.is_empty()
                    || state.len() > MAX_STATE_COLUMNS
                    || state.contains(&WasmType::Utf8)
                {
                    return Err(format!(
                        "aggregate `{}` must keep 1 to {MAX_STATE_COLUMNS} state columns of fixed width or boolean",
                        name.chars().take(80).collect::<String>()
                    ));
                }
                (ret, state)
            }
            _ => (ret, Vec::new()),
        };
        let mut columns = Vec::new();
        let ret = if kind == "table" {
            let list = ret
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?;
            for c in list.split(',') {
                let (cname, ty) = c.trim().split_once(' ').ok_or_else(bad)?;
                let ty = WasmType::parse(ty.trim()).ok_or_else(bad)?;
                if !valid_name(cname) || crate::hidden::is_reserved(cname) {
                    return Err(format!(
                        "output column `{}` is not [a-z_][a-z0-9_]{{0,63}} (and not __tg*)",
                        cname.chars().take(80).collect::<String>()
                    ));
                }
                if columns.iter().any(|(n, _)| n == cname) {
                    return Err(format!("output column `{cname}` is declared twice"));
                }
                columns.push((cname.to_string(), ty));
            }
            if columns.len() > MAX_TABLE_COLUMNS {
                return Err(format!(
                    "a table function has at most {MAX_TABLE_COLUMNS} output columns"
                ));
            }
            columns[0].1.name()
        } else {
            ret
        };
        if !valid_name(name) {
            return Err(format!(
                "function name `{}` is not [a-z_][a-z0-9_]{{0,63}}",
                name.chars().take(80).collect::<String>()
            ));
        }
        let args: Vec<WasmType> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',')
                .map(|a| WasmType::parse(a.trim()).ok_or_else(bad))
                .collect::<std::result::Result<_, _>>()?
        };
        if args.len() > MAX_ARGS {
            return Err(format!(
                "function `{name}` has more than {MAX_ARGS} arguments"
            ));
        }
        let ret = WasmType::parse(ret.trim()).ok_or_else(bad)?;
        if out.iter().any(|f| f.name == name) {
            return Err(format!("function `{name}` is declared twice"));
        }
        if kind == "aggregate" && args.is_empty() {
            return Err(format!(
                "aggregate `{name}` must take at least one argument"
            ));
        }
        out.push(FunctionSig {
            kind: kind.into(),
            name: name.to_string(),
            args,
            ret,
            state,
            columns,
        });
        if out.len() > MAX_FUNCTIONS {
            return Err(format!("more than {MAX_FUNCTIONS} functions"));
        }
    }
    if out.is_empty() {
        return Err("the manifest declares no functions".into());
    }
    Ok(out)
}
