//! Shared helpers of the Rust end-to-end tests: the ONNX Runtime library and a plugin built from
//! the current sources (a missing one fails the test with the set-up command to run; a stale one
//! is rebuilt, never run), and one-node models written from the op's contract.

use std::path::PathBuf;
use std::sync::OnceLock;

use lookat_contract::{attr, input, output, CodebookShape, DOMAIN, OPSET_VERSION, OP_NAME};
use lookat_onnx::build::{float_tensor, int_attribute, node, value_info, Dim};
use onnx_protobuf::{tensor_proto::DataType, GraphProto, Message, ModelProto, OperatorSetIdProto};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The ONNX Runtime shared library: `ORT_DYLIB_PATH`, else the one in the project venv's
/// onnxruntime package (made by scripts/setup.sh).
pub fn ort_library() -> PathBuf {
    let found = match std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        Some(p) => lookat_onnx::locate::ort_library(Some(&PathBuf::from(p))),
        None => {
            lookat_onnx::locate::library_in_python_package(&repo_root().join(".venv/bin/python"))
        }
    };
    found.unwrap_or_else(|e| panic!("ONNX Runtime library not found ({e:#}): run scripts/setup.sh"))
}

/// The release build of the workspace, run once per test process so that the plugin and the tools
/// the tests use are built from the current sources (`cargo test` alone does not build the
/// cdylib). With `LOOKAT_OP_LIB` set (the ARM64 job's cross-built plugin) nothing is built.
pub fn build_release() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("LOOKAT_OP_LIB").is_some() {
            return;
        }
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--workspace", "--locked", "--quiet"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build --release");
        assert!(status.success(), "cargo build --release --workspace failed");
    });
}

/// The LookatAttention plugin, built from the current sources (`LOOKAT_OP_LIB` overrides).
pub fn plugin_library() -> PathBuf {
    build_release();
    let path = std::env::var_os("LOOKAT_OP_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/liblookat_op.so"));
    assert!(
        path.is_file(),
        "plugin {} is missing: run scripts/setup.sh",
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

/// Geometry of a one-node LookatAttention model.
pub struct OneNode {
    pub heads: usize,
    pub head_dim: usize,
    pub subspaces: usize,
    pub centroids: usize,
    pub value_type: DataType,
    pub codebooks: Vec<f32>,
}

/// A model holding one LookatAttention node whose inputs and outputs carry the contract's names;
/// codebooks as an initializer, mask as an input.
pub fn one_node_model(spec: &OneNode) -> Vec<u8> {
    let (h, d, m) = (spec.heads, spec.head_dim, spec.subspaces);
    let e = h * d;
    let shape = CodebookShape::new(h, d, m, spec.centroids).expect("subspaces divide head_dim");
    let named = |s: &str| Dim::from(s);
    let input_names: Vec<&str> = input::PORTS[..=input::CODEBOOKS]
        .iter()
        .map(|p| p.name)
        .collect();
    let output_names: Vec<&str> = output::PORTS[..=output::PRESENT_VALUE]
        .iter()
        .map(|p| p.name)
        .collect();
    let mut graph = GraphProto::new();
    graph.name = "lookat_one_node".into();
    graph.node.push(node(
        "attn0",
        DOMAIN,
        OP_NAME,
        &input_names,
        &output_names,
        vec![int_attribute(attr::NUM_HEADS, h as i64)],
    ));
    let token_rows = [named("B"), named("S"), e.into()];
    for i in [input::QUERY, input::KEY, input::VALUE] {
        graph
            .input
            .push(value_info(input::name(i), DataType::FLOAT, &token_rows));
    }
    graph.input.push(value_info(
        input::name(input::PAST_KEY_CODES),
        DataType::UINT8,
        &[named("B"), h.into(), named("P"), m.into()],
    ));
    graph.input.push(value_info(
        input::name(input::PAST_VALUE),
        spec.value_type,
        &[named("B"), h.into(), named("P"), d.into()],
    ));
    graph.input.push(value_info(
        input::name(input::ATTENTION_MASK),
        DataType::INT64,
        &[named("B"), named("T")],
    ));
    graph.initializer.push(float_tensor(
        input::name(input::CODEBOOKS),
        &shape.dims(),
        &spec.codebooks,
    ));
    graph.output.push(value_info(
        output::name(output::OUTPUT),
        DataType::FLOAT,
        &token_rows,
    ));
    graph.output.push(value_info(
        output::name(output::PRESENT_KEY_CODES),
        DataType::UINT8,
        &[named("B"), h.into(), named("T"), m.into()],
    ));
    graph.output.push(value_info(
        output::name(output::PRESENT_VALUE),
        spec.value_type,
        &[named("B"), h.into(), named("T"), d.into()],
    ));

    let mut model = ModelProto::new();
    model.ir_version = 9;
    model.producer_name = "lookat-tests".into();
    for (domain, version) in [("", 17), (DOMAIN, OPSET_VERSION)] {
        let mut opset = OperatorSetIdProto::new();
        opset.domain = domain.into();
        opset.version = version;
        model.opset_import.push(opset);
    }
    model.graph = Some(graph).into();
    model.write_to_bytes().expect("serialize the model")
}
