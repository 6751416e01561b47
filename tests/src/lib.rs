//! Shared helpers of the Rust end-to-end tests: the ONNX Runtime library and the plugin (both
//! required: a missing one fails the test with the set-up command to run), and one-node models.

use std::path::PathBuf;
use std::sync::OnceLock;

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The ONNX Runtime shared library from the project venv (`ORT_DYLIB_PATH` overrides).
pub fn ort_library() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo_root().join(
                ".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1",
            )
        });
    assert!(
        path.is_file(),
        "ONNX Runtime library {} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// The LookatAttention plugin (`LOOKAT_OP_LIB` overrides).
pub fn plugin_library() -> PathBuf {
    let path = std::env::var_os("LOOKAT_OP_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/liblookat_op.so"));
    assert!(
        path.is_file(),
        "plugin {} is missing: run scripts/setup.sh (cargo build --release)",
        path.display()
    );
    path
}

/// The ONNX Runtime environment, loaded once per test process and never dropped.
pub fn ort_env() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(ort_library())
            .expect("load libonnxruntime")
            .build()
            .expect("create the ONNX Runtime environment")
    })
}

/// A session over `model` with the plugin registered.
///
/// Sessions are created one at a time: onnxruntime (seen with 1.31.1) adds a custom op domain to a
/// process-global map with an unlocked check-then-insert, so two first-time registrations racing
/// fail with "Trying to add a domain to DomainToVersion map, but the domain is already exist".
pub fn session(model: &[u8], threads: usize) -> ort::session::Session {
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let builder = ort::session::Session::builder(ort_env()).expect("session builder");
    let builder = builder
        .with_intra_threads(threads)
        .expect("intra-op threads");
    let mut builder = builder
        .with_operator_library(plugin_library())
        .expect("register the LookatAttention plugin");
    builder
        .commit_from_memory(model)
        .expect("create a session with the LookatAttention plugin")
}

pub enum Dim {
    Fixed(i64),
    Named(&'static str),
}

pub fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
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

pub fn float_initializer(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = dims.to_vec();
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

/// Geometry of a one-node LookatAttention model.
pub struct OneNode {
    pub heads: usize,
    pub head_dim: usize,
    pub subspaces: usize,
    pub centroids: usize,
    pub value_type: DataType,
    pub codebooks: Vec<f32>,
}

/// A model holding one LookatAttention node; codebooks as an initializer, mask as an input.
pub fn one_node_model(spec: &OneNode) -> Vec<u8> {
    use Dim::{Fixed, Named};
    let (h, d, m) = (
        spec.heads as i64,
        spec.head_dim as i64,
        spec.subspaces as i64,
    );
    let e = h * d;
    let mut node = NodeProto::new();
    node.op_type = "LookatAttention".into();
    node.domain = "com.lookat".into();
    node.name = "attn0".into();
    node.input = [
        "query",
        "key",
        "value",
        "past_key_codes",
        "past_value",
        "attention_mask",
        "codebooks",
    ]
    .map(String::from)
    .to_vec();
    node.output = ["output", "present_key_codes", "present_value"]
        .map(String::from)
        .to_vec();
    node.attribute.push(int_attribute("num_heads", h));

    let mut graph = GraphProto::new();
    graph.name = "lookat_one_node".into();
    graph.node.push(node);
    for name in ["query", "key", "value"] {
        graph.input.push(value_info(
            name,
            DataType::FLOAT,
            &[Named("B"), Named("S"), Fixed(e)],
        ));
    }
    graph.input.push(value_info(
        "past_key_codes",
        DataType::UINT8,
        &[Named("B"), Fixed(h), Named("P"), Fixed(m)],
    ));
    graph.input.push(value_info(
        "past_value",
        spec.value_type,
        &[Named("B"), Fixed(h), Named("P"), Fixed(d)],
    ));
    graph.input.push(value_info(
        "attention_mask",
        DataType::INT64,
        &[Named("B"), Named("T")],
    ));
    graph.initializer.push(float_initializer(
        "codebooks",
        &[h, m, spec.centroids as i64, d / m],
        &spec.codebooks,
    ));
    graph.output.push(value_info(
        "output",
        DataType::FLOAT,
        &[Named("B"), Named("S"), Fixed(e)],
    ));
    graph.output.push(value_info(
        "present_key_codes",
        DataType::UINT8,
        &[Named("B"), Fixed(h), Named("T"), Fixed(m)],
    ));
    graph.output.push(value_info(
        "present_value",
        spec.value_type,
        &[Named("B"), Fixed(h), Named("T"), Fixed(d)],
    ));

    let mut model = ModelProto::new();
    model.ir_version = 9;
    model.producer_name = "lookat-tests".into();
    for (domain, version) in [("", 17), ("com.lookat", 1)] {
        let mut opset = OperatorSetIdProto::new();
        opset.domain = domain.into();
        opset.version = version;
        model.opset_import.push(opset);
    }
    model.graph = Some(graph).into();
    model.write_to_bytes().expect("serialize the model")
}
