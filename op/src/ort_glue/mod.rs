//! ONNX Runtime plugin glue: the only FFI in the crate.
//!
//! - `RegisterCustomOps` (the one exported symbol) adds the `com.lookat` domain with two kernels of
//!   `LookatAttention` (float32 and float16 value cache) to the session options.
//! - [`op`] fills the `OrtCustomOp` tables; [`kernel`] turns ORT tensors into slices and calls the
//!   pure kernels; [`api`] wraps the `OrtApi` calls and statuses.
//!
//! Rules kept here: no panic crosses an `extern` boundary (each one sits behind `catch_unwind`,
//! including the callbacks run on ORT's thread pool); every error becomes an `OrtStatus` naming
//! the node and the input; kernels are `&self` and `Sync`, since ORT runs one kernel instance from
//! many threads at once.

mod api;
mod kernel;
mod op;

use std::panic::{catch_unwind, AssertUnwindSafe};

use ort_sys::{OrtApiBase, OrtSessionOptions, OrtStatus};

use api::Api;

/// Entry point called by `RegisterCustomOpsLibrary` / `register_custom_ops_library`.
///
/// # Safety
/// `options` and `api_base` must be the valid pointers ONNX Runtime passes.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    if api_base.is_null() || options.is_null() {
        return std::ptr::null_mut(); // nothing to report through: ORT never does this
    }
    // SAFETY: api_base is ORT's valid base table.
    let api = match unsafe { Api::from_base(api_base, lookat_contract::MIN_ORT_API_VERSION) } {
        Ok(api) => api,
        Err(status) => return status,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: options is ORT's valid session options pointer.
        unsafe { op::register(api, options) }
    }));
    match result {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(msg)) => api.error_status(&format!("lookat: RegisterCustomOps failed: {msg}")),
        Err(_) => api.error_status("lookat: RegisterCustomOps panicked (a bug in lookat)"),
    }
}
