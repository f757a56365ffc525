//! Guest scalar functions as DataFusion scalar UDFs, and what every guest function wrapper
//! holds.

use super::*;

/// One function of a job's module: what its DataFusion wrappers hold. Two are equal when
/// they are the same function of the same job's instances.
pub(crate) struct GuestFn {
    pub(crate) sig: FunctionSig,
    pub(crate) fn_id: i32,
    pub(crate) pool: Arc<JobInstances>,
}

impl GuestFn {
    /// The functions of `kind` in the pool's module.
    pub(crate) fn all(pool: &Arc<JobInstances>, kind: &str) -> Vec<GuestFn> {
        pool.module
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == kind)
            .map(|(id, f)| GuestFn {
                sig: f.clone(),
                fn_id: id as i32,
                pool: Arc::clone(pool),
            })
            .collect()
    }

    /// DataFusion's signature: exactly the declared argument types, or, when the function
    /// takes a `timestamp` or a `decimal`, the conversions of [`GuestFn::coerce`]. Volatile,
    /// so that the engine never calls a guest while it plans (constant folding of `f(1)`,
    /// whose errors it swallows and whose time no budget would see): a guest runs only when
    /// the job runs.
    pub(crate) fn signature(&self) -> Signature {
        if self
            .sig
            .args
            .iter()
            .any(|a| matches!(a, WasmType::Timestamp | WasmType::Decimal))
        {
            Signature::user_defined(Volatility::Volatile)
        } else {
            Signature::exact(
                self.sig.args.iter().map(|a| a.arrow()).collect(),
                Volatility::Volatile,
            )
        }
    }

    /// The argument types the engine converts a call's arguments to: any timestamp (any
    /// unit, any zone) or date becomes the ABI's microseconds in UTC; an integer or a decimal
    /// of at most 6 places and 32 integer digits becomes the ABI's decimal exactly. A decimal
    /// with more places is refused (round it first): nothing is rounded silently. Other
    /// arguments must be of their declared type.
    pub(crate) fn coerce(&self, given: &[DataType]) -> datafusion::common::Result<Vec<DataType>> {
        let refuse = |why: String| {
            Err(DataFusionError::Plan(format!(
                "function `{}` {why}",
                self.sig.name
            )))
        };
        if given.len() != self.sig.args.len() {
            return refuse(format!(
                "takes {} arguments, not {}",
                self.sig.args.len(),
                given.len()
            ));
        }
        let mut out = Vec::with_capacity(given.len());
        for (i, (g, want)) in given.iter().zip(&self.sig.args).enumerate() {
            let ok = match want {
                WasmType::Timestamp => matches!(
                    g,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 | DataType::Null
                ),
                WasmType::Decimal => match g {
                    DataType::Decimal32(p, s)
                    | DataType::Decimal64(p, s)
                    | DataType::Decimal128(p, s)
                    | DataType::Decimal256(p, s) => {
                        if *s > WasmType::DECIMAL_SCALE {
                            return refuse(format!(
                                "takes a decimal of at most {} places as argument {}; round it first",
                                WasmType::DECIMAL_SCALE,
                                i + 1
                            ));
                        }
                        *s >= 0 && i16::from(*p) - i16::from(*s) <= 32
                    }
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::Null => true,
                    _ => false,
                },
                other => *g == other.arrow() || *g == DataType::Null,
            };
            if !ok {
                return refuse(format!(
                    "takes a {} as argument {}, not a {g}",
                    want.name(),
                    i + 1
                ));
            }
            out.push(want.arrow());
        }
        Ok(out)
    }
}

impl Clone for GuestFn {
    fn clone(&self) -> Self {
        GuestFn {
            sig: self.sig.clone(),
            fn_id: self.fn_id,
            pool: Arc::clone(&self.pool),
        }
    }
}

impl std::fmt::Debug for GuestFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} from {}",
            self.sig.kind, self.sig.name, self.pool.module.hash
        )
    }
}

impl PartialEq for GuestFn {
    fn eq(&self, other: &Self) -> bool {
        self.fn_id == other.fn_id && Arc::ptr_eq(&self.pool, &other.pool)
    }
}

impl Eq for GuestFn {}

impl Hash for GuestFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pool.module.hash.hash(state);
        self.fn_id.hash(state);
    }
}

pub(super) fn scalars_of(pool: &Arc<JobInstances>) -> Vec<ScalarUDF> {
    GuestFn::all(pool, "scalar")
        .into_iter()
        .map(|f| {
            ScalarUDF::new_from_impl(WasmScalarUdf {
                signature: f.signature(),
                f,
            })
        })
        .collect()
}

/// A guest scalar function registered in DataFusion under its manifest name.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct WasmScalarUdf {
    f: GuestFn,
    signature: Signature,
}

impl ScalarUDFImpl for WasmScalarUdf {
    fn name(&self) -> &str {
        &self.f.sig.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(self.f.sig.ret.arrow())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::common::Result<Vec<DataType>> {
        self.f.coerce(arg_types)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let n_rows = args.number_rows;
        let mut arrays = Vec::with_capacity(args.args.len());
        for (value, want) in args.args.iter().zip(&self.f.sig.args) {
            let a = value.to_array(n_rows)?;
            let a = if a.data_type() == &want.arrow() {
                a
            } else {
                arrow::compute::cast(&a, &want.arrow())?
            };
            arrays.push(a);
        }
        self.f
            .pool
            .call(self.f.fn_id, &self.f.sig, &arrays, n_rows)
            .map(ColumnarValue::Array)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// Whether a scalar function of a plan is a module's (an approved guest function), by its
/// implementation, never by its name.
pub(crate) fn is_guest_scalar(f: &ScalarUDF) -> bool {
    let any: &dyn std::any::Any = f.inner().as_ref();
    any.is::<WasmScalarUdf>()
}

/// The module a guest scalar function comes from (its hash), or `None` for any other
/// function.
pub(crate) fn guest_scalar_module(f: &ScalarUDF) -> Option<String> {
    let any: &dyn std::any::Any = f.inner().as_ref();
    any.downcast_ref::<WasmScalarUdf>()
        .map(|w| w.f.pool.module.hash.clone())
}
