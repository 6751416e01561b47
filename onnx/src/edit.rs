//! Graph edits that keep a model valid: dead-node removal, pruning to chosen outputs, a stable
//! topological sort and the consistency check run after every patch (as tract does).

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use onnx_protobuf::{GraphProto, NodeProto};

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

/// Orders nodes so that every node follows the producers of its inputs; stable otherwise.
pub fn topological_sort(graph: &mut GraphProto) -> Result<()> {
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
    use onnx_protobuf::ValueInfoProto;

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
}
