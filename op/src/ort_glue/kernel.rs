//! One LookatAttention node of one session: attributes read at creation, compute per call.

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use half::f16;
use ort_sys::{ONNXTensorElementDataType, OrtKernelContext, OrtKernelInfo, OrtStatus, OrtValue};

use super::api::{elem_name, Api, TensorInfo};
use crate::kernels::{
    lookat_attention, AttentionInputs, AttentionOptions, AttentionOutputs, Geometry, KeyTransforms,
    LookatError, ParallelFor, PreparedCodebooks, ShapeInputs, ValueElem,
};
use lookat_contract::{attr, input, output, window, CodebookShape, ValueType};

use super::op::ort_type;

use ONNXTensorElementDataType::{
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT as FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 as INT64,
    ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 as UINT8,
};

pub(crate) struct LookatKernel {
    api: Api,
    /// "LookatAttention node 'name'", the prefix of every message.
    node: String,
    num_heads: i64,
    num_kv_heads: i64,
    options: AttentionOptions,
    value_type: ValueType,
    /// The codebooks checked and laid out once at creation, when they are an initializer.
    prepared: Option<PreparedCodebooks>,
    /// The key/query transforms checked once at creation, when both are initializers.
    transforms: Option<KeyTransforms>,
}

/// Reads a string the two-call way (size, then bytes).
unsafe fn node_name(api: Api, info: *const OrtKernelInfo) -> String {
    let raw = api.raw();
    let mut size = 0usize;
    // SAFETY: info is valid; a null buffer asks for the size.
    if !api.is_ok(unsafe { (raw.KernelInfo_GetNodeName)(info, std::ptr::null_mut(), &mut size) }) {
        return String::new();
    }
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: buf holds `size` bytes.
    if !api.is_ok(unsafe {
        (raw.KernelInfo_GetNodeName)(info, buf.as_mut_ptr() as *mut c_char, &mut size)
    }) {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl LookatKernel {
    /// Reads attributes and, when the codebooks are an initializer, checks them once.
    ///
    /// # Safety
    /// `info` must be valid for the duration of the call.
    pub unsafe fn create(
        api: Api,
        info: *const OrtKernelInfo,
        value_type: ValueType,
    ) -> Result<LookatKernel, String> {
        let raw = api.raw();
        // SAFETY: info is valid (caller).
        let name = unsafe { node_name(api, info) };
        let node = format!("LookatAttention node '{name}'");

        let c_name = |key: &str| CString::new(key).unwrap_or_default();
        let mut num_heads = 0i64;
        api.check(
            // SAFETY: info is valid; the name is a C string.
            unsafe {
                (raw.KernelInfoGetAttribute_int64)(
                    info,
                    c_name(attr::NUM_HEADS).as_ptr(),
                    &mut num_heads,
                )
            },
            "",
        )
        .map_err(|_| format!("{node}: attribute 'num_heads' (int) is required"))?;
        if num_heads < 1 {
            return Err(format!(
                "{node}: attribute 'num_heads' must be >= 1, got {num_heads}"
            ));
        }
        let mut num_kv_heads = num_heads;
        // SAFETY: info is valid; the name is a C string. Absent means num_heads.
        let _ = api.is_ok(unsafe {
            (raw.KernelInfoGetAttribute_int64)(
                info,
                c_name(attr::NUM_KV_HEADS).as_ptr(),
                &mut num_kv_heads,
            )
        });
        if num_kv_heads < 1 || num_heads % num_kv_heads != 0 {
            return Err(format!(
                "{node}: attribute 'num_kv_heads' must be >= 1 and divide num_heads={num_heads}, got {num_kv_heads}"
            ));
        }
        let mut scale = 0f32;
        // SAFETY: as above.
        let scale = api
            .is_ok(unsafe {
                (raw.KernelInfoGetAttribute_float)(info, c_name(attr::SCALE).as_ptr(), &mut scale)
            })
            .then_some(scale);
        if let Some(s) = scale {
            if !s.is_finite() || s <= 0.0 {
                return Err(format!(
                    "{node}: attribute 'scale' must be finite and > 0, got {s}"
                ));
            }
        }
        let mut exact_current = 0i64;
        // SAFETY: as above; absent means the default 0.
        let _ = api.is_ok(unsafe {
            (raw.KernelInfoGetAttribute_int64)(
                info,
                c_name(attr::EXACT_CURRENT).as_ptr(),
                &mut exact_current,
            )
        });
        if !(0..=1).contains(&exact_current) {
            return Err(format!(
                "{node}: attribute 'exact_current' must be 0 or 1, got {exact_current}"
            ));
        }

        let mut window_attrs = [0i64; 2];
        for (name, slot) in [attr::SINKS, attr::WINDOW]
            .iter()
            .zip(window_attrs.iter_mut())
        {
            // SAFETY: info is valid; the name is a C string. Absent means 0.
            let _ = api.is_ok(unsafe {
                (raw.KernelInfoGetAttribute_int64)(info, c_name(name).as_ptr(), slot)
            });
            if !(0..=1 << 24).contains(slot) {
                return Err(format!(
                    "{node}: attribute '{name}' must be in 0..=16777216, got {}",
                    *slot
                ));
            }
        }
        let [sinks, window] = window_attrs.map(|v| v as usize);

        let mut kernel = LookatKernel {
            api,
            node,
            num_heads,
            num_kv_heads,
            options: AttentionOptions {
                scale,
                exact_current: exact_current == 1,
                sinks,
                window,
            },
            value_type,
            prepared: None,
            transforms: None,
        };

        let mut is_constant = 0;
        let mut value: *const OrtValue = std::ptr::null();
        // SAFETY: info is valid; a constant input stays alive as long as the session.
        let found = api.is_ok(unsafe {
            (raw.KernelInfoGetConstantInput_tensor)(
                info,
                input::CODEBOOKS,
                &mut is_constant,
                &mut value,
            )
        });
        if found && is_constant != 0 && !value.is_null() {
            // SAFETY: value is a valid constant tensor.
            let prepared = unsafe { kernel.check_codebooks(value) }
                .map_err(|e| format!("{}: {e}", kernel.node))?;
            kernel.prepared = Some(prepared);
        }
        let constant = |index: usize| -> Option<*const OrtValue> {
            let (mut is_constant, mut value) = (0, std::ptr::null::<OrtValue>());
            // SAFETY: info is valid; a constant input stays alive as long as the session.
            let found = api.is_ok(unsafe {
                (raw.KernelInfoGetConstantInput_tensor)(info, index, &mut is_constant, &mut value)
            });
            (found && is_constant != 0 && !value.is_null()).then_some(value)
        };
        if let (Some(a), Some(b)) = (
            constant(input::KEY_TRANSFORM),
            constant(input::QUERY_TRANSFORM),
        ) {
            // SAFETY: valid constant tensors.
            let t = unsafe { kernel.check_transforms(a, b) }
                .map_err(|e| format!("{}: {e}", kernel.node))?;
            kernel.transforms = Some(t);
        }
        Ok(kernel)
    }

    /// The key and query transforms: `[num_kv_heads, D, D]` float32 each, finite (NaN: not
    /// calibrated yet), and inverse-transposes of each other (`B·Aᵀ = I` to 1e-3), so that
    /// table scores still estimate `q·k`.
    unsafe fn check_transforms(
        &self,
        key: *const OrtValue,
        query: *const OrtValue,
    ) -> Result<KeyTransforms, String> {
        let mut data = vec![];
        let mut dims = vec![];
        for (value, index) in [(key, input::KEY_TRANSFORM), (query, input::QUERY_TRANSFORM)] {
            let name = input::name(index);
            // SAFETY: value is a valid tensor (caller).
            let info = unsafe { self.api.tensor_info(value) }?;
            expect_type(name, &info, FLOAT)?;
            let ok = info.shape.len() == 3
                && info.shape[0] == self.num_kv_heads
                && info.shape[1] > 0
                && info.shape[1] == info.shape[2];
            if !ok {
                return Err(format!(
                    "input '{name}' must be [num_kv_heads={}, head_dim, head_dim], got shape {:?}",
                    self.num_kv_heads, info.shape
                ));
            }
            let count = info.count();
            // SAFETY: a float tensor of `count` elements.
            let values = unsafe { slice::<f32>(self.api.tensor_data(value, count)?, count) };
            if let Some(pos) = values.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "input '{name}' holds a non-finite value ({}) at flat index {pos}: a model \
                     rewritten with transforms carries NaN until lookat-calibrate fills them",
                    values[pos]
                ));
            }
            dims.push(info.shape.clone());
            data.push(values);
        }
        if dims[0] != dims[1] {
            return Err(format!(
                "inputs 'key_transform' {:?} and 'query_transform' {:?} differ in shape",
                dims[0], dims[1]
            ));
        }
        let (heads, d) = (dims[0][0] as usize, dims[0][1] as usize);
        let t = KeyTransforms::new(data[0], data[1], heads, d)
            .ok_or("transform tensors do not fit their shape")?;
        let err = t.inverse_error();
        if err.is_nan() || err > 1e-3 {
            return Err(format!(
                "inputs 'key_transform' (A) and 'query_transform' (B) must satisfy B·Aᵀ = I so that \
                 scores estimate q·k; the largest deviation is {err:.3e}"
            ));
        }
        Ok(t)
    }

    /// Shape, head count and finiteness of the codebooks (NaN codebooks are what an uncalibrated
    /// rewritten model carries, so the message says what to do); then their layout for the
    /// kernels.
    unsafe fn check_codebooks(&self, value: *const OrtValue) -> Result<PreparedCodebooks, String> {
        // SAFETY: value is a valid tensor (caller).
        let info = unsafe { self.api.tensor_info(value) }?;
        expect_type(input::name(input::CODEBOOKS), &info, FLOAT)?;
        let shape = CodebookShape::from_dims(&info.shape).ok_or_else(|| {
            format!(
                "input 'codebooks' must have rank 4 [num_kv_heads, subspaces, centroids, head_dim/subspaces], got shape {:?}",
                info.shape
            )
        })?;
        if shape.heads as i64 != self.num_kv_heads {
            return Err(format!(
                "input 'codebooks' has {} heads (shape {:?}), the node has num_kv_heads={}",
                shape.heads, info.shape, self.num_kv_heads
            ));
        }
        if !(1..=lookat_contract::MAX_CENTROIDS).contains(&shape.centroids) {
            return Err(format!(
                "input 'codebooks' has {} centroids per subspace (shape {:?}); 1 to {} allowed",
                shape.centroids,
                info.shape,
                lookat_contract::MAX_CENTROIDS
            ));
        }
        let count = info.count();
        // SAFETY: a float tensor of `count` elements.
        let data = unsafe { slice::<f32>(self.api.tensor_data(value, count)?, count) };
        if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
            let [h, j, c, i] = shape.position(pos);
            let at = format!("[head {h}, subspace {j}, centroid {c}, dimension {i}]");
            return Err(if data[pos].is_nan() {
                format!(
                    "input 'codebooks' holds NaN at {at}: a model rewritten by lookat-rewrite carries \
                     NaN codebooks until lookat-calibrate fills them; calibrate it"
                )
            } else {
                format!(
                    "input 'codebooks' holds an infinite value ({}) at {at}: codebooks must be finite",
                    data[pos]
                )
            });
        }
        Ok(PreparedCodebooks::new(
            data,
            shape.heads,
            shape.subspaces,
            shape.centroids,
            shape.sub_dim,
        ))
    }

    /// Runs compute behind `catch_unwind`; the result is ORT's status (null = success).
    pub fn compute_guarded(&self, ctx: *mut OrtKernelContext) -> *mut OrtStatus {
        // SAFETY: ctx is the valid context of this call.
        match catch_unwind(AssertUnwindSafe(|| unsafe { self.compute(ctx) })) {
            Ok(Ok(())) => std::ptr::null_mut(),
            Ok(Err(LookatError::InvalidArgument(m))) => self
                .api
                .invalid_argument_status(&format!("{}: {m}", self.node)),
            Ok(Err(LookatError::Internal(m))) => {
                self.api.error_status(&format!("{}: {m}", self.node))
            }
            Err(_) => self.api.error_status(&format!(
                "{}: compute panicked (a bug in lookat)",
                self.node
            )),
        }
    }

    unsafe fn compute(&self, ctx: *mut OrtKernelContext) -> Result<(), LookatError> {
        let api = self.api;
        let internal = LookatError::Internal;
        let invalid = LookatError::InvalidArgument;

        let windowed = self.options.windowed();
        let mut outputs = 0usize;
        api.check(
            // SAFETY: ctx is valid for this call.
            unsafe { (api.raw().KernelContext_GetOutputCount)(ctx, &mut outputs) },
            "KernelContext_GetOutputCount",
        )
        .map_err(internal)?;
        if windowed != (outputs > output::PRESENT_KEY_WINDOW) {
            return Err(invalid(if windowed {
                "output 'present_key_window' is required: the node keeps a key window (sinks or window > 0)".into()
            } else {
                "output 'present_key_window' is produced only when attribute 'sinks' or 'window' is > 0".into()
            }));
        }

        let required = |i: usize| -> Result<(*const OrtValue, TensorInfo), LookatError> {
            // SAFETY: ctx is valid for this call.
            let v = unsafe { api.input(ctx, i) }
                .map_err(internal)?
                .ok_or_else(|| invalid(format!("input '{}' is required", input::name(i))))?;
            // SAFETY: v is a valid input value.
            let info = unsafe { api.tensor_info(v) }.map_err(internal)?;
            Ok((v, info))
        };
        let optional = |i: usize| -> Result<Option<(*const OrtValue, TensorInfo)>, LookatError> {
            // SAFETY: ctx is valid for this call.
            match unsafe { api.input(ctx, i) }.map_err(internal)? {
                // SAFETY: v is a valid input value.
                Some(v) => Ok(Some((v, unsafe { api.tensor_info(v) }.map_err(internal)?))),
                None => Ok(None),
            }
        };
        let query = required(input::QUERY)?;
        let key = required(input::KEY)?;
        let value = required(input::VALUE)?;
        let codebooks = required(input::CODEBOOKS)?;
        // Both past inputs absent means an empty cache (P = 0), as a model without cache I/O has.
        let past_codes_in = optional(input::PAST_KEY_CODES)?;
        let past_value_in = optional(input::PAST_VALUE)?;
        let (past_codes, past_value) = match (past_codes_in, past_value_in) {
            (Some(c), Some(v)) => (c, v),
            (None, None) => {
                // Shapes of an empty past for this query ([B, S, H·D] or [B, H, S, D]);
                // Geometry::from_shapes checks the query itself.
                let q = &query.1.shape;
                let (b, last) = (q.first().copied().unwrap_or(0), q.last().copied().unwrap_or(0));
                let d = if q.len() == 4 { last } else { last / self.num_heads };
                let m = codebooks.1.shape.get(1).copied().unwrap_or(0);
                let row = d + self.value_type.row_extra() as i64;
                let empty = |elem, last| (std::ptr::null::<OrtValue>(), TensorInfo { elem, shape: vec![b, self.num_kv_heads, 0, last] });
                (empty(UINT8, m), empty(ort_type(self.value_type), row))
            }
            _ => {
                return Err(invalid(
                    "inputs 'past_key_codes' and 'past_value' must be given together or both left empty".into(),
                ))
            }
        };
        let mask = optional(input::ATTENTION_MASK)?;
        let past_window = optional(input::PAST_KEY_WINDOW)?;
        let key_transform = optional(input::KEY_TRANSFORM)?;
        let query_transform = optional(input::QUERY_TRANSFORM)?;
        let past_sequence_length = match optional(input::PAST_SEQUENCE_LENGTH)? {
            None => None,
            Some((v, info)) => {
                expect_type("past_sequence_length", &info, INT64).map_err(invalid)?;
                if info.count() != 1 || info.shape.len() > 1 {
                    return Err(invalid(format!(
                        "input 'past_sequence_length' must be a scalar or shape [1], got shape {:?}",
                        info.shape
                    )));
                }
                if past_codes.0.is_null() {
                    return Err(invalid(
                        "input 'past_sequence_length' needs the shared cache buffers 'past_key_codes' and 'past_value'".into(),
                    ));
                }
                // SAFETY: an int64 tensor of one element.
                Some(unsafe { input_slice::<i64>(api, &(v, info)) }?[0])
            }
        };
        let per_call_transforms;
        let transforms = match (&key_transform, &query_transform, &self.transforms) {
            (None, None, _) => None,
            (Some(_), Some(_), Some(prepared)) => Some(prepared),
            (Some(a), Some(b), None) => {
                // SAFETY: valid input tensors.
                per_call_transforms =
                    unsafe { self.check_transforms(a.0, b.0) }.map_err(invalid)?;
                Some(&per_call_transforms)
            }
            _ => {
                return Err(invalid(
                    "inputs 'key_transform' and 'query_transform' must be given together".into(),
                ))
            }
        };
        if past_window.is_some() && !windowed {
            return Err(invalid(
                "input 'past_key_window' is read only when attribute 'sinks' or 'window' is > 0"
                    .into(),
            ));
        }
        if windowed && past_window.is_none() != past_codes.0.is_null() {
            return Err(invalid(
                "input 'past_key_window' must be given together with 'past_key_codes' and 'past_value' when the node keeps a key window".into(),
            ));
        }

        for (name, t, want) in [
            ("query", &query.1, FLOAT),
            ("key", &key.1, FLOAT),
            ("value", &value.1, FLOAT),
            ("past_key_codes", &past_codes.1, UINT8),
            ("past_value", &past_value.1, ort_type(self.value_type)),
            ("codebooks", &codebooks.1, FLOAT),
        ] {
            expect_type(name, t, want).map_err(invalid)?;
        }
        if let Some((_, t)) = &mask {
            expect_type("attention_mask", t, INT64).map_err(invalid)?;
        }
        if let Some((_, t)) = &past_window {
            expect_type("past_key_window", t, ort_type(self.value_type.window()))
                .map_err(invalid)?;
        }

        let g = Geometry::from_shapes(
            &ShapeInputs {
                query: &query.1.shape,
                key: &key.1.shape,
                value: &value.1.shape,
                past_key_codes: &past_codes.1.shape,
                past_value: &past_value.1.shape,
                attention_mask: mask.as_ref().map(|(_, t)| t.shape.as_slice()),
                codebooks: &codebooks.1.shape,
                past_sequence_length,
                value_row_extra: self.value_type.row_extra(),
            },
            self.num_heads,
            self.num_kv_heads,
        )?;
        let per_call;
        let prepared = match &self.prepared {
            Some(prepared) => prepared,
            None => {
                // SAFETY: a valid float tensor input.
                per_call = unsafe { self.check_codebooks(codebooks.0) }.map_err(invalid)?;
                &per_call
            }
        };

        // The past window holds min(P, sinks + window) rows; the present one min(T, ...).
        let (sinks, window) = (self.options.sinks, self.options.window);
        let past_window = match past_window {
            Some(w) => {
                let want = [
                    g.batch,
                    g.kv_heads,
                    window::rows(g.past_tokens, sinks, window),
                    g.head_dim,
                ]
                .map(|d| d as i64);
                if w.1.shape != want {
                    return Err(invalid(format!(
                        "input 'past_key_window' shape {:?} must be {want:?} [batch, num_kv_heads, min(past_tokens, sinks+window), head_dim]",
                        w.1.shape
                    )));
                }
                w
            }
            None => (
                std::ptr::null(),
                TensorInfo {
                    elem: ort_type(self.value_type.window()),
                    shape: vec![g.batch as i64, g.kv_heads as i64, 0, g.head_dim as i64],
                },
            ),
        };
        let t_n = g.present_rows() as i64;
        let window_rows = if windowed {
            window::rows(g.total_tokens(), sinks, window) as i64
        } else {
            0
        };
        let out_shapes: [Vec<i64>; 4] = [
            vec![g.batch as i64, g.new_tokens as i64, g.hidden() as i64],
            vec![g.batch as i64, g.kv_heads as i64, t_n, g.subspaces as i64],
            vec![
                g.batch as i64,
                g.kv_heads as i64,
                t_n,
                self.value_type.row_len(g.head_dim) as i64,
            ],
            vec![
                g.batch as i64,
                g.kv_heads as i64,
                window_rows,
                g.head_dim as i64,
            ],
        ];
        let mut out_values = [std::ptr::null_mut::<OrtValue>(); 4];
        for (i, shape) in out_shapes.iter().enumerate().take(outputs.min(4)) {
            api.check(
                // SAFETY: ctx is valid; ORT allocates the output with this shape.
                unsafe {
                    (api.raw().KernelContext_GetOutput)(
                        ctx,
                        i,
                        shape.as_ptr(),
                        shape.len(),
                        &mut out_values[i],
                    )
                },
                "KernelContext_GetOutput",
            )
            .map_err(internal)?;
            if out_values[i].is_null() {
                return Err(internal(format!("ORT returned no buffer for output {i}")));
            }
        }

        let no_mask = (
            std::ptr::null(),
            TensorInfo {
                elem: INT64,
                shape: vec![0],
            },
        );
        // SAFETY: the values are valid tensors of the types checked above, the outputs were just
        // allocated with these shapes.
        let past_in_present = unsafe {
            self.past_in_present(
                &g,
                [
                    (input::QUERY, &query),
                    (input::KEY, &key),
                    (input::VALUE, &value),
                    (input::PAST_KEY_CODES, &past_codes),
                    (input::PAST_VALUE, &past_value),
                    (input::ATTENTION_MASK, mask.as_ref().unwrap_or(&no_mask)),
                    (input::PAST_KEY_WINDOW, &past_window),
                ],
                &out_values,
                &out_shapes,
            )
        }?;
        let pool = OrtPool::new(api, ctx);
        let tensors = CallTensors {
            past_in_present,
            query,
            key,
            value,
            past_codes,
            past_value,
            mask,
            codebooks,
            past_window,
            outputs: out_values,
            shapes: out_shapes,
        };
        // SAFETY: every tensor was type-checked above and the outputs were just allocated with
        // these shapes; the value cache's type is the kernel's `value_type`.
        unsafe {
            match self.value_type {
                ValueType::Float32 => {
                    self.run_typed::<f32>(&g, &tensors, prepared, transforms, &pool)?
                }
                ValueType::Float16 => {
                    self.run_typed::<f16>(&g, &tensors, prepared, transforms, &pool)?
                }
                ValueType::Int8 => {
                    self.run_typed::<i8>(&g, &tensors, prepared, transforms, &pool)?
                }
            }
        }
        pool.finish()
    }
}

/// The tensors of one call, checked and allocated.
struct CallTensors {
    /// The present cache outputs are the past inputs' own memory (shared buffers).
    past_in_present: bool,
    query: (*const OrtValue, TensorInfo),
    key: (*const OrtValue, TensorInfo),
    value: (*const OrtValue, TensorInfo),
    past_codes: (*const OrtValue, TensorInfo),
    past_value: (*const OrtValue, TensorInfo),
    mask: Option<(*const OrtValue, TensorInfo)>,
    codebooks: (*const OrtValue, TensorInfo),
    /// Null with an empty shape when the node keeps no window or the cache is empty.
    past_window: (*const OrtValue, TensorInfo),
    /// The fourth (the present window) is null when the node keeps no window.
    outputs: [*mut OrtValue; 4],
    shapes: [Vec<i64>; 4],
}

impl LookatKernel {
    /// Whether the present codes and values are the past inputs' own buffers — what a host gets
    /// by binding one max-length buffer as both (IOBinding): the call then appends in place.
    /// Both or neither must be shared, and no other output may overlap any input (the key
    /// windows included): the kernels read inputs while they write outputs.
    ///
    /// # Safety
    /// `inputs` must be valid input tensors (or null) with their infos, and `outputs` the
    /// output tensors just allocated with `out_shapes`.
    unsafe fn past_in_present(
        &self,
        g: &Geometry,
        inputs: [(usize, &(*const OrtValue, TensorInfo)); 7],
        outputs: &[*mut OrtValue; 4],
        out_shapes: &[Vec<i64>; 4],
    ) -> Result<bool, LookatError> {
        let out_elem = [
            4,
            1,
            self.value_type.elem_bytes(),
            self.value_type.window().elem_bytes(),
        ];
        // (port, first byte, bytes) of every non-empty buffer.
        let span = |value: *const OrtValue, count: usize, elem: usize, port: usize| {
            if value.is_null() || count == 0 {
                return Ok(None);
            }
            // SAFETY: a valid tensor of `count` elements (caller); the address is only compared.
            let start = unsafe { self.api.tensor_data::<u8>(value, count) }
                .map_err(LookatError::Internal)? as usize;
            Ok::<_, LookatError>(Some((port, start, count * elem)))
        };
        let mut ins = vec![];
        for (port, (value, info)) in inputs {
            ins.extend(span(*value, info.count(), elem_size(info.elem), port)?);
        }
        let mut outs = vec![];
        for (port, (&value, shape)) in outputs.iter().zip(out_shapes).enumerate() {
            let count = shape.iter().map(|&d| d as usize).product();
            outs.extend(span(value, count, out_elem[port], port)?);
        }
        let pairs = [
            (output::PRESENT_KEY_CODES, input::PAST_KEY_CODES),
            (output::PRESENT_VALUE, input::PAST_VALUE),
        ];
        let mut shared = [false; 2];
        for &(o, o_start, o_len) in &outs {
            for &(i, i_start, i_len) in &ins {
                if o_start >= i_start + i_len || i_start >= o_start + o_len {
                    continue;
                }
                match pairs.iter().position(|&p| p == (o, i)) {
                    Some(k) if o_start == i_start && o_len == i_len => shared[k] = true,
                    _ => {
                        return Err(LookatError::InvalidArgument(format!(
                            "output '{}' overlaps input '{}'{}",
                            output::name(o),
                            input::name(i),
                            if pairs.contains(&(o, i)) {
                                " without being the same buffer"
                            } else {
                                ": only a present cache and its own past may share a buffer"
                            }
                        )))
                    }
                }
            }
        }
        if shared[0] != shared[1] {
            return Err(LookatError::InvalidArgument(
                "bind both 'past_key_codes'/'present_key_codes' and 'past_value'/'present_value' \
                 to one buffer each, or neither: only one pair shares its buffer"
                    .into(),
            ));
        }
        if shared[0] && g.capacity.is_none() {
            return Err(LookatError::InvalidArgument(
                "the present cache outputs share the past inputs' buffers: that needs input \
                 'past_sequence_length' (shared max-length buffers)"
                    .into(),
            ));
        }
        Ok(shared[0])
    }

    /// Runs the kernels with the value cache read and written as `V`.
    ///
    /// # Safety
    /// The inputs must be valid tensors of the types they were checked to have, `V` the value
    /// cache's element type, and the outputs freshly allocated with `shapes`.
    unsafe fn run_typed<V: ValueElem>(
        &self,
        g: &Geometry,
        t: &CallTensors,
        prepared: &PreparedCodebooks,
        transforms: Option<&KeyTransforms>,
        pool: &OrtPool,
    ) -> Result<(), LookatError> {
        let api = self.api;
        // SAFETY: guaranteed by the caller; inputs are only read, outputs are ours to write.
        unsafe {
            let attention_mask = match &t.mask {
                Some(m) => Some(input_slice::<i64>(api, m)?),
                None => None,
            };
            lookat_attention(
                g,
                &self.options,
                &AttentionInputs {
                    query: input_slice(api, &t.query)?,
                    key: input_slice(api, &t.key)?,
                    value: input_slice(api, &t.value)?,
                    past_key_codes: if t.past_in_present {
                        &[]
                    } else {
                        input_slice(api, &t.past_codes)?
                    },
                    past_value: if t.past_in_present {
                        &[]
                    } else {
                        input_slice::<V>(api, &t.past_value)?
                    },
                    past_in_present: t.past_in_present,
                    attention_mask,
                    codebooks: input_slice(api, &t.codebooks)?,
                    prepared: Some(prepared),
                    past_key_window: input_slice::<V::Window>(api, &t.past_window)?,
                    transforms,
                },
                AttentionOutputs {
                    output: output_slice(api, t.outputs[0], &t.shapes[0])?,
                    present_key_codes: output_slice(api, t.outputs[1], &t.shapes[1])?,
                    present_value: output_slice::<V>(api, t.outputs[2], &t.shapes[2])?,
                    present_key_window: if t.outputs[3].is_null() {
                        &mut []
                    } else {
                        output_slice::<V::Window>(api, t.outputs[3], &t.shapes[3])?
                    },
                },
                pool,
            )
        }
    }
}

/// Bytes of one element of the types the node's tensors have.
fn elem_size(t: ONNXTensorElementDataType) -> usize {
    use ONNXTensorElementDataType::*;
    match t {
        ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 => 8,
        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT => 4,
        ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 => 2,
        _ => 1,
    }
}

fn expect_type(name: &str, t: &TensorInfo, want: ONNXTensorElementDataType) -> Result<(), String> {
    if t.elem == want {
        Ok(())
    } else {
        Err(format!(
            "input '{name}' must be {}, got {}",
            elem_name(want),
            elem_name(t.elem)
        ))
    }
}

/// # Safety
/// `ptr` must point at `len` initialised elements that outlive the returned slice.
unsafe fn slice<'a, T>(ptr: *mut T, len: usize) -> &'a [T] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// # Safety
/// `t.0` must be a valid tensor of element type `T` described by `t.1`.
unsafe fn input_slice<'a, T>(
    api: Api,
    t: &(*const OrtValue, TensorInfo),
) -> Result<&'a [T], LookatError> {
    let n = t.1.count();
    // SAFETY: guaranteed by the caller.
    Ok(unsafe {
        slice(
            api.tensor_data::<T>(t.0, n)
                .map_err(LookatError::Internal)?,
            n,
        )
    })
}

/// # Safety
/// `v` must be an output tensor of element type `T` just allocated with `shape`, written by no
/// one else during the call.
unsafe fn output_slice<'a, T>(
    api: Api,
    v: *mut OrtValue,
    shape: &[i64],
) -> Result<&'a mut [T], LookatError> {
    let n: usize = shape.iter().map(|&d| d as usize).product();
    // SAFETY: v is a valid output tensor of element type T (caller).
    let ptr = unsafe { api.tensor_data::<T>(v, n) }.map_err(LookatError::Internal)?;
    // SAFETY: guaranteed by the caller.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

/// Runs the kernel's tasks on ORT's intra-op thread pool. Panics inside a task are caught there
/// (unwinding into ORT's C++ pool would abort the host) and reported after the pool returns.
struct OrtPool {
    api: Api,
    ctx: *const OrtKernelContext,
    failure: Mutex<Option<String>>,
}

// SAFETY: ctx is only used by the thread that runs this compute (the pool call itself); the
// tasks never touch it.
unsafe impl Sync for OrtPool {}

struct PoolJob<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

unsafe extern "C" fn pool_task(data: *mut c_void, index: usize) {
    // SAFETY: data is the PoolJob that outlives the ParallelFor call which runs this task.
    let job = unsafe { &*(data as *const PoolJob<'_>) };
    if catch_unwind(AssertUnwindSafe(|| (job.work)(index))).is_err() {
        job.panicked.store(true, Ordering::Relaxed);
    }
}

impl OrtPool {
    fn new(api: Api, ctx: *const OrtKernelContext) -> OrtPool {
        OrtPool {
            api,
            ctx,
            failure: Mutex::new(None),
        }
    }

    fn fail(&self, msg: String) {
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(msg);
    }

    fn finish(self) -> Result<(), LookatError> {
        match self.failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(msg) => Err(LookatError::Internal(msg)),
        }
    }
}

impl ParallelFor for OrtPool {
    /// The C API does not tell a kernel how many threads its session's pool has; the number of
    /// CPUs is the default pool size and an upper bound in practice.
    fn parallelism(&self) -> usize {
        static CPUS: OnceLock<usize> = OnceLock::new();
        *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn run(&self, tasks: usize, work: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 {
            if catch_unwind(AssertUnwindSafe(|| (0..tasks).for_each(work))).is_err() {
                self.fail("a kernel task panicked (a bug in lookat)".into());
            }
            return;
        }
        let job = PoolJob {
            work,
            panicked: AtomicBool::new(false),
        };
        // SAFETY: ctx is this compute's context; job outlives the call, which returns only when
        // every task has finished. num_batch = 0 lets ORT split the work over its threads.
        let status = unsafe {
            (self.api.raw().KernelContext_ParallelFor)(
                self.ctx,
                pool_task,
                tasks,
                0,
                &job as *const PoolJob<'_> as *mut c_void,
            )
        };
        if let Err(msg) = self.api.check(status, "KernelContext_ParallelFor") {
            self.fail(msg);
        }
        if job.panicked.load(Ordering::Relaxed) {
            self.fail("a kernel task panicked (a bug in lookat)".into());
        }
    }
}
