//! ONNX model utilities shared by lookat's tools and tests.
//!
//! - [`io`]: loading, atomic saving, external data that travels with a model.
//! - [`graph`]: a read-only index (producers, consumers, small constants, attributes).
//! - [`edit`]: dead-node removal, pruning, topological sort, the consistency check.
//! - [`build`]: value infos, initializers, attributes, nodes, metadata.
//! - [`locate`]: the ONNX Runtime shared library of the installed Python package.

pub mod build;
pub mod edit;
pub mod graph;
pub mod io;
pub mod locate;

pub use onnx_protobuf as proto;
