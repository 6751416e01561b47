//! The `OrtCustomOp` tables of LookatAttention, one per value-cache type.
//!
//! ORT merges ops of one name into one schema and picks the kernel whose input types match the
//! node, so float32 and float16 value caches are two tables that differ only in that type.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use ort_sys::{
    ONNXTensorElementDataType, OrtApi, OrtCustomOp, OrtCustomOpDomain,
    OrtCustomOpInputOutputCharacteristic, OrtKernelContext, OrtKernelInfo, OrtMemType,
    OrtSessionOptions, OrtStatusPtr,
};

use lookat_contract::{input, output, Elem, ValueType};

use super::api::Api;
use super::kernel::LookatKernel;

use ONNXTensorElementDataType::{
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT as FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 as FLOAT16,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 as INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 as INT8,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 as UINT8,
};

/// The ORT element type of a value cache (or key window) of type `v`.
pub(crate) fn ort_type(v: ValueType) -> ONNXTensorElementDataType {
    match v {
        ValueType::Float32 => FLOAT,
        ValueType::Float16 => FLOAT16,
        ValueType::Int8 => INT8,
    }
}

/// An `OrtCustomOp` followed by what our callbacks need to know about it. ORT hands the callbacks
/// a pointer to the first field, which `#[repr(C)]` makes a pointer to the whole.
#[repr(C)]
pub(crate) struct LookatOp {
    base: OrtCustomOp,
    pub value_type: ValueType,
}

// SAFETY: the table holds function pointers and plain data, never mutated after creation.
unsafe impl Sync for LookatOp {}
// SAFETY: as above.
unsafe impl Send for LookatOp {}

const PROVIDER: &CStr = c"CPUExecutionProvider";

/// The contract's names as C strings, made once and never freed (ORT keeps the pointers).
struct CNames {
    op: CString,
    domain: CString,
}

fn c_names() -> &'static CNames {
    static NAMES: OnceLock<CNames> = OnceLock::new();
    NAMES.get_or_init(|| CNames {
        op: CString::new(lookat_contract::OP_NAME).unwrap_or_default(),
        domain: CString::new(lookat_contract::DOMAIN).unwrap_or_default(),
    })
}

/// The [`LookatOp`] that `op` is the first field of.
///
/// # Safety
/// `op` must be one of the pointers [`register`] handed to ORT (ORT calls back only with those).
unsafe fn this(op: *const OrtCustomOp) -> &'static LookatOp {
    // SAFETY: guaranteed by the caller: `op` points at a LookatOp in a never-freed static.
    unsafe { &*(op as *const LookatOp) }
}

unsafe extern "system" fn get_name(_: *const OrtCustomOp) -> *const c_char {
    c_names().op.as_ptr()
}
unsafe extern "system" fn get_provider(_: *const OrtCustomOp) -> *const c_char {
    PROVIDER.as_ptr()
}
unsafe extern "system" fn input_count(_: *const OrtCustomOp) -> usize {
    input::COUNT
}
unsafe extern "system" fn output_count(_: *const OrtCustomOp) -> usize {
    output::COUNT
}
/// The ORT element type of a contract port (`T_V` is this registration's value type).
fn port_type(op: *const OrtCustomOp, elem: Elem) -> ONNXTensorElementDataType {
    match elem {
        Elem::Float32 => FLOAT,
        Elem::Float16 => FLOAT16,
        Elem::Uint8 => UINT8,
        Elem::Int64 => INT64,
        // SAFETY: ORT calls back with the op pointer we registered.
        Elem::ValueCache => ort_type(unsafe { this(op) }.value_type),
        // SAFETY: as above.
        Elem::KeyWindow => ort_type(unsafe { this(op) }.value_type.window()),
    }
}
fn characteristic(optional: bool) -> OrtCustomOpInputOutputCharacteristic {
    if optional {
        OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
    } else {
        OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED
    }
}
unsafe extern "system" fn input_type(
    op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    port_type(op, input::PORTS[i.min(input::COUNT - 1)].elem)
}
unsafe extern "system" fn output_type(
    op: *const OrtCustomOp,
    i: usize,
) -> ONNXTensorElementDataType {
    port_type(op, output::PORTS[i.min(output::COUNT - 1)].elem)
}
unsafe extern "system" fn input_characteristic(
    _: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(input::PORTS[i.min(input::COUNT - 1)].optional)
}
unsafe extern "system" fn output_characteristic(
    _: *const OrtCustomOp,
    i: usize,
) -> OrtCustomOpInputOutputCharacteristic {
    characteristic(output::PORTS[i.min(output::COUNT - 1)].optional)
}
unsafe extern "system" fn input_memory_type(_: *const OrtCustomOp, _: usize) -> OrtMemType {
    // ORT 1.31 dereferences this callback unconditionally: it must be filled.
    OrtMemType::OrtMemTypeDefault
}
unsafe extern "system" fn variadic_min_arity(_: *const OrtCustomOp) -> c_int {
    1
}
unsafe extern "system" fn variadic_homogeneity(_: *const OrtCustomOp) -> c_int {
    1
}
unsafe extern "system" fn start_version(_: *const OrtCustomOp) -> c_int {
    lookat_contract::OPSET_VERSION as c_int
}
unsafe extern "system" fn end_version(_: *const OrtCustomOp) -> c_int {
    lookat_contract::OPSET_VERSION as c_int
}

unsafe extern "system" fn create_kernel(
    op: *const OrtCustomOp,
    api: *const OrtApi,
    info: *const OrtKernelInfo,
    kernel: *mut *mut c_void,
) -> OrtStatusPtr {
    // SAFETY: ORT passes the table of the version we declared; it lives for the process.
    let Some(api) = (unsafe { api.as_ref() }).map(Api::from_table) else {
        return OrtStatusPtr(std::ptr::null_mut()); // unreachable: ORT always passes its table
    };
    // SAFETY: ORT calls back with the op pointer we registered.
    let value_type = unsafe { this(op) }.value_type;
    let created = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: info is valid during this call.
        unsafe { LookatKernel::create(api, info, value_type) }
    }));
    match created {
        Ok(Ok(k)) => {
            // SAFETY: kernel is ORT's out-pointer.
            unsafe { *kernel = Box::into_raw(Box::new(k)).cast() };
            OrtStatusPtr(std::ptr::null_mut())
        }
        Ok(Err(msg)) => OrtStatusPtr(api.invalid_argument_status(&msg)),
        Err(_) => OrtStatusPtr(
            api.error_status("LookatAttention: kernel creation panicked (a bug in lookat)"),
        ),
    }
}

unsafe extern "system" fn compute(kernel: *mut c_void, ctx: *mut OrtKernelContext) -> OrtStatusPtr {
    // SAFETY: kernel is what create_kernel returned; ORT may call compute from many threads at
    // once, which LookatKernel allows (&self, Sync).
    let k = unsafe { &*(kernel as *const LookatKernel) };
    OrtStatusPtr(k.compute_guarded(ctx))
}

unsafe extern "system" fn destroy_kernel(kernel: *mut c_void) {
    if !kernel.is_null() {
        // SAFETY: kernel came from Box::into_raw in create_kernel and ORT destroys it once.
        let _ = catch_unwind(|| drop(unsafe { Box::from_raw(kernel as *mut LookatKernel) }));
    }
}

fn make_op(value_type: ValueType) -> LookatOp {
    // SAFETY: OrtCustomOp holds a u32 and `Option`s of function pointers; all-zero is a valid value
    // (0 and None). Fields that exist only in newer API versions (GetMayInplace & co.) stay None:
    // ORT reads them only from ops that declare that newer version.
    let mut base: OrtCustomOp = unsafe { std::mem::zeroed() };
    base.version = lookat_contract::MIN_ORT_API_VERSION;
    // The V1 CreateKernel/KernelCompute stay None on purpose: ORT uses the V2 pair (which can
    // return a status) only when the V1 KernelCompute is null, in several of its versions.
    base.CreateKernelV2 = Some(create_kernel);
    base.KernelComputeV2 = Some(compute);
    base.KernelDestroy = Some(destroy_kernel);
    base.GetName = Some(get_name);
    base.GetExecutionProviderType = Some(get_provider);
    base.GetInputType = Some(input_type);
    base.GetInputTypeCount = Some(input_count);
    base.GetOutputType = Some(output_type);
    base.GetOutputTypeCount = Some(output_count);
    base.GetInputCharacteristic = Some(input_characteristic);
    base.GetOutputCharacteristic = Some(output_characteristic);
    base.GetInputMemoryType = Some(input_memory_type);
    base.GetVariadicInputMinArity = Some(variadic_min_arity);
    base.GetVariadicInputHomogeneity = Some(variadic_homogeneity);
    base.GetVariadicOutputMinArity = Some(variadic_min_arity);
    base.GetVariadicOutputHomogeneity = Some(variadic_homogeneity);
    base.GetStartVersion = Some(start_version);
    base.GetEndVersion = Some(end_version);
    LookatOp { base, value_type }
}

/// The op tables; every session keeps raw pointers to them, so they are never freed.
static OPS: OnceLock<[LookatOp; 3]> = OnceLock::new();

/// Adds a `com.lookat` domain holding both kernels to `options`.
///
/// # Safety
/// `options` must be a valid `OrtSessionOptions`.
pub(crate) unsafe fn register(api: Api, options: *mut OrtSessionOptions) -> Result<(), String> {
    let ops = OPS.get_or_init(|| ValueType::ALL.map(make_op));
    let raw = api.raw();
    let mut domain: *mut OrtCustomOpDomain = std::ptr::null_mut();
    api.check(
        // SAFETY: the domain name is a C string; ORT copies it. The domain object is handed to ORT below and
        // must outlive the sessions that use it, so it is deliberately never released.
        unsafe { (raw.CreateCustomOpDomain)(c_names().domain.as_ptr(), &mut domain) },
        "CreateCustomOpDomain",
    )?;
    for op in ops {
        api.check(
            // SAFETY: the op lives in a static that is never dropped.
            unsafe { (raw.CustomOpDomain_Add)(domain, &op.base) },
            "CustomOpDomain_Add",
        )?;
    }
    // SAFETY: options is valid (caller).
    api.check(
        unsafe { (raw.AddCustomOpDomain)(options, domain) },
        "AddCustomOpDomain",
    )
}
