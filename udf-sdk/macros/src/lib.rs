//! Attribute macros for guest modules. `#[udfs]` goes on an inline module; inside it,
//! `#[scalar]` marks a function over row values (`fn f(x: i64, s: &str) -> Option<T>`), which
//! the SDK vectorizes over each batch, `#[aggregate]` a type implementing `Aggregate` and
//! `#[table]` a type implementing `TableFunction` (both optionally `(name = "sql_name")`, by
//! default the type's name in snake case). The module then exports the whole ABI.
//!
//! ```text
//! #[tidegate_udf_sdk::udfs]
//! mod udfs {
//!     #[scalar]
//!     pub fn double(x: f64) -> Option<f64> { Some(x * 2.0) }
//!     #[aggregate(name = "sum_sq")]
//!     #[derive(Default)]
//!     pub struct SumSquares(f64);
//!     // impl Aggregate for SumSquares { ... }
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Item, ItemMod, LitStr, Pat, PathArguments,
    ReturnType, Type, parse_macro_input, spanned::Spanned,
};

/// Turns the marked items of an inline module into exports of the Tidegate ABI.
#[proc_macro_attribute]
pub fn udfs(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Tokens::from(attr).span(), "#[udfs] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut module = parse_macro_input!(item as ItemMod);
    match expand(&mut module) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Marks a scalar function inside a `#[udfs]` module.
#[proc_macro_attribute]
pub fn scalar(_attr: TokenStream, item: TokenStream) -> TokenStream {
    outside("scalar", item)
}

/// Marks an `Aggregate` type inside a `#[udfs]` module.
#[proc_macro_attribute]
pub fn aggregate(_attr: TokenStream, item: TokenStream) -> TokenStream {
    outside("aggregate", item)
}

/// Marks a `TableFunction` type inside a `#[udfs]` module.
#[proc_macro_attribute]
pub fn table(_attr: TokenStream, item: TokenStream) -> TokenStream {
    outside("table", item)
}

fn outside(what: &str, item: TokenStream) -> TokenStream {
    let item = Tokens::from(item);
    let message = format!("#[{what}] marks an item inside a #[tidegate_udf_sdk::udfs] module");
    quote! { compile_error!(#message); #item }.into()
}

struct Scalar {
    name: Ident,
    args: Vec<(Ident, Type)>,
    ret: Type,
}

fn expand(module: &mut ItemMod) -> syn::Result<Tokens> {
    let Some((_, items)) = module.content.as_mut() else {
        return Err(syn::Error::new(
            module.span(),
            "#[udfs] goes on a module with a body: `mod udfs { ... }`",
        ));
    };
    let (mut scalars, mut aggregates, mut tables) = (Vec::new(), Vec::new(), Vec::new());
    for item in items.iter_mut() {
        match item {
            Item::Fn(f) => {
                let marked = take_marker(&mut f.attrs, "scalar")?.is_some();
                if marked {
                    scalars.push(scalar_of(f)?);
                }
            }
            Item::Struct(syn::ItemStruct { attrs, ident, .. })
            | Item::Enum(syn::ItemEnum { attrs, ident, .. }) => {
                for (marker, list) in [("aggregate", &mut aggregates), ("table", &mut tables)] {
                    if let Some(name) = take_marker(attrs, marker)? {
                        list.push((name.unwrap_or_else(|| snake(ident)), ident.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    if scalars.is_empty() && aggregates.is_empty() && tables.is_empty() {
        return Err(syn::Error::new(
            module.span(),
            "the module marks no #[scalar] function, #[aggregate] or #[table] type",
        ));
    }
    let scalar_lines = scalars.iter().map(|s| {
        let name = &s.name;
        let ret = &s.ret;
        let args = s.args.iter().map(|(a, t)| quote! { #a: #t });
        quote! { scalar fn #name(#(#args),*) -> #ret; }
    });
    let aggregate_lines = aggregates.iter().map(|(name, ty)| {
        let name = Ident::new(name, ty.span());
        quote! { aggregate #name = #ty; }
    });
    let table_lines = tables.iter().map(|(name, ty)| {
        let name = Ident::new(name, ty.span());
        quote! { table #name = #ty; }
    });
    items.push(syn::parse_quote! {
        ::tidegate_udf_sdk::export_udfs! {
            #(#scalar_lines)*
            #(#aggregate_lines)*
            #(#table_lines)*
        }
    });
    Ok(quote! { #module })
}

/// Removes the marker attribute `what` and returns its SQL name, if it is there.
#[allow(clippy::option_option)]
fn take_marker(attrs: &mut Vec<Attribute>, what: &str) -> syn::Result<Option<Option<String>>> {
    let Some(at) = attrs.iter().position(|a| a.path().is_ident(what)) else {
        return Ok(None);
    };
    let attr = attrs.remove(at);
    let mut name = None;
    if !matches!(attr.meta, syn::Meta::Path(_)) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let value: LitStr = meta.value()?.parse()?;
                let text = value.value();
                let ok = !text.is_empty()
                    && text.len() <= 64
                    && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && text
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok {
                    return Err(meta.error("a name is [a-z_][a-z0-9_]{0,63}"));
                }
                name = Some(text);
                Ok(())
            } else {
                Err(meta.error("the only argument is name = \"sql_name\""))
            }
        })?;
    }
    Ok(Some(name))
}

fn scalar_of(f: &syn::ItemFn) -> syn::Result<Scalar> {
    let mut args = Vec::new();
    for input in &f.sig.inputs {
        let FnArg::Typed(t) = input else {
            return Err(syn::Error::new(input.span(), "a scalar takes no `self`"));
        };
        let Pat::Ident(p) = t.pat.as_ref() else {
            return Err(syn::Error::new(t.pat.span(), "name each argument"));
        };
        args.push((p.ident.clone(), (*t.ty).clone()));
    }
    let bad = || {
        syn::Error::new(
            f.sig.output.span(),
            "a scalar returns Option<T> (None is NULL)",
        )
    };
    let ReturnType::Type(_, ty) = &f.sig.output else {
        return Err(bad());
    };
    let Type::Path(path) = ty.as_ref() else {
        return Err(bad());
    };
    let last = path.path.segments.last().ok_or_else(bad)?;
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return Err(bad());
    };
    let (true, Some(GenericArgument::Type(ret))) = (last.ident == "Option", generic.args.first())
    else {
        return Err(bad());
    };
    Ok(Scalar {
        name: f.sig.ident.clone(),
        args,
        ret: ret.clone(),
    })
}

/// `SumSquares` -> `sum_squares`.
fn snake(ident: &Ident) -> String {
    let mut out = String::new();
    for (i, c) in ident.to_string().chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_become_snake_case_sql_names() {
        let ident = |s: &str| Ident::new(s, proc_macro2::Span::call_site());
        assert_eq!(snake(&ident("SumSquares")), "sum_squares");
        assert_eq!(snake(&ident("Largest")), "largest");
    }

    #[test]
    fn a_scalar_takes_named_arguments_and_returns_an_option() {
        let f: syn::ItemFn = syn::parse_quote! { fn f(x: i64, s: &str) -> Option<String> { None } };
        let s = scalar_of(&f).unwrap();
        assert_eq!(s.args.len(), 2);
        let ret = &s.ret;
        assert_eq!(quote!(#ret).to_string(), "String");
        let plain: syn::ItemFn = syn::parse_quote! { fn f(x: i64) -> i64 { x } };
        let err = scalar_of(&plain).err().unwrap().to_string();
        assert!(err.contains("returns Option<T>"), "{err}");
    }

    #[test]
    fn a_marker_gives_its_sql_name_and_is_removed() {
        let mut s: syn::ItemStruct = syn::parse_quote! {
            #[aggregate(name = "sum_sq")]
            #[derive(Default)]
            struct SumSquares(f64);
        };
        assert_eq!(
            take_marker(&mut s.attrs, "aggregate").unwrap(),
            Some(Some("sum_sq".to_string()))
        );
        assert_eq!(s.attrs.len(), 1, "only the derive is left");
        assert_eq!(take_marker(&mut s.attrs, "aggregate").unwrap(), None);
        let mut bad: syn::ItemStruct = syn::parse_quote! { #[table(name = "Bad Name")] struct T; };
        assert!(take_marker(&mut bad.attrs, "table").is_err());
    }
}
