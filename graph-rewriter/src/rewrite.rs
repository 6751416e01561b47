//! Applies matched blocks to a model: one `LookatAttention` node per block, uint8 key-code cache
//! I/O, NaN codebook initializers (filled later by `lookat-calibrate`), dead-node removal, a
//! topological sort, and a consistency check after every block (as tract does after each patch).
//!
//! Each block is first turned into a [`LayerPlan`] (the protos to add, the tensors to take over,
//! the cache I/O to retype), without touching the graph; [`apply_plan`] then edits the graph and
//! the [`Report`] is filled from the plans.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use lookat_contract::{
    attr, input, naming, output, CacheBytes, CodebookShape, ValueType, DOMAIN, OP_NAME,
};
use lookat_onnx::build::{
    dims_text, elem_name, float_attribute, int64_tensor, int_attribute, node, retyped,
    tensor_type_mut, value_info, Dim,
};
use lookat_onnx::edit::{check_consistency, remove_dead, topological_sort};
use lookat_onnx::graph::{attr_int, is_op, GraphIndex};
use onnx_protobuf::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

use crate::block::AttentionBlock;
use crate::patterns::{find_blocks, malformed_node, PATTERNS};

/// Element type of the value cache in the rewritten model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueDtype {
    F32,
    F16,
    /// Int8 rows with a float32 scale per token and head (`lookat_contract::ValueType::Int8`).
    I8,
}

impl ValueDtype {
    /// The contract's value cache type.
    pub fn value_type(self) -> ValueType {
        match self {
            ValueDtype::F32 => ValueType::Float32,
            ValueDtype::F16 => ValueType::Float16,
            ValueDtype::I8 => ValueType::Int8,
        }
    }
    pub fn onnx(self) -> DataType {
        onnx_type(self.value_type())
    }
}

/// The ONNX element type of a value cache (or key window) of type `v`.
fn onnx_type(v: ValueType) -> DataType {
    match v {
        ValueType::Float32 => DataType::FLOAT,
        ValueType::Float16 => DataType::FLOAT16,
        ValueType::Int8 => DataType::INT8,
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub subspaces: usize,
    pub centroids: usize,
    pub value_dtype: ValueDtype,
    /// Tokens at the start of every sequence kept in full precision (attribute `sinks`).
    pub sinks: usize,
    /// Most recent tokens each query scores from full-precision keys (attribute `window`).
    pub window: usize,
    /// Give every node key/query transform inputs (NaN until lookat-calibrate chooses them).
    pub transforms: bool,
    /// Shared max-length cache buffers: the cache I/O becomes `[B, H_kv, max_sequence_length, ·]`
    /// and a `past_sequence_length` input says how many rows are valid; a host that binds one
    /// buffer as both past and present (IOBinding) decodes without copying the cache.
    pub shared_cache: bool,
}

impl Options {
    pub fn windowed(&self) -> bool {
        self.sinks + self.window > 0
    }
}

/// One graph input or output whose name or type the rewrite changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheIoChange {
    pub name: String,
    /// "input" or "output".
    pub direction: &'static str,
    pub elem: &'static str,
    pub dims: String,
}

/// What a rewrite did, for the CLI and the tests.
#[derive(Debug, Default)]
pub struct Report {
    pub blocks: Vec<AttentionBlock>,
    /// (pattern, blocks), sorted by pattern.
    pub patterns: Vec<(String, usize)>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub nodes_removed: usize,
    pub nodes_added: usize,
    pub cache_io: Vec<CacheIoChange>,
    /// Cache bytes per token of each rewritten layer.
    pub layers: Vec<CacheBytes>,
}

impl Report {
    /// Cache bytes per token over all layers before the rewrite: (keys, values), float32.
    pub fn bytes_before(&self) -> (usize, usize) {
        let keys: usize = self.layers.iter().map(CacheBytes::float_keys).sum();
        (keys, keys)
    }

    /// The same after the rewrite: (key codes, values).
    pub fn bytes_after(&self) -> (usize, usize) {
        (
            self.layers.iter().map(CacheBytes::key_codes).sum(),
            self.layers.iter().map(CacheBytes::values).sum(),
        )
    }

    /// Codebook bytes of the whole model.
    pub fn codebook_bytes(&self) -> usize {
        self.layers.iter().map(CacheBytes::codebooks).sum()
    }
}

/// The refusals a caller may want to tell apart.
#[derive(Debug)]
pub enum Refusal {
    AlreadyRewritten(usize),
    NoAttention(Vec<String>),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AlreadyRewritten(n) => write!(
                f,
                "nothing to rewrite: the model already holds {n} {DOMAIN}::{OP_NAME} node(s)"
            ),
            Refusal::NoAttention(misses) => {
                let looked: Vec<String> = PATTERNS
                    .iter()
                    .map(|p| format!("{} (anchored on {})", p.name, p.anchor()))
                    .collect();
                writeln!(
                    f,
                    "no attention block found. Looked for: {}.",
                    looked.join(", ")
                )?;
                if misses.is_empty() {
                    write!(
                        f,
                        "The graph has no Softmax, Attention or MultiHeadAttention node."
                    )
                } else {
                    writeln!(f, "Closest partial matches:")?;
                    for m in misses.iter().take(6) {
                        writeln!(f, "  - {m}")?;
                    }
                    Ok(())
                }
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// The float key cache of one layer becoming codes (and, with a window, a full-precision key
/// window beside them).
#[derive(Debug, Clone)]
struct CacheRewrite {
    past_key: String,
    past_codes: String,
    past_value: String,
    present_key: String,
    present_codes: String,
    present_value: String,
    /// (past, present) key window tensors, when the node keeps one.
    window: Option<(String, String)>,
}

/// Everything one block adds to and changes in the graph, computed before any edit.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// The LookatAttention node, then a flattening Reshape when the model wants `[B*S, E]`.
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Tensors the new nodes produce: their old producers go.
    taken: Vec<String>,
    cache: Option<CacheRewrite>,
    bytes: CacheBytes,
}

/// Plans the rewrite of block `b`, the `layer`-th LookatAttention node of the model.
pub fn plan_block(layer: usize, b: &AttentionBlock, opts: &Options) -> Result<LayerPlan> {
    let shape = CodebookShape::new(b.kv_heads, b.head_dim, opts.subspaces, opts.centroids)
        .with_context(|| {
            format!(
                "--subspaces {} does not divide the head size {} (attention at '{}')",
                opts.subspaces, b.head_dim, b.anchor
            )
        })?;
    let books = naming::codebooks_name(layer);
    let mut codebooks = TensorProto::new();
    codebooks.name = books.clone();
    codebooks.dims = shape.dims().to_vec();
    codebooks.data_type = DataType::FLOAT as i32;
    codebooks.raw_data = f32::NAN.to_le_bytes().repeat(shape.len());
    codebooks.doc_string =
        "LookatAttention codebooks, NaN until lookat-calibrate fills them".into();
    let mut initializers = vec![codebooks];

    let cache = b.cache.as_ref().map(|c| CacheRewrite {
        past_key: c.past_key.clone(),
        past_codes: naming::codes_name(&c.past_key),
        past_value: c.past_value.clone(),
        present_key: c.present_key.clone(),
        present_codes: naming::codes_name(&c.present_key),
        present_value: c.present_value.clone(),
        window: opts.windowed().then(|| {
            (
                naming::window_name(&c.past_key),
                naming::window_name(&c.present_key),
            )
        }),
    });
    let (past_codes, past_value, present_codes, present_value) = match &cache {
        Some(c) => (
            c.past_codes.clone(),
            c.past_value.clone(),
            c.present_codes.clone(),
            c.present_value.clone(),
        ),
        None => (
            String::new(),
            String::new(),
            format!("lookat.{layer}.present_key_codes"),
            format!("lookat.{layer}.present_value"),
        ),
    };
    let (past_window, present_window) = match cache.as_ref().and_then(|c| c.window.clone()) {
        Some(w) => w,
        None if opts.windowed() => (String::new(), format!("lookat.{layer}.present_key_window")),
        None => (String::new(), String::new()),
    };
    let mut inputs = vec![String::new(); input::COUNT];
    inputs[input::QUERY] = b.query.clone();
    inputs[input::KEY] = b.key.clone();
    inputs[input::VALUE] = b.value.clone();
    inputs[input::PAST_KEY_CODES] = past_codes;
    inputs[input::PAST_VALUE] = past_value;
    inputs[input::ATTENTION_MASK] = b.mask.clone().unwrap_or_default();
    inputs[input::CODEBOOKS] = books;
    inputs[input::PAST_KEY_WINDOW] = past_window;
    if opts.shared_cache {
        if cache.is_none() {
            bail!(
                "shared cache buffers need a model with cache I/O; the attention at '{}' has none",
                b.anchor
            );
        }
        inputs[input::PAST_SEQUENCE_LENGTH] = naming::PAST_SEQUENCE_LENGTH.into();
    }
    if opts.transforms {
        let (key_t, query_t) = naming::transform_names(layer);
        for name in [&key_t, &query_t] {
            let mut t = TensorProto::new();
            t.name = name.clone();
            t.dims = vec![b.kv_heads as i64, b.head_dim as i64, b.head_dim as i64];
            t.data_type = DataType::FLOAT as i32;
            t.raw_data = f32::NAN
                .to_le_bytes()
                .repeat(b.kv_heads * b.head_dim * b.head_dim);
            t.doc_string = "LookatAttention key/query transform, NaN until lookat-calibrate".into();
            initializers.push(t);
        }
        inputs[input::KEY_TRANSFORM] = key_t;
        inputs[input::QUERY_TRANSFORM] = query_t;
    }
    // The op writes [B, S, E]; a model that flattens to [B*S, E] gets that Reshape back.
    let op_output = if b.output_rank == 3 {
        b.output.clone()
    } else {
        format!("lookat.{layer}.output")
    };
    let mut outputs = vec![String::new(); output::PRESENT_KEY_WINDOW + 1];
    outputs[output::OUTPUT] = op_output.clone();
    outputs[output::PRESENT_KEY_CODES] = present_codes.clone();
    outputs[output::PRESENT_VALUE] = present_value.clone();
    outputs[output::PRESENT_KEY_WINDOW] = present_window.clone();
    while outputs.last().is_some_and(String::is_empty) {
        outputs.pop();
    }
    let mut attributes = vec![int_attribute(attr::NUM_HEADS, b.heads as i64)];
    if b.kv_heads != b.heads {
        attributes.push(int_attribute(attr::NUM_KV_HEADS, b.kv_heads as i64));
    }
    if let Some(s) = b.scale {
        attributes.push(float_attribute(attr::SCALE, s));
    }
    if opts.sinks > 0 {
        attributes.push(int_attribute(attr::SINKS, opts.sinks as i64));
    }
    if opts.window > 0 {
        attributes.push(int_attribute(attr::WINDOW, opts.window as i64));
    }
    let mut lookat = node(
        &format!("lookat_attention_{layer}"),
        DOMAIN,
        OP_NAME,
        &[],
        &[],
        attributes,
    );
    lookat.input = inputs;
    while lookat.input.last().is_some_and(String::is_empty) {
        lookat.input.pop();
    }
    lookat.output = outputs;
    let mut nodes = vec![lookat];
    if b.output_rank == 2 {
        let shape_name = format!("lookat.{layer}.flat_shape");
        initializers.push(int64_tensor(
            &shape_name,
            &[2],
            &[-1, (b.heads * b.head_dim) as i64],
        ));
        nodes.push(node(
            &format!("lookat_flatten_{layer}"),
            "",
            "Reshape",
            &[&op_output, &shape_name],
            &[&b.output],
            vec![],
        ));
    }
    Ok(LayerPlan {
        nodes,
        initializers,
        taken: [
            b.output.clone(),
            present_codes,
            present_value,
            present_window,
        ]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect(),
        cache,
        bytes: CacheBytes {
            kv_heads: b.kv_heads,
            head_dim: b.head_dim,
            subspaces: opts.subspaces,
            centroids: opts.centroids,
            value_type: opts.value_dtype.value_type(),
            window_tokens: opts.sinks + opts.window,
        },
    })
}

/// Edits the graph as `plan` says: the old producers of the taken tensors go, the new nodes and
/// initializers come in, the key cache I/O becomes codes and the value cache takes the chosen
/// type. Returns the I/O changes.
fn apply_plan(
    graph: &mut GraphProto,
    plan: &LayerPlan,
    value_dtype: ValueDtype,
) -> Result<Vec<CacheIoChange>> {
    // Which old tensors the new node replaces: the block output and, with a cache, the float
    // present key/value outputs (the codes output has a new name).
    let mut replaced: HashSet<&str> = plan.taken.iter().map(String::as_str).collect();
    if let Some(c) = &plan.cache {
        replaced.extend([c.present_key.as_str(), c.present_value.as_str()]);
    }
    graph
        .node
        .retain(|n| !n.output.iter().any(|o| replaced.contains(o.as_str())));
    graph.initializer.extend(plan.initializers.iter().cloned());
    graph.node.extend(plan.nodes.iter().cloned());
    // Stale shape/type annotations of tensors whose producer changed.
    let taken: HashSet<&str> = plan.taken.iter().map(String::as_str).collect();
    graph
        .value_info
        .retain(|vi| !taken.contains(vi.name.as_str()));

    let Some(c) = &plan.cache else {
        return Ok(vec![]);
    };
    let (m, values) = (plan.bytes.subspaces as i64, value_dtype.onnx());
    let value_type = value_dtype.value_type();
    // Int8 rows carry their scale after the D values: the last dimension grows by 4.
    let value_last =
        (value_type.row_extra() > 0).then(|| value_type.row_len(plan.bytes.head_dim) as i64);
    let window_elem = onnx_type(value_type.window());
    let mut changes = vec![];
    let change = |vi: &onnx_protobuf::ValueInfoProto, direction, elem| CacheIoChange {
        name: vi.name.clone(),
        direction,
        elem,
        dims: dims_text(vi),
    };
    let in_pos = graph
        .input
        .iter()
        .position(|vi| vi.name == c.past_key)
        .with_context(|| format!("graph input '{}' disappeared", c.past_key))?;
    let codes_vi = retyped(
        &graph.input[in_pos],
        &c.past_codes,
        DataType::UINT8,
        Some(m),
    );
    changes.push(change(&codes_vi, "input", elem_name(DataType::UINT8)));
    // The float key input stays until its shape reads move to the codes (redirect_shape_reads).
    graph.input.insert(in_pos, codes_vi);
    if let Some(vi) = graph.input.iter_mut().find(|vi| vi.name == c.past_value) {
        *vi = retyped(vi, &c.past_value, values, value_last);
        changes.push(change(vi, "input", elem_name(values)));
    }
    let out_pos = graph
        .output
        .iter()
        .position(|vi| vi.name == c.present_key)
        .with_context(|| format!("graph output '{}' disappeared", c.present_key))?;
    graph.output[out_pos] = retyped(
        &graph.output[out_pos],
        &c.present_codes,
        DataType::UINT8,
        Some(m),
    );
    changes.push(change(
        &graph.output[out_pos],
        "output",
        elem_name(DataType::UINT8),
    ));
    if let Some(vi) = graph
        .output
        .iter_mut()
        .find(|vi| vi.name == c.present_value)
    {
        *vi = retyped(vi, &c.present_value, values, value_last);
        changes.push(change(vi, "output", elem_name(values)));
    }
    if let Some((past_window, present_window)) = &c.window {
        // The key window: [batch, kv heads, rows, D] in the value type (float16 beside int8
        // rows), next to the codes.
        let (h, d) = (plan.bytes.kv_heads, plan.bytes.head_dim);
        let window_vi = |name: &str, rows: &str| {
            value_info(
                name,
                window_elem,
                &[Dim::from("batch"), h.into(), rows.into(), d.into()],
            )
        };
        let pos = graph
            .input
            .iter()
            .position(|vi| vi.name == c.past_value)
            .map_or(graph.input.len(), |p| p + 1);
        let vi = window_vi(past_window, "past_window");
        changes.push(change(&vi, "input", elem_name(window_elem)));
        graph.input.insert(pos, vi);
        let pos = graph
            .output
            .iter()
            .position(|vi| vi.name == c.present_value)
            .map_or(graph.output.len(), |p| p + 1);
        let vi = window_vi(present_window, "present_window");
        changes.push(change(&vi, "output", elem_name(window_elem)));
        graph.output.insert(pos, vi);
    }
    Ok(changes)
}

/// Checks what can be checked before any edit: not rewritten yet, well formed, every attention
/// block matched, options that fit every block.
fn matched_blocks(graph: &GraphProto, opts: &Options) -> Result<Vec<AttentionBlock>> {
    let existing = graph
        .node
        .iter()
        .filter(|n| n.domain == DOMAIN && n.op_type == OP_NAME)
        .count();
    if existing > 0 {
        return Err(Refusal::AlreadyRewritten(existing).into());
    }
    if let Some(why) = malformed_node(graph) {
        bail!("malformed model: {why}");
    }
    let (blocks, misses) = find_blocks(graph);
    if blocks.is_empty() {
        return Err(Refusal::NoAttention(misses).into());
    }
    if !misses.is_empty() {
        bail!(
            "{} attention block(s) matched but {} candidate(s) did not; refusing a partial rewrite \
             (the unmatched layers would keep float keys):\n  - {}",
            blocks.len(),
            misses.len(),
            misses.join("\n  - ")
        );
    }
    if !(1..=lookat_contract::MAX_CENTROIDS).contains(&opts.centroids) {
        bail!(
            "--centroids must be in 1..={}, got {}",
            lookat_contract::MAX_CENTROIDS,
            opts.centroids
        );
    }
    let with_cache = blocks.iter().filter(|b| b.cache.is_some()).count();
    if with_cache != 0 && with_cache != blocks.len() {
        bail!(
            "{with_cache} of {} attention blocks have cache I/O: mixed models are not supported",
            blocks.len()
        );
    }
    Ok(blocks)
}

pub fn rewrite(model: &mut ModelProto, opts: &Options) -> Result<Report> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let blocks = matched_blocks(graph, opts)?;
    let plans = blocks
        .iter()
        .enumerate()
        .map(|(layer, b)| plan_block(layer, b, opts))
        .collect::<Result<Vec<_>>>()?;

    let graph = model.graph.mut_or_insert_default();
    let nodes_before = graph.node.len();
    let mut cache_io = vec![];
    if opts.shared_cache {
        // The nodes read it from the first patch on (shared_cache_io does the rest).
        let psl = naming::PAST_SEQUENCE_LENGTH;
        if graph.input.iter().any(|vi| vi.name == psl) {
            bail!("the model already has an input named '{psl}'");
        }
        graph.input.push(value_info(psl, DataType::INT64, &[]));
    }
    for (layer, (b, plan)) in blocks.iter().zip(&plans).enumerate() {
        cache_io.extend(apply_plan(graph, plan, opts.value_dtype)?);
        remove_dead(graph);
        check_consistency(graph)
            .with_context(|| format!("after rewriting attention block {layer} ('{}')", b.anchor))?;
    }
    if opts.shared_cache {
        shared_cache_io(graph, &plans)?;
        for change in cache_io.iter_mut() {
            let io = if change.direction == "input" {
                &graph.input
            } else {
                &graph.output
            };
            if let Some(vi) = io.iter().find(|vi| vi.name == change.name) {
                change.dims = dims_text(vi);
            }
        }
        cache_io.push(CacheIoChange {
            name: naming::PAST_SEQUENCE_LENGTH.into(),
            direction: "input",
            elem: elem_name(DataType::INT64),
            dims: "[] (valid rows of the shared buffers)".into(),
        });
    }
    let old_past_keys: Vec<(String, String)> = plans
        .iter()
        .filter_map(|p| p.cache.as_ref())
        .map(|c| (c.past_key.clone(), c.past_codes.clone()))
        .collect();
    redirect_shape_reads(graph, &old_past_keys)?;
    remove_dead(graph);
    topological_sort(graph)?;
    check_consistency(graph).context("after removing dead nodes")?;
    let nodes_after = graph.node.len();

    if !model.opset_import.iter().any(|o| o.domain == DOMAIN) {
        let mut opset = OperatorSetIdProto::new();
        opset.domain = DOMAIN.into();
        opset.version = lookat_contract::OPSET_VERSION;
        model.opset_import.push(opset);
    }
    let nodes_added: usize = plans.iter().map(|p| p.nodes.len()).sum();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for b in &blocks {
        *counts.entry(b.pattern).or_default() += 1;
    }
    let mut patterns: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    patterns.sort();
    Ok(Report {
        patterns,
        nodes_before,
        nodes_after,
        nodes_removed: nodes_before + nodes_added - nodes_after,
        nodes_added,
        cache_io,
        layers: plans.iter().map(|p| p.bytes).collect(),
        blocks,
    })
}

/// Shared cache buffers: the graph takes `past_sequence_length`, the cache I/O (codes and values)
/// has `max_sequence_length` rows, and whatever read the past length from a past tensor's shape
/// now reads it from `past_sequence_length`: each `Shape` of an old past key or of a past value
/// becomes a slice of `[batch, heads, past_sequence_length, D]`, built from the new tensor's
/// shape. The key window keeps its own (small, copied) I/O.
fn shared_cache_io(graph: &mut GraphProto, plans: &[LayerPlan]) -> Result<()> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
    let psl = naming::PAST_SEQUENCE_LENGTH;
    let psl_1d = "lookat.shared.past_sequence_length_1d";
    graph
        .initializer
        .push(int64_tensor("lookat.shared.one_dim", &[1], &[1]));
    graph.node.push(node(
        "lookat_shared_psl_1d",
        "",
        "Reshape",
        &[psl, "lookat.shared.one_dim"],
        &[psl_1d],
        vec![],
    ));
    let set_rows = |vi: &mut onnx_protobuf::ValueInfoProto| {
        if let Some(shape) = tensor_type_mut(vi).and_then(|t| t.shape.as_mut()) {
            if let Some(d) = shape.dim.get_mut(2) {
                d.value = Some(Value::DimParam(naming::MAX_SEQUENCE_LENGTH.into()));
            }
        }
    };
    let mut reads = vec![]; // (old tensor, tensor whose shape gives batch and heads, D)
    for plan in plans {
        let Some(c) = &plan.cache else { continue };
        for vi in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            if [
                &c.past_codes,
                &c.past_value,
                &c.present_codes,
                &c.present_value,
            ]
            .contains(&&vi.name)
            {
                set_rows(vi);
            }
        }
        let d = plan.bytes.head_dim as i64;
        reads.push((c.past_key.clone(), c.past_codes.clone(), d));
        reads.push((c.past_value.clone(), c.past_value.clone(), d));
    }
    for (i, (old, new, d)) in reads.iter().enumerate() {
        // What reads a past value besides the op and shape arithmetic would see the whole buffer.
        if old == new {
            if let Some(n) = graph.node.iter().find(|n| {
                n.input.contains(old)
                    && !is_op(n, "Shape")
                    && !(n.domain == DOMAIN && n.op_type == OP_NAME)
            }) {
                bail!(
                    "node {} '{}' reads the past value '{old}' in a way shared cache buffers \
                     cannot serve (it would see max_sequence_length rows)",
                    n.op_type,
                    n.name
                );
            }
        }
        let shape_nodes: Vec<usize> = (0..graph.node.len())
            .filter(|&n| is_op(&graph.node[n], "Shape") && graph.node[n].input[0] == *old)
            .collect();
        for (j, &n) in shape_nodes.iter().enumerate() {
            let shape_node = graph.node[n].clone();
            let prefix = format!("lookat.shared.{i}.{j}");
            let (start, end) = (
                attr_int(&shape_node, "start").unwrap_or(0),
                attr_int(&shape_node, "end").unwrap_or(i64::MAX),
            );
            graph.initializer.extend([
                int64_tensor(&format!("{prefix}.head_dim"), &[1], &[*d]),
                int64_tensor(&format!("{prefix}.zero"), &[1], &[0]),
                int64_tensor(&format!("{prefix}.two"), &[1], &[2]),
                int64_tensor(&format!("{prefix}.start"), &[1], &[start]),
                int64_tensor(&format!("{prefix}.end"), &[1], &[end]),
            ]);
            let t = |s: &str| format!("{prefix}.{s}");
            let new_nodes = [
                node(&t("shape"), "", "Shape", &[new], &[&t("shape")], vec![]),
                node(
                    &t("batch_heads"),
                    "",
                    "Slice",
                    &[&t("shape"), &t("zero"), &t("two")],
                    &[&t("batch_heads")],
                    vec![],
                ),
                node(
                    &t("virtual"),
                    "",
                    "Concat",
                    &[&t("batch_heads"), psl_1d, &t("head_dim")],
                    &[&t("virtual")],
                    vec![int_attribute("axis", 0)],
                ),
                node(
                    &shape_node.name,
                    "",
                    "Slice",
                    &[&t("virtual"), &t("start"), &t("end")],
                    &[&shape_node.output[0]],
                    vec![],
                ),
            ];
            graph.node[n] = new_nodes[3].clone();
            graph.node.extend(new_nodes[..3].iter().cloned());
        }
    }
    Ok(())
}

/// After the rewrite, an old float key input may still be read by shape arithmetic (its batch,
/// head or past length). The code tensor has the same first three dimensions, so such reads move
/// to it; any other use is an error.
fn redirect_shape_reads(graph: &mut GraphProto, old_past_keys: &[(String, String)]) -> Result<()> {
    for (old, codes) in old_past_keys {
        let snapshot = graph.clone();
        let g = GraphIndex::new(&snapshot);
        for &i in g.consumers(old) {
            let n = g.node(i);
            let reads_first_three = is_op(n, "Shape")
                && (matches!(attr_int(n, "end"), Some(1..=3) | Some(-3..=-1))
                    || g.consumers(&n.output[0]).iter().all(|&c| {
                        let cn = g.node(c);
                        is_op(cn, "Gather")
                            && cn.input[0] == n.output[0]
                            && g.scalar(&cn.input[1])
                                .is_some_and(|ix| (-4.0..=2.0).contains(&ix) && ix != -1.0)
                    }));
            if !reads_first_three {
                bail!(
                    "node {} '{}' still reads the float key input '{old}' in a way the codes cannot replace",
                    n.op_type,
                    n.name
                );
            }
        }
        for n in graph.node.iter_mut() {
            for t in n.input.iter_mut() {
                if t == old {
                    *t = codes.clone();
                }
            }
        }
        graph.input.retain(|vi| &vi.name != old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookat_onnx::build::value_info;

    #[test]
    fn no_attention_is_a_refusal_listing_the_patterns() {
        let mut graph = GraphProto::new();
        graph.input.push(value_info("x", DataType::FLOAT, &[]));
        graph.output.push(value_info("y", DataType::FLOAT, &[]));
        graph
            .node
            .push(node("relu", "", "Relu", &["x"], &["y"], vec![]));
        let mut model = ModelProto::new();
        model.graph = Some(graph).into();
        let err = rewrite(
            &mut model,
            &Options {
                subspaces: 4,
                centroids: 256,
                value_dtype: ValueDtype::F32,
                sinks: 0,
                window: 0,
                transforms: false,
                shared_cache: false,
            },
        )
        .unwrap_err();
        let refusal = err.downcast_ref::<Refusal>().expect("a refusal");
        let text = refusal.to_string();
        assert!(
            text.contains("no attention block found")
                && text.contains("scaled-scores")
                && text.contains("com.microsoft::MultiHeadAttention"),
            "{text}"
        );
    }
}
