//! Finding the ONNX Runtime shared library that Rust hosts load (`ort` with `load-dynamic`): the
//! PyPI wheel ships it inside the `onnxruntime` Python package, so the tools ask the Python that
//! has onnxruntime installed rather than hard-coding a version or a path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The ONNX Runtime shared library: `explicit`, else `ORT_DYLIB_PATH`, else the one the
/// `onnxruntime` Python package of `LOOKAT_PYTHON` (default `python3`) ships.
pub fn ort_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty());
    let path = match (explicit, from_env) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            let python = std::env::var_os("LOOKAT_PYTHON").unwrap_or_else(|| "python3".into());
            library_in_python_package(Path::new(&python)).context(
                "cannot find ONNX Runtime: give --ort-lib or ORT_DYLIB_PATH, or install the \
                 onnxruntime Python package for python3 (LOOKAT_PYTHON picks another interpreter)",
            )?
        }
    };
    if !path.is_file() {
        bail!("ONNX Runtime library '{}' does not exist", path.display());
    }
    Ok(path)
}

/// `libonnxruntime.so.*` inside the `onnxruntime` package that `python` imports (the PyPI wheel
/// ships it in `onnxruntime/capi/`).
pub fn library_in_python_package(python: &Path) -> Result<PathBuf> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .output()
        .with_context(|| format!("cannot run '{}'", python.display()))?;
    if !out.status.success() {
        bail!(
            "'{}' cannot import onnxruntime: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .with_context(|| format!("cannot list '{}'", capi.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // The versioned file (libonnxruntime.so.1.31.1) sorts last; a bare .so link before it.
    found.sort();
    found
        .pop()
        .with_context(|| format!("no libonnxruntime.so in '{}'", capi.display()))
}
