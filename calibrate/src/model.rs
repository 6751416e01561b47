//! The LookatAttention nodes of a rewritten model, and writing calibrated codebooks into it.

use anyhow::{bail, Context, Result};
use lookat_contract::{attr, input, output, CodebookShape, DOMAIN, OP_NAME};
use onnx_protobuf::{tensor_proto::DataType, ModelProto};

pub use lookat_onnx::build::set_metadata;

/// One LookatAttention node: which tensors it reads and the geometry of its codebooks.
#[derive(Debug, Clone)]
pub struct LookatLayer {
    pub node: String,
    /// The `[B, S, H*D]` projections the node reads (the same tensors exist in the original).
    pub query_tensor: String,
    pub key_tensor: String,
    pub value_tensor: String,
    /// The codebooks initializer.
    pub codebooks: String,
    /// Codebooks per kv head (`shape.heads` kv heads).
    pub shape: CodebookShape,
    /// Query heads (`num_heads`); a multiple of the kv heads.
    pub query_heads: usize,
    /// Attributes `sinks` and `window`: tokens of the full-precision key window.
    pub sinks: usize,
    pub window: usize,
    /// The (key, query) transform initializers, when the node has them.
    pub transforms: Option<(String, String)>,
    /// The softmax scale (attribute `scale`, else 1/√D): score errors are measured in logits.
    pub scale: f64,
    /// The node's value cache type (its key window's type follows from it).
    pub value_type: lookat_contract::ValueType,
    /// The node's key-codes cache input and output, when it has a cache: their last dimension is m.
    pub codes_io: Vec<String>,
}

impl LookatLayer {
    /// Key/value heads: the heads whose keys are cached and calibrated.
    pub fn heads(&self) -> usize {
        self.shape.heads
    }
    pub fn head_dim(&self) -> usize {
        self.shape.head_dim()
    }

    /// Cache bytes per token of this layer.
    pub fn cache_bytes(&self) -> lookat_contract::CacheBytes {
        lookat_contract::CacheBytes {
            kv_heads: self.heads(),
            head_dim: self.head_dim(),
            subspaces: self.shape.subspaces,
            centroids: self.shape.centroids,
            value_type: self.value_type,
            window_tokens: self.sinks + self.window,
        }
    }
}

/// Every LookatAttention node of a rewritten model, in graph order.
pub fn lookat_layers(model: &ModelProto) -> Result<Vec<LookatLayer>> {
    let graph = model
        .graph
        .as_ref()
        .context("the rewritten model has no graph")?;
    let mut layers = vec![];
    for n in graph
        .node
        .iter()
        .filter(|n| n.domain == DOMAIN && n.op_type == OP_NAME)
    {
        let int_attr = |name: &str| n.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        let query_heads = int_attr(attr::NUM_HEADS)
            .filter(|&h| h > 0)
            .with_context(|| format!("node '{}' has no valid {}", n.name, attr::NUM_HEADS))?;
        let heads = int_attr(attr::NUM_KV_HEADS).unwrap_or(query_heads);
        if heads < 1 || query_heads % heads != 0 {
            bail!(
                "node '{}' has {}={heads}, which does not divide {}={query_heads}",
                n.name,
                attr::NUM_KV_HEADS,
                attr::NUM_HEADS
            );
        }
        let tensor = |i: usize| n.input.get(i).filter(|t| !t.is_empty()).cloned();
        let (Some(query), Some(key), Some(value), Some(books)) = (
            tensor(input::QUERY),
            tensor(input::KEY),
            tensor(input::VALUE),
            tensor(input::CODEBOOKS),
        ) else {
            bail!(
                "node '{}' lacks its query, key, value or codebooks input",
                n.name
            );
        };
        let init = graph
            .initializer
            .iter()
            .find(|t| t.name == books)
            .with_context(|| {
                format!(
                    "codebooks '{books}' of node '{}' are not an initializer",
                    n.name
                )
            })?;
        let shape = CodebookShape::from_dims(&init.dims).with_context(|| {
            format!(
                "codebooks '{books}' have shape {:?}, expected [H, m, K, D/m]",
                init.dims
            )
        })?;
        if shape.heads as i64 != heads {
            bail!(
                "codebooks '{books}' have {} heads, node '{}' has {heads} kv heads",
                shape.heads,
                n.name
            );
        }
        let scale = n
            .attribute
            .iter()
            .find(|a| a.name == attr::SCALE && a.f > 0.0)
            .map_or(1.0 / (shape.head_dim() as f64).sqrt(), |a| a.f as f64);
        let codes_io = [
            n.input.get(input::PAST_KEY_CODES),
            n.output.get(output::PRESENT_KEY_CODES),
        ]
        .into_iter()
        .flatten()
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
        // The value cache's element type, as the graph declares its input or output.
        let value_type = [
            n.output.get(output::PRESENT_VALUE),
            n.input.get(input::PAST_VALUE),
        ]
        .into_iter()
        .flatten()
        .find_map(|name| {
            graph
                .input
                .iter()
                .chain(&graph.output)
                .chain(&graph.value_info)
                .find(|v| &v.name == name)
                .and_then(lookat_onnx::build::tensor_type)
        })
        .map_or(lookat_contract::ValueType::Float32, |t| {
            use lookat_contract::ValueType;
            match t.elem_type {
                x if x == DataType::FLOAT16 as i32 => ValueType::Float16,
                x if x == DataType::INT8 as i32 => ValueType::Int8,
                _ => ValueType::Float32,
            }
        });
        layers.push(LookatLayer {
            node: n.name.clone(),
            scale,
            value_type,
            codes_io,
            query_tensor: query,
            key_tensor: key,
            value_tensor: value,
            codebooks: books,
            shape,
            query_heads: query_heads as usize,
            sinks: int_attr(attr::SINKS).unwrap_or(0).max(0) as usize,
            window: int_attr(attr::WINDOW).unwrap_or(0).max(0) as usize,
            transforms: match (tensor(input::KEY_TRANSFORM), tensor(input::QUERY_TRANSFORM)) {
                (Some(a), Some(b)) => {
                    for t in [&a, &b] {
                        if !graph.initializer.iter().any(|i| &i.name == t) {
                            bail!("transform '{t}' of node '{}' is not an initializer", n.name);
                        }
                    }
                    Some((a, b))
                }
                (None, None) => None,
                _ => bail!("node '{}' has only one of its key/query transforms", n.name),
            },
        });
    }
    if layers.is_empty() {
        bail!("the model holds no {DOMAIN}::{OP_NAME} node: rewrite it with lookat-rewrite first");
    }
    Ok(layers)
}

/// The values of the float initializer `name` (stored inline, as lookat-calibrate writes them).
pub fn read_floats(model: &ModelProto, name: &str) -> Result<Vec<f32>> {
    let t = model
        .graph
        .as_ref()
        .and_then(|g| g.initializer.iter().find(|t| t.name == name))
        .with_context(|| format!("initializer '{name}' is missing"))?;
    if t.data_type != DataType::FLOAT as i32 {
        bail!("initializer '{name}' is not float32");
    }
    let want: i64 = t.dims.iter().product();
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    if values.len() as i64 != want {
        bail!(
            "initializer '{name}' holds {} floats, its shape {:?} needs {want} (external data is not read here)",
            values.len(),
            t.dims
        );
    }
    Ok(values)
}

/// Replaces the float initializer `name` with `values` (same element count).
pub fn write_floats(model: &mut ModelProto, name: &str, values: &[f32]) -> Result<()> {
    let graph = model.graph.as_mut().context("graph")?;
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .with_context(|| format!("initializer '{name}' disappeared"))?;
    let want: i64 = t.dims.iter().product();
    if values.len() as i64 != want || values.iter().any(|x| !x.is_finite()) {
        bail!(
            "values for '{name}' are malformed ({} values, {want} expected, or non-finite)",
            values.len()
        );
    }
    t.data_type = DataType::FLOAT as i32;
    t.float_data.clear();
    t.raw_data = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(())
}

/// Gives `layer`'s codebooks initializer the shape of `layer.shape` and its key-codes cache
/// tensors (graph inputs, outputs, value infos) the last dimension `m`: how a layer gets another
/// number of subspaces than the rewrite gave it (`--budget`). The op reads m from the codebooks.
pub fn set_subspaces(model: &mut ModelProto, layer: &LookatLayer) -> Result<()> {
    let graph = model.graph.as_mut().context("graph")?;
    let s = layer.shape;
    let t = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == layer.codebooks)
        .with_context(|| format!("initializer '{}' disappeared", layer.codebooks))?;
    t.dims = [s.heads, s.subspaces, s.centroids, s.sub_dim]
        .iter()
        .map(|&d| d as i64)
        .collect();
    for info in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
        .filter(|v| layer.codes_io.contains(&v.name))
    {
        let last = lookat_onnx::build::tensor_type_mut(info)
            .and_then(|t| t.shape.as_mut())
            .and_then(|shape| shape.dim.last_mut());
        if let Some(last) = last {
            last.value = Some(
                onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue(s.subspaces as i64),
            );
        }
    }
    Ok(())
}

/// Replaces each layer's codebook initializer with `books[layer]` (`[H, m, K, D/m]` floats).
pub fn write_codebooks(
    model: &mut ModelProto,
    layers: &[LookatLayer],
    books: &[Vec<f32>],
) -> Result<()> {
    let graph = model.graph.as_mut().context("graph")?;
    for (layer, book) in layers.iter().zip(books) {
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == layer.codebooks)
            .with_context(|| format!("initializer '{}' disappeared", layer.codebooks))?;
        let want = layer.shape.len();
        if book.len() != want || book.iter().any(|x| !x.is_finite()) {
            bail!(
                "codebooks of '{}' are malformed ({} values, {want} expected, or non-finite)",
                layer.node,
                book.len()
            );
        }
        t.data_type = DataType::FLOAT as i32;
        t.float_data.clear();
        t.raw_data = book.iter().flat_map(|x| x.to_le_bytes()).collect();
        t.doc_string = "LookatAttention codebooks written by lookat-calibrate".into();
    }
    Ok(())
}
