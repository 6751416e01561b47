//! The LookatAttention nodes of a rewritten model, and writing calibrated codebooks into it.

use anyhow::{bail, Context, Result};
use onnx_protobuf::{tensor_proto::DataType, ModelProto, StringStringEntryProto};

/// One LookatAttention node: which key tensor it encodes and the geometry of its codebooks.
#[derive(Debug, Clone)]
pub struct LookatLayer {
    pub node: String,
    /// The `[B, S, H*D]` projections the node reads (the same tensors exist in the original).
    pub query_tensor: String,
    pub key_tensor: String,
    pub value_tensor: String,
    pub codebooks: String,
    pub heads: usize,
    pub subspaces: usize,
    pub centroids: usize,
    pub sub_dim: usize,
}

impl LookatLayer {
    pub fn head_dim(&self) -> usize {
        self.subspaces * self.sub_dim
    }
}

pub fn lookat_layers(model: &ModelProto) -> Result<Vec<LookatLayer>> {
    let graph = model
        .graph
        .as_ref()
        .context("the rewritten model has no graph")?;
    let mut layers = vec![];
    for n in graph
        .node
        .iter()
        .filter(|n| n.domain == "com.lookat" && n.op_type == "LookatAttention")
    {
        let heads = n
            .attribute
            .iter()
            .find(|a| a.name == "num_heads")
            .map(|a| a.i)
            .with_context(|| format!("node '{}' has no num_heads", n.name))?;
        let (key, books) = match (n.input.get(1), n.input.get(6)) {
            (Some(k), Some(c)) if !k.is_empty() && !c.is_empty() => (k.clone(), c.clone()),
            _ => bail!("node '{}' lacks its key or codebooks input", n.name),
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
        let [h, m, k, sub] = init.dims[..] else {
            bail!(
                "codebooks '{books}' have shape {:?}, expected [H, m, K, D/m]",
                init.dims
            );
        };
        if h != heads {
            bail!(
                "codebooks '{books}' have {h} heads, node '{}' has num_heads={heads}",
                n.name
            );
        }
        layers.push(LookatLayer {
            node: n.name.clone(),
            query_tensor: n.input[0].clone(),
            key_tensor: key,
            value_tensor: n.input[2].clone(),
            codebooks: books,
            heads: heads as usize,
            subspaces: m as usize,
            centroids: k as usize,
            sub_dim: sub as usize,
        });
    }
    if layers.is_empty() {
        bail!("the model holds no com.lookat::LookatAttention node: rewrite it with lookat-rewrite first");
    }
    Ok(layers)
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
        let want = layer.heads * layer.subspaces * layer.centroids * layer.sub_dim;
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

/// Sets `key` in the model's metadata_props (replacing an earlier value).
pub fn set_metadata(model: &mut ModelProto, key: &str, value: String) {
    model.metadata_props.retain(|p| p.key != key);
    let mut p = StringStringEntryProto::new();
    p.key = key.to_string();
    p.value = value;
    model.metadata_props.push(p);
}
