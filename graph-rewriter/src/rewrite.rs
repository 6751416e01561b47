//! Applies matched blocks to a model: one `LookatAttention` node per block, uint8 key-code cache
//! I/O, NaN codebook initializers (filled later by `lookat-calibrate`), dead-node removal, a
//! topological sort, and a consistency check after every block (as tract does after each patch).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};

use crate::block::AttentionBlock;
use crate::graph::{attr_int, is_op, GraphIndex};
use crate::patterns::PATTERNS;

pub const DOMAIN: &str = "com.lookat";
pub const OP: &str = "LookatAttention";

/// Element type of the value cache in the rewritten model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueDtype {
    F32,
    F16,
}

impl ValueDtype {
    fn onnx(self) -> DataType {
        match self {
            ValueDtype::F32 => DataType::FLOAT,
            ValueDtype::F16 => DataType::FLOAT16,
        }
    }
    fn bytes(self) -> usize {
        match self {
            ValueDtype::F32 => 4,
            ValueDtype::F16 => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub subspaces: usize,
    pub centroids: usize,
    pub value_dtype: ValueDtype,
}

/// What a rewrite did, for the CLI and the tests.
#[derive(Debug, Default)]
pub struct Report {
    pub blocks: Vec<AttentionBlock>,
    pub patterns: Vec<(String, usize)>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub nodes_removed: usize,
    pub nodes_added: usize,
    /// (name, "input"/"output", dtype, dims)
    pub cache_io: Vec<(String, &'static str, &'static str, String)>,
    /// Cache bytes per token over all layers: (keys, values) before and after.
    pub bytes_before: (usize, usize),
    pub bytes_after: (usize, usize),
    pub codebook_bytes: usize,
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
                "nothing to rewrite: the model already holds {n} {DOMAIN}::{OP} node(s)"
            ),
            Refusal::NoAttention(misses) => {
                writeln!(
                    f,
                    "no attention block found. Looked for: {}.",
                    PATTERNS
                        .map(|p| format!(
                            "{} (anchored on {}{})",
                            p.0,
                            if p.1.is_empty() {
                                String::new()
                            } else {
                                format!("{}::", p.1)
                            },
                            p.2
                        ))
                        .join(", ")
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

/// Runs every matcher on every anchor node. Returns the blocks and, for `--explain`, one line per
/// failed (pattern, anchor) pair.
pub fn find_blocks(graph: &GraphProto) -> (Vec<AttentionBlock>, Vec<String>) {
    if let Some(why) = crate::graph::malformed_node(graph) {
        return (vec![], vec![format!("malformed model: {why}")]);
    }
    let g = GraphIndex::new(graph);
    let mut blocks = vec![];
    let mut misses = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        let mut attempts = vec![];
        for (name, domain, anchor, matcher) in PATTERNS {
            if !crate::patterns::is_anchor(node, domain, anchor) {
                continue;
            }
            match matcher(&g, i) {
                Ok(b) => {
                    blocks.push(b);
                    attempts.clear();
                    break;
                }
                Err(why) => attempts.push(format!("{name} at {anchor} '{}': {why}", node.name)),
            }
        }
        misses.extend(attempts);
    }
    (blocks, misses)
}

pub fn rewrite(model: &mut ModelProto, opts: &Options) -> Result<Report> {
    let graph = model.graph.as_ref().context("the model has no graph")?;
    let existing = graph
        .node
        .iter()
        .filter(|n| n.domain == DOMAIN && n.op_type == OP)
        .count();
    if existing > 0 {
        return Err(Refusal::AlreadyRewritten(existing).into());
    }
    if let Some(why) = crate::graph::malformed_node(graph) {
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
    if !(1..=256).contains(&opts.centroids) {
        bail!("--centroids must be in 1..=256, got {}", opts.centroids);
    }
    let with_cache = blocks.iter().filter(|b| b.cache.is_some()).count();
    if with_cache != 0 && with_cache != blocks.len() {
        bail!(
            "{with_cache} of {} attention blocks have cache I/O: mixed models are not supported",
            blocks.len()
        );
    }
    for b in &blocks {
        if opts.subspaces == 0 || b.head_dim % opts.subspaces != 0 {
            bail!(
                "--subspaces {} does not divide the head size {} (attention at '{}')",
                opts.subspaces,
                b.head_dim,
                b.anchor
            );
        }
    }

    let graph = model.graph.mut_or_insert_default();
    let nodes_before = graph.node.len();
    let mut report = Report {
        nodes_before,
        ..Report::default()
    };
    let mut old_past_keys = vec![];
    for (layer, b) in blocks.iter().enumerate() {
        apply_block(graph, layer, b, opts, &mut report, &mut old_past_keys)?;
        remove_dead(graph);
        check_consistency(graph)
            .with_context(|| format!("after rewriting attention block {layer} ('{}')", b.anchor))?;
    }
    remove_dead(graph);
    redirect_shape_reads(graph, &old_past_keys)?;
    remove_dead(graph);
    topological_sort(graph)?;
    check_consistency(graph).context("after removing dead nodes")?;

    if !model.opset_import.iter().any(|o| o.domain == DOMAIN) {
        let mut opset = OperatorSetIdProto::new();
        opset.domain = DOMAIN.into();
        opset.version = 1;
        model.opset_import.push(opset);
    }
    let graph = model.graph.as_ref().context("graph")?;
    report.nodes_after = graph.node.len();
    report.nodes_added = blocks.len() + blocks.iter().filter(|b| b.output_rank == 2).count();
    report.nodes_removed = nodes_before + report.nodes_added - report.nodes_after;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for b in &blocks {
        *counts.entry(b.pattern).or_default() += 1;
    }
    report.patterns = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    report.patterns.sort();
    report.blocks = blocks;
    Ok(report)
}

fn elem_name(dt: DataType) -> &'static str {
    match dt {
        DataType::FLOAT => "float32",
        DataType::FLOAT16 => "float16",
        DataType::UINT8 => "uint8",
        _ => "other",
    }
}

fn tensor_type(vi: &ValueInfoProto) -> Option<&type_proto::Tensor> {
    match vi.type_.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

fn tensor_type_mut(vi: &mut ValueInfoProto) -> Option<&mut type_proto::Tensor> {
    match vi.type_.as_mut()?.value.as_mut()? {
        type_proto::Value::TensorType(t) => Some(t),
        _ => None,
    }
}

fn dims_text(vi: &ValueInfoProto) -> String {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
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

/// A copy of `vi` renamed to `name`, with element type `elem` and last dimension `last`.
fn retyped(vi: &ValueInfoProto, name: &str, elem: DataType, last: Option<i64>) -> ValueInfoProto {
    use onnx_protobuf::tensor_shape_proto::dimension::Value;
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

fn nan_codebooks(name: &str, b: &AttentionBlock, opts: &Options) -> TensorProto {
    let (h, m, k, sub) = (
        b.heads,
        opts.subspaces,
        opts.centroids,
        b.head_dim / opts.subspaces,
    );
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.dims = vec![h as i64, m as i64, k as i64, sub as i64];
    t.data_type = DataType::FLOAT as i32;
    t.raw_data = f32::NAN.to_le_bytes().repeat(h * m * k * sub);
    t.doc_string = "LookatAttention codebooks, NaN until lookat-calibrate fills them".into();
    t
}

fn attribute_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attribute_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

/// Name of the code tensor that replaces a float key cache tensor: `past_key_values.0.key` →
/// `past_key_values.0.key_codes`, `present.0.key` → `present.0.key_codes`.
pub fn codes_name(key_name: &str) -> String {
    format!("{key_name}_codes")
}

pub fn codebooks_name(layer: usize) -> String {
    format!("lookat.codebooks.{layer}")
}

fn apply_block(
    graph: &mut GraphProto,
    layer: usize,
    b: &AttentionBlock,
    opts: &Options,
    report: &mut Report,
    old_past_keys: &mut Vec<(String, String)>,
) -> Result<()> {
    let cb_name = codebooks_name(layer);
    graph.initializer.push(nan_codebooks(&cb_name, b, opts));
    report.codebook_bytes += b.heads * opts.centroids * b.head_dim * 4;

    // Nodes whose outputs the new node takes over.
    let mut taken: Vec<&str> = vec![&b.output];
    if let Some(c) = &b.cache {
        taken.extend([c.present_key.as_str(), c.present_value.as_str()]);
    }
    graph
        .node
        .retain(|n| !n.output.iter().any(|o| taken.contains(&o.as_str())));

    let (codes_in, past_value_in, codes_out, present_value_out) = match &b.cache {
        Some(c) => (
            codes_name(&c.past_key),
            c.past_value.clone(),
            codes_name(&c.present_key),
            c.present_value.clone(),
        ),
        None => (
            String::new(),
            String::new(),
            format!("lookat.{layer}.present_key_codes"),
            format!("lookat.{layer}.present_value"),
        ),
    };
    let mut node = NodeProto::new();
    node.name = format!("lookat_attention_{layer}");
    node.op_type = OP.into();
    node.domain = DOMAIN.into();
    node.input = vec![
        b.query.clone(),
        b.key.clone(),
        b.value.clone(),
        codes_in.clone(),
        past_value_in.clone(),
        b.mask.clone().unwrap_or_default(),
        cb_name,
    ];
    while node.input.last().is_some_and(String::is_empty) {
        node.input.pop();
    }
    // The op writes [B, S, E]; a model that flattens to [B*S, E] gets that Reshape back.
    let op_output = if b.output_rank == 3 {
        b.output.clone()
    } else {
        format!("lookat.{layer}.output")
    };
    node.output = vec![
        op_output.clone(),
        codes_out.clone(),
        present_value_out.clone(),
    ];
    node.attribute
        .push(attribute_int("num_heads", b.heads as i64));
    if let Some(s) = b.scale {
        node.attribute.push(attribute_float("scale", s));
    }
    graph.node.push(node);
    if b.output_rank == 2 {
        let shape_name = format!("lookat.{layer}.flat_shape");
        let mut shape = TensorProto::new();
        shape.name = shape_name.clone();
        shape.dims = vec![2];
        shape.data_type = DataType::INT64 as i32;
        shape.int64_data = vec![-1, (b.heads * b.head_dim) as i64];
        graph.initializer.push(shape);
        let mut flat = NodeProto::new();
        flat.name = format!("lookat_flatten_{layer}");
        flat.op_type = "Reshape".into();
        flat.input = vec![op_output, shape_name];
        flat.output = vec![b.output.clone()];
        graph.node.push(flat);
    }
    // Stale shape/type annotations of tensors whose producer changed.
    let produced: HashSet<&str> = [
        b.output.as_str(),
        codes_out.as_str(),
        present_value_out.as_str(),
    ]
    .into();
    graph
        .value_info
        .retain(|vi| !produced.contains(vi.name.as_str()));

    let (h, d, m) = (b.heads, b.head_dim, opts.subspaces);
    report.bytes_before.0 += 4 * h * d;
    report.bytes_before.1 += 4 * h * d;
    report.bytes_after.0 += m * h;
    report.bytes_after.1 += opts.value_dtype.bytes() * h * d;

    let Some(c) = &b.cache else { return Ok(()) };
    let in_pos = graph
        .input
        .iter()
        .position(|vi| vi.name == c.past_key)
        .with_context(|| format!("graph input '{}' disappeared", c.past_key))?;
    let codes_vi = retyped(
        &graph.input[in_pos],
        &codes_in,
        DataType::UINT8,
        Some(m as i64),
    );
    report
        .cache_io
        .push((codes_in.clone(), "input", "uint8", dims_text(&codes_vi)));
    graph.input.insert(in_pos, codes_vi);
    old_past_keys.push((c.past_key.clone(), codes_in));
    if let Some(vi) = graph.input.iter_mut().find(|vi| vi.name == c.past_value) {
        if let Some(t) = tensor_type_mut(vi) {
            t.elem_type = opts.value_dtype.onnx() as i32;
        }
        report.cache_io.push((
            vi.name.clone(),
            "input",
            elem_name(opts.value_dtype.onnx()),
            dims_text(vi),
        ));
    }
    let out_pos = graph
        .output
        .iter()
        .position(|vi| vi.name == c.present_key)
        .with_context(|| format!("graph output '{}' disappeared", c.present_key))?;
    graph.output[out_pos] = retyped(
        &graph.output[out_pos],
        &codes_out,
        DataType::UINT8,
        Some(m as i64),
    );
    report.cache_io.push((
        codes_out,
        "output",
        "uint8",
        dims_text(&graph.output[out_pos]),
    ));
    if let Some(vi) = graph
        .output
        .iter_mut()
        .find(|vi| vi.name == c.present_value)
    {
        if let Some(t) = tensor_type_mut(vi) {
            t.elem_type = opts.value_dtype.onnx() as i32;
        }
        report.cache_io.push((
            vi.name.clone(),
            "output",
            elem_name(opts.value_dtype.onnx()),
            dims_text(vi),
        ));
    }
    Ok(())
}

/// Keeps only nodes that some graph output depends on; drops unused initializers and value_info.
pub fn remove_dead(graph: &mut GraphProto) {
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            n.output
                .iter()
                .filter(|o| !o.is_empty())
                .map(move |o| (o.clone(), i))
        })
        .collect();
    let mut live = vec![false; graph.node.len()];
    let mut stack: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    while let Some(t) = stack.pop() {
        if let Some(&i) = producer.get(&t) {
            if !live[i] {
                live[i] = true;
                stack.extend(
                    graph.node[i]
                        .input
                        .iter()
                        .filter(|s| !s.is_empty())
                        .cloned(),
                );
            }
        }
    }
    let mut keep = live.into_iter();
    graph.node.retain(|_| keep.next().unwrap_or(false));
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let used: HashSet<String> = used.into_iter().map(str::to_string).collect();
    graph.initializer.retain(|t| used.contains(&t.name));
    let existing: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect();
    graph.value_info.retain(|vi| existing.contains(&vi.name));
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

fn topological_sort(graph: &mut GraphProto) -> Result<()> {
    let n = graph.node.len();
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, nd)| {
            nd.output
                .iter()
                .filter(|o| !o.is_empty())
                .map(move |o| (o.as_str(), i))
        })
        .collect();
    let mut indegree = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![vec![]; n];
    for (i, nd) in graph.node.iter().enumerate() {
        let deps: HashSet<usize> = nd
            .input
            .iter()
            .filter_map(|t| producer.get(t.as_str()).copied())
            .collect();
        indegree[i] = deps.len();
        for d in deps {
            users[d].push(i);
        }
    }
    // Stable: among ready nodes, the earliest in the original order goes first.
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != n {
        bail!("the rewritten graph has a cycle");
    }
    let mut nodes: Vec<Option<NodeProto>> = std::mem::take(&mut graph.node)
        .into_iter()
        .map(Some)
        .collect();
    graph.node = order.into_iter().filter_map(|i| nodes[i].take()).collect();
    Ok(())
}

/// Every tensor a node reads exists, nothing is produced twice, and every graph output is made.
pub fn check_consistency(graph: &GraphProto) -> Result<()> {
    let mut available: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    available.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    let mut produced: HashSet<&str> = HashSet::new();
    for n in &graph.node {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if !produced.insert(o) {
                bail!(
                    "tensor '{o}' is produced twice (second time by {} '{}')",
                    n.op_type,
                    n.name
                );
            }
        }
    }
    available.extend(produced.iter().copied());
    for n in &graph.node {
        for t in n.input.iter().filter(|t| !t.is_empty()) {
            if !available.contains(t.as_str()) {
                bail!(
                    "node {} '{}' reads '{t}', which nothing produces",
                    n.op_type,
                    n.name
                );
            }
        }
    }
    for o in &graph.output {
        if !available.contains(o.name.as_str()) {
            bail!("graph output '{}' is not produced", o.name);
        }
    }
    Ok(())
}

/// Prunes a graph to what its outputs need, including graph inputs nothing reads any more
/// (calibration keeps only the key projections of a model).
pub fn prune_to_outputs(graph: &mut GraphProto) {
    remove_dead(graph);
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    graph
        .input
        .retain(|i| read.contains(&i.name) || outputs.contains(&i.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = outputs[0].to_string();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        n
    }

    fn value(name: &str) -> ValueInfoProto {
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        v
    }

    /// x -> a -> b -> y, with c dead; nodes stored out of order.
    fn graph() -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(value("x"));
        g.output.push(value("y"));
        g.node = vec![
            node("Relu", &["a"], &["b"]),
            node("Neg", &["b"], &["y"]),
            node("Abs", &["x"], &["c"]),
            node("Exp", &["x"], &["a"]),
        ];
        g
    }

    #[test]
    fn sorts_topologically_and_keeps_unrelated_order() {
        let mut g = graph();
        topological_sort(&mut g).unwrap();
        let order: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(order, ["Abs", "Exp", "Relu", "Neg"]);
        check_consistency(&g).unwrap();
    }

    #[test]
    fn a_cycle_is_an_error() {
        let mut g = graph();
        g.node.push(node("Identity", &["y"], &["a"])); // a produced twice and a loop
        assert!(check_consistency(&g)
            .unwrap_err()
            .to_string()
            .contains("produced twice"));
        g.node.retain(|n| n.op_type != "Exp");
        assert!(topological_sort(&mut g)
            .unwrap_err()
            .to_string()
            .contains("cycle"));
    }

    #[test]
    fn dead_nodes_and_unread_inputs_go() {
        let mut g = graph();
        g.input.push(value("unused"));
        prune_to_outputs(&mut g);
        assert_eq!(g.node.len(), 3);
        assert!(!g.node.iter().any(|n| n.op_type == "Abs"));
        assert_eq!(g.input.len(), 1);
    }

    #[test]
    fn consistency_names_a_missing_tensor() {
        let mut g = graph();
        g.node.retain(|n| n.op_type != "Relu");
        let err = check_consistency(&g).unwrap_err().to_string();
        assert!(
            err.contains("Neg 'y' reads 'b', which nothing produces"),
            "{err}"
        );
    }

    #[test]
    fn no_attention_is_a_refusal_listing_the_patterns() {
        let mut model = ModelProto::new();
        model.graph = Some(graph()).into();
        let err = rewrite(
            &mut model,
            &Options {
                subspaces: 4,
                centroids: 256,
                value_dtype: ValueDtype::F32,
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
