//! Thin wrappers over the `OrtApi` function table.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

use ort_sys::{
    ONNXTensorElementDataType, OrtApi, OrtApiBase, OrtErrorCode, OrtKernelContext, OrtStatus,
    OrtStatusPtr, OrtTensorTypeAndShapeInfo, OrtValue,
};

/// ORT's API table, valid for the life of the process.
#[derive(Clone, Copy)]
pub(crate) struct Api(&'static OrtApi);

// SAFETY: the table is immutable and ORT's functions are thread-safe where used concurrently
// (kernel context calls are made only by the thread running that compute).
unsafe impl Send for Api {}
// SAFETY: as above.
unsafe impl Sync for Api {}

/// Element type and dimensions of a tensor.
pub(crate) struct TensorInfo {
    pub elem: ONNXTensorElementDataType,
    pub shape: Vec<i64>,
}

impl TensorInfo {
    pub fn count(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

pub(crate) fn elem_name(t: ONNXTensorElementDataType) -> &'static str {
    use ONNXTensorElementDataType::*;
    match t {
        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT => "float32",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 => "float16",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 => "uint8",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 => "int64",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE => "float64",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 => "int32",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 => "int8",
        ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL => "bool",
        _ => "another type",
    }
}

impl Api {
    /// Gets the table of `version` or returns an error status built with the oldest table.
    ///
    /// # Safety
    /// `base` must be ORT's valid `OrtApiBase`.
    pub unsafe fn from_base(base: *const OrtApiBase, version: u32) -> Result<Api, *mut OrtStatus> {
        // SAFETY: base is valid (caller); GetApi returns NULL or a table that lives forever.
        let table = unsafe { ((*base).GetApi)(version) };
        if let Some(t) = NonNull::new(table as *mut OrtApi) {
            // SAFETY: a non-null table returned by GetApi stays valid for the process.
            return Ok(Api(unsafe { t.as_ref() }));
        }
        // SAFETY: as above; the version string is a static C string.
        let runtime = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }.to_string_lossy();
        let msg = format!(
            "lookat: this ONNX Runtime ({runtime}) does not provide C API version {version}; \
             LookatAttention needs onnxruntime 1.{version} or newer"
        );
        // API version 1 exists in every runtime, and CreateStatus sits at the same place in it.
        // SAFETY: base is valid.
        let oldest = unsafe { ((*base).GetApi)(1) };
        if oldest.is_null() {
            return Err(std::ptr::null_mut());
        }
        let c = CString::new(msg).unwrap_or_default();
        // SAFETY: oldest is a valid table; CreateStatus copies the message.
        Err(unsafe { ((*oldest).CreateStatus)(OrtErrorCode::ORT_FAIL, c.as_ptr()) }.0)
    }

    pub fn raw(&self) -> &'static OrtApi {
        self.0
    }

    fn status(&self, code: OrtErrorCode, msg: &str) -> *mut OrtStatus {
        let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        // SAFETY: CreateStatus copies the message into a new status owned by the caller.
        unsafe { (self.0.CreateStatus)(code, c.as_ptr()) }.0
    }

    pub fn error_status(&self, msg: &str) -> *mut OrtStatus {
        self.status(OrtErrorCode::ORT_FAIL, msg)
    }

    pub fn invalid_argument_status(&self, msg: &str) -> *mut OrtStatus {
        self.status(OrtErrorCode::ORT_INVALID_ARGUMENT, msg)
    }

    /// Turns an ORT status into `Err(message)`, releasing it.
    pub fn check(&self, status: OrtStatusPtr, what: &str) -> Result<(), String> {
        if status.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status from ORT; the message is copied before the release.
        let msg = unsafe { CStr::from_ptr((self.0.GetErrorMessage)(status.0)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: we own the status and release it once.
        unsafe { (self.0.ReleaseStatus)(status.0) };
        Err(format!("{what}: {msg}"))
    }

    /// Releases a status whose content does not matter (e.g. "attribute not found").
    pub fn is_ok(&self, status: OrtStatusPtr) -> bool {
        self.check(status, "").is_ok()
    }

    /// Element type and shape of a tensor value.
    ///
    /// # Safety
    /// `value` must be a valid tensor `OrtValue`.
    pub unsafe fn tensor_info(&self, value: *const OrtValue) -> Result<TensorInfo, String> {
        let mut info: *mut OrtTensorTypeAndShapeInfo = std::ptr::null_mut();
        self.check(
            // SAFETY: value is valid (caller); info receives a new object we release below.
            unsafe { (self.0.GetTensorTypeAndShape)(value, &mut info) },
            "GetTensorTypeAndShape",
        )?;
        let result = (|| {
            let mut elem = ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
            self.check(
                // SAFETY: info is valid until released.
                unsafe { (self.0.GetTensorElementType)(info, &mut elem) },
                "GetTensorElementType",
            )?;
            let mut rank = 0usize;
            self.check(
                // SAFETY: as above.
                unsafe { (self.0.GetDimensionsCount)(info, &mut rank) },
                "GetDimensionsCount",
            )?;
            let mut shape = vec![0i64; rank];
            self.check(
                // SAFETY: shape has room for rank dimensions.
                unsafe { (self.0.GetDimensions)(info, shape.as_mut_ptr(), rank) },
                "GetDimensions",
            )?;
            Ok(TensorInfo { elem, shape })
        })();
        // SAFETY: info came from GetTensorTypeAndShape and is released once.
        unsafe { (self.0.ReleaseTensorTypeAndShapeInfo)(info) };
        result
    }

    /// Pointer to a tensor's data, or a dangling (never read) pointer when it has no elements.
    ///
    /// # Safety
    /// `value` must be a valid tensor `OrtValue` whose element type is `T`.
    pub unsafe fn tensor_data<T>(
        &self,
        value: *const OrtValue,
        count: usize,
    ) -> Result<*mut T, String> {
        if count == 0 {
            return Ok(NonNull::<T>::dangling().as_ptr());
        }
        let mut data: *mut c_void = std::ptr::null_mut();
        self.check(
            // SAFETY: GetTensorMutableData only reads the value header; we never write inputs.
            unsafe { (self.0.GetTensorMutableData)(value as *mut OrtValue, &mut data) },
            "GetTensorMutableData",
        )?;
        if data.is_null() {
            return Err("tensor has no data".into());
        }
        Ok(data as *mut T)
    }

    /// Input `index` of a kernel call, `None` when the optional input is absent.
    ///
    /// # Safety
    /// `ctx` must be the context of the running compute.
    pub unsafe fn input(
        &self,
        ctx: *const OrtKernelContext,
        index: usize,
    ) -> Result<Option<*const OrtValue>, String> {
        let mut count = 0usize;
        self.check(
            // SAFETY: ctx is valid (caller).
            unsafe { (self.0.KernelContext_GetInputCount)(ctx, &mut count) },
            "KernelContext_GetInputCount",
        )?;
        if index >= count {
            return Ok(None);
        }
        let mut value: *const OrtValue = std::ptr::null();
        self.check(
            // SAFETY: ctx is valid and index < count.
            unsafe { (self.0.KernelContext_GetInput)(ctx, index, &mut value) },
            "KernelContext_GetInput",
        )?;
        Ok((!value.is_null()).then_some(value))
    }
}

impl Api {
    /// Wraps the table ORT passes to kernel callbacks.
    pub fn from_table(table: &'static OrtApi) -> Api {
        Api(table)
    }
}
