//! ONNX Runtime for the Rust tools: its shared library (`--ort-lib`, `ORT_DYLIB_PATH`, or the one
//! inside the `onnxruntime` Python package that `python3` imports), and sessions with or without
//! the LookatAttention plugin.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::environment::Environment;
use ort::session::Session;

static ENV: OnceLock<Environment> = OnceLock::new();

/// Loads ONNX Runtime once per process from `lookat_onnx::locate::ort_library(lib)`.
pub fn init(lib: Option<&Path>) -> Result<&'static Environment> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let path = lookat_onnx::locate::ort_library(lib)?;
    let env = ort::init_from(&path)
        .map_err(|e| anyhow!("cannot load ONNX Runtime from '{}': {e}", path.display()))?
        .build()
        .map_err(|e| anyhow!("cannot create the ONNX Runtime environment: {e}"))?;
    Ok(ENV.get_or_init(|| env))
}

/// A session over a model file; `plugin` registers the LookatAttention library.
pub fn session(
    env: &Environment,
    model: &Path,
    plugin: Option<&Path>,
    threads: usize,
) -> Result<Session> {
    let mut b = Session::builder(env).map_err(|e| anyhow!("{e}"))?;
    b = b
        .with_intra_threads(threads.max(1))
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(p) = plugin {
        b = b.with_operator_library(p).map_err(|e| {
            anyhow!(
                "cannot register the LookatAttention plugin '{}': {e}",
                p.display()
            )
        })?;
    }
    b.commit_from_file(model)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| {
            format!(
                "cannot create an ONNX Runtime session for '{}'",
                model.display()
            )
        })
}

/// A session over a model held in memory whose external data lies in `external_data_dir`.
pub fn session_from_memory(
    env: &Environment,
    model: &[u8],
    external_data_dir: &Path,
    threads: usize,
) -> Result<Session> {
    let dir = external_data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve '{}'", external_data_dir.display()))?;
    let fail = |e: &dyn std::fmt::Display| anyhow!("cannot create an ONNX Runtime session: {e}");
    let b = Session::builder(env).map_err(|e| fail(&e))?;
    let b = b.with_intra_threads(threads.max(1)).map_err(|e| fail(&e))?;
    let mut b = b
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            dir.to_string_lossy(),
        )
        .map_err(|e| fail(&e))?;
    b.commit_from_memory(model).map_err(|e| fail(&e))
}

/// The plugin: `--op-lib`, else `LOOKAT_OP_LIB`, else next to this executable.
pub fn plugin_path(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("LOOKAT_OP_LIB") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?
                .parent()
                .context("executable has no directory")?
                .join("liblookat_op.so"),
        },
    };
    if !path.is_file() {
        bail!(
            "LookatAttention plugin '{}' not found (set LOOKAT_OP_LIB or --op-lib)",
            path.display()
        );
    }
    Ok(path)
}
