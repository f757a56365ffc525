//! The declarative [`export_udfs!`](crate::export_udfs) macro, which the attribute macros
//! expand to: it vectorizes the listed scalar functions and writes every `tg_*` export of the
//! ABI. `#[macro_export]` puts both macros at the crate root; every `$crate::` path in them
//! must be exported there by `lib.rs`.

/// Exports the listed functions as UDFs of the Tidegate ABI: scalar functions first, each
/// taking its arguments by value (`&str` for `utf8`) and returning `Option<RET>`, then
/// aggregates, each a type implementing [`Aggregate`](crate::Aggregate) under the SQL name
/// given:
///
/// ```text
/// export_udfs! {
///     scalar fn double(x: i64) -> i64;
///     aggregate sum_sq = SumSquares;
/// }
/// ```
#[macro_export]
macro_rules! export_udfs {
    (
        $(scalar fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty;)*
        $(aggregate $aname:ident = $aty:ty;)*
        $(table $tname:ident = $tty:ty;)*
    ) => {
        const TG_SCALARS: i32 = <[&str]>::len(&[$(stringify!($name)),*]) as i32;
        const TG_TABLES_FROM: i32 = TG_SCALARS + <[&str]>::len(&[$(stringify!($aname)),*]) as i32;

        $crate::__dispatch!(tg_table_open, __table_open, TG_TABLES_FROM, (), $($tty),*);
        $crate::__dispatch!(tg_table_push, __table_push, TG_TABLES_FROM, (batch: i32), $($tty),*);
        $crate::__dispatch!(tg_table_pull, __table_pull, TG_TABLES_FROM, (), $($tty),*);
        $crate::__dispatch!(tg_table_close, __table_close, TG_TABLES_FROM, (), $($tty),*);

        $crate::__dispatch!(tg_agg_update, __agg_update, TG_SCALARS, (batch: i32, groups: i32, total: i32), $($aty),*);
        $crate::__dispatch!(tg_agg_merge, __agg_merge, TG_SCALARS, (batch: i32, groups: i32, total: i32), $($aty),*);
        $crate::__dispatch!(tg_agg_state, __agg_state, TG_SCALARS, (), $($aty),*);
        $crate::__dispatch!(tg_agg_evaluate, __agg_evaluate, TG_SCALARS, (), $($aty),*);
        $crate::__dispatch!(tg_agg_reset, __agg_reset, TG_SCALARS, (), $($aty),*);

        /// The SDK this module was built with, for its reviewer: a custom section the host
        /// reads (and a rebuild from the module's source checks).
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[unsafe(link_section = "tidegate.sdk")]
        static TG_SDK: [u8; $crate::__SDK_ID.len()] = $crate::__sdk_id();

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_alloc(size: i32) -> i32 {
            $crate::__alloc(size)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_error() -> i32 {
            $crate::__error()
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn tg_manifest() -> i32 {
            let mut lines: Vec<String> = Vec::new();
            $(
                lines.push($crate::__signature(
                    stringify!($name),
                    &[$(<$ty as $crate::Arg<'static>>::TYPE),*],
                    <$ret as $crate::Ret>::TYPE,
                ));
            )*
            $(lines.push($crate::__aggregate_signature::<$aty>(stringify!($aname)));)*
            $(lines.push($crate::__table_signature::<$tty>(stringify!($tname)));)*
            $crate::__manifest(&lines)
        }

        #[unsafe(no_mangle)]
        #[allow(unused_assignments, unused_mut, unused_variables)]
        pub extern "C" fn tg_scalar(fn_id: i32, batch: i32) -> i32 {
            $crate::__scalar(batch, |batch| {
                let mut id = 0;
                $(
                    if fn_id == id {
                        batch.expect_types(&[$(<$ty as $crate::Arg<'_>>::TYPE),*])?;
                        if $crate::__no_nulls(batch) {
                            // Plain numbers in and out: typed slices, one tight loop.
                            let n = batch.n_rows;
                            let mut col = 0usize;
                            $(
                                let $arg = <$ty as $crate::Arg<'_>>::plain(batch.column(col));
                                col += 1;
                            )*
                            #[allow(irrefutable_let_patterns)]
                            if let ($(Some($arg),)*) = ($($arg,)*) {
                                let mut out = $crate::__appending_output(<$ret as $crate::Ret>::TYPE, 0);
                                if let Some(dst) = <$ret as $crate::Ret>::plain_out(&mut out, n) {
                                    let dst = &mut dst[..n];
                                    $(let $arg = &$arg[..n];)*
                                    let mut nulls = Vec::new();
                                    for i in 0..n {
                                        match $name($($arg[i]),*) {
                                            Some(v) => dst[i] = v,
                                            None => nulls.push(i),
                                        }
                                    }
                                    $crate::__plain_nulls(&mut out, &nulls);
                                    return Ok(out);
                                }
                            }
                            // No NULL to look for: each argument column is read in order.
                            let mut out = $crate::__appending_output(<$ret as $crate::Ret>::TYPE, batch.n_rows);
                            let mut col = 0usize;
                            $(
                                let mut $arg = <$ty as $crate::Arg<'_>>::values(*batch.column(col));
                                col += 1;
                            )*
                            for _ in 0..batch.n_rows {
                                $(
                                    let Some($arg) = $arg.next() else {
                                        return Err("a column is shorter than its batch".into());
                                    };
                                )*
                                match $name($($arg),*) {
                                    Some(v) => $crate::Ret::append(v, &mut out),
                                    None => out.append_null(),
                                }
                            }
                            return Ok(out);
                        }
                        let mut out = $crate::__new_output(<$ret as $crate::Ret>::TYPE, batch.n_rows);
                        'rows: for row in 0..batch.n_rows {
                            let mut col = 0usize;
                            $(
                                let c = batch.column(col);
                                col += 1;
                                if c.is_null(row) {
                                    out.push_null();
                                    continue 'rows;
                                }
                                let $arg: $ty = <$ty as $crate::Arg<'_>>::get(c, row);
                            )*
                            match $name($($arg),*) {
                                Some(v) => $crate::Ret::push(v, &mut out),
                                None => out.push_null(),
                            }
                        }
                        return Ok(out);
                    }
                    id += 1;
                )*
                Err(format!("no scalar function with id {fn_id}"))
            })
        }
    };
}

/// One `tg_agg_*` or `tg_table_*` export: function ids from `$first` on name the given types
/// in order, and the call goes to the SDK's generic `$call` for that type.
#[doc(hidden)]
#[macro_export]
macro_rules! __dispatch {
    ($export:ident, $call:ident, $first:ident, ($($p:ident: $pt:ty),*), $($ty:ty),*) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn $export(fn_id: i32 $(, $p: $pt)*) -> i32 {
            let calls: &[fn(i32 $(, $pt)*) -> i32] = &[$($crate::$call::<$ty>),*];
            match usize::try_from(fn_id - $first).ok().and_then(|i| calls.get(i)) {
                Some(call) => call(fn_id $(, $p)*),
                None => $crate::__no_function(fn_id),
            }
        }
    };
}
