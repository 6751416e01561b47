//! Read-only index over an ONNX graph: who produces and who consumes each tensor, and the values
//! of small constants (initializers or `Constant` nodes).

use std::collections::{HashMap, HashSet};

use protobuf::Enum;

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, GraphProto, NodeProto, TensorProto,
};

pub struct GraphIndex<'a> {
    pub graph: &'a GraphProto,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
    pub inputs: HashSet<&'a str>,
    pub outputs: HashSet<&'a str>,
}

impl<'a> GraphIndex<'a> {
    pub fn new(graph: &'a GraphProto) -> GraphIndex<'a> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                if !o.is_empty() {
                    producer.insert(o.as_str(), i);
                }
            }
            for t in &n.input {
                if !t.is_empty() {
                    consumers.entry(t.as_str()).or_default().push(i);
                }
            }
        }
        GraphIndex {
            graph,
            producer,
            consumers,
            initializers: graph
                .initializer
                .iter()
                .map(|t| (t.name.as_str(), t))
                .collect(),
            inputs: graph.input.iter().map(|v| v.name.as_str()).collect(),
            outputs: graph.output.iter().map(|v| v.name.as_str()).collect(),
        }
    }

    pub fn node(&self, i: usize) -> &'a NodeProto {
        &self.graph.node[i]
    }

    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// The producer of `tensor` when it is a default-domain node of type `op`.
    pub fn producer_op(&self, tensor: &str, op: &str) -> Option<usize> {
        self.producer(tensor).filter(|&i| is_op(self.node(i), op))
    }

    pub fn consumers(&self, tensor: &str) -> &[usize] {
        self.consumers.get(tensor).map_or(&[], |v| v.as_slice())
    }

    pub fn initializer(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).copied()
    }

    /// Values of a small constant tensor (initializer or `Constant` node), as f64.
    pub fn constant(&self, tensor: &str) -> Option<Vec<f64>> {
        if let Some(t) = self.initializer(tensor) {
            return tensor_values(t);
        }
        let node = self.node(self.producer_op(tensor, "Constant")?);
        let attr = node.attribute.first()?;
        match attr.name.as_str() {
            "value" => tensor_values(attr.t.as_ref()?),
            "value_float" => Some(vec![attr.f as f64]),
            "value_floats" => Some(attr.floats.iter().map(|&x| x as f64).collect()),
            "value_int" => Some(vec![attr.i as f64]),
            "value_ints" => Some(attr.ints.iter().map(|&x| x as f64).collect()),
            _ => None,
        }
    }

    /// A constant holding a single value (any shape with one element).
    pub fn scalar(&self, tensor: &str) -> Option<f64> {
        match self.constant(tensor)?.as_slice() {
            [x] => Some(*x),
            _ => None,
        }
    }

    /// Every node that `tensor` depends on, up to `limit` nodes.
    pub fn ancestors(&self, tensor: &str, limit: usize) -> Vec<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![tensor];
        let mut out = vec![];
        while let Some(t) = stack.pop() {
            if let Some(i) = self.producer(t) {
                if seen.insert(i) {
                    out.push(i);
                    if out.len() >= limit {
                        break;
                    }
                    stack.extend(
                        self.node(i)
                            .input
                            .iter()
                            .map(String::as_str)
                            .filter(|s| !s.is_empty()),
                    );
                }
            }
        }
        out
    }

    /// Graph inputs `tensor` depends on.
    pub fn input_ancestors(&self, tensor: &str) -> Vec<&'a str> {
        let mut found: Vec<&str> = vec![];
        let mut check = |t: &str| {
            if let Some(&name) = self.inputs.get(t) {
                if !found.contains(&name) {
                    found.push(name);
                }
            }
        };
        check(tensor);
        for i in self.ancestors(tensor, 100_000) {
            for t in &self.node(i).input {
                check(t);
            }
        }
        found
    }
}

pub fn is_op(node: &NodeProto, op: &str) -> bool {
    node.op_type == op && (node.domain.is_empty() || node.domain == "ai.onnx")
}

pub fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name == name && a.type_.enum_value() == Ok(AttributeType::INT))
        .map(|a| a.i)
}

pub fn attr_float(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute
        .iter()
        .find(|a| a.name == name && a.type_.enum_value() == Ok(AttributeType::FLOAT))
        .map(|a| a.f)
}

pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute
        .iter()
        .find(|a| a.name == name && a.type_.enum_value() == Ok(AttributeType::INTS))
        .map(|a| a.ints.clone())
}

fn tensor_values(t: &TensorProto) -> Option<Vec<f64>> {
    let count: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    if count > 4096 {
        return None; // only small constants are read
    }
    let raw = &t.raw_data;
    let dt = DataType::from_i32(t.data_type)?;
    let vals: Vec<f64> = match dt {
        DataType::FLOAT if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DataType::FLOAT => t.float_data.iter().map(|&x| x as f64).collect(),
        DataType::DOUBLE if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        DataType::DOUBLE => t.double_data.clone(),
        DataType::INT64 if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
            .collect(),
        DataType::INT64 => t.int64_data.iter().map(|&x| x as f64).collect(),
        DataType::INT32 if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        DataType::INT32 | DataType::BOOL => t.int32_data.iter().map(|&x| x as f64).collect(),
        DataType::FLOAT16 if !raw.is_empty() => raw
            .chunks_exact(2)
            .map(|c| half_to_f64(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        _ => return None,
    };
    (vals.len() == count).then_some(vals)
}

fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        }
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}
