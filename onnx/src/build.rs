//! Small builders and readers of ONNX protos: value infos, initializers, attributes, metadata.

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// One dimension of a value info: a number or a symbolic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Fixed(v)
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Fixed(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Named(s.to_string())
    }
}

/// A tensor value info of element type `elem` and shape `dims`.
pub fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
        });
        shape.dim.push(dim);
    }
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = elem as i32;
    tensor.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tensor));
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = Some(ty).into();
    vi
}

/// A float32 initializer stored as raw little-endian bytes.
pub fn float_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = dims.to_vec();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

/// An int64 initializer.
pub fn int64_tensor(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = dims.to_vec();
    t.data_type = DataType::INT64 as i32;
    t.int64_data = data.to_vec();
    t
}

pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

pub fn float_attribute(name: &str, value: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = value;
    a
}

/// A node of `domain::op` (empty domain: the default ONNX domain).
pub fn node(
    name: &str,
    domain: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.name = name.into();
    n.domain = domain.into();
    n.op_type = op.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attributes;
    n
}

/// The tensor type of a value info, when it has one.
pub fn tensor_type(vi: &ValueInfoProto) -> Option<&type_proto::Tensor> {
    match vi.type_.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

pub fn tensor_type_mut(vi: &mut ValueInfoProto) -> Option<&mut type_proto::Tensor> {
    match vi.type_.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

/// `[B, 12, P, 64]`-style text of a value info's shape; `?` where unknown.
pub fn dims_text(vi: &ValueInfoProto) -> String {
    use tensor_shape_proto::dimension::Value;
    let Some(shape) = tensor_type(vi).and_then(|t| t.shape.as_ref()) else {
        return "?".into();
    };
    let parts: Vec<String> = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(v)) => v.to_string(),
            Some(Value::DimParam(p)) => p.clone(),
            _ => "?".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The fixed dimensions of a value info's shape (`None` for symbolic or unknown ones).
pub fn fixed_dims(vi: &ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use tensor_shape_proto::dimension::Value;
    let shape = tensor_type(vi)?.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(v)) => Some(*v),
                _ => None,
            })
            .collect(),
    )
}

/// A copy of `vi` renamed to `name`, with element type `elem` and, when given, last dimension `last`.
pub fn retyped(
    vi: &ValueInfoProto,
    name: &str,
    elem: DataType,
    last: Option<i64>,
) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value;
    let mut out = vi.clone();
    out.name = name.to_string();
    if let Some(t) = tensor_type_mut(&mut out) {
        t.elem_type = elem as i32;
        if let (Some(last), Some(shape)) = (last, t.shape.as_mut()) {
            if let Some(d) = shape.dim.last_mut() {
                d.value = Some(Value::DimValue(last));
            }
        }
    }
    out
}

/// Name of an element type as lookat's messages write it.
pub fn elem_name(dt: DataType) -> &'static str {
    match dt {
        DataType::FLOAT => "float32",
        DataType::FLOAT16 => "float16",
        DataType::UINT8 => "uint8",
        DataType::INT8 => "int8",
        DataType::INT64 => "int64",
        DataType::INT32 => "int32",
        DataType::BOOL => "bool",
        _ => "other",
    }
}

/// Sets `key` in the model's metadata_props (replacing an earlier value).
pub fn set_metadata(model: &mut ModelProto, key: &str, value: String) {
    model.metadata_props.retain(|p| p.key != key);
    let mut p = StringStringEntryProto::new();
    p.key = key.to_string();
    p.value = value;
    model.metadata_props.push(p);
}

/// The value of `key` in the model's metadata_props.
pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model
        .metadata_props
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.value.as_str())
}
