//! Loading and saving models without losing anything: the input is never overwritten, outputs
//! are written to a temporary file and renamed into place, and external-data files travel with
//! the model when it is written to another directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use onnx_protobuf::{tensor_proto::DataLocation, Message, ModelProto};

pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes =
        fs::read(path).with_context(|| format!("cannot read model '{}'", path.display()))?;
    ModelProto::parse_from_bytes(&bytes).with_context(|| {
        format!(
            "'{}' is not an ONNX model (protobuf parse failed)",
            path.display()
        )
    })
}

/// The absolute form of a path that may not exist yet (its parent must).
fn absolute(path: &Path) -> Result<PathBuf> {
    if path.exists() {
        return path
            .canonicalize()
            .with_context(|| format!("cannot resolve '{}'", path.display()));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = parent
        .canonicalize()
        .with_context(|| format!("output directory '{}' does not exist", parent.display()))?;
    Ok(parent.join(path.file_name().context("output path has no file name")?))
}

/// Refuses an output that is the input itself.
pub fn check_distinct(input: &Path, output: &Path) -> Result<()> {
    if absolute(input)? == absolute(output)? {
        bail!(
            "output '{}' is the input model: refusing to overwrite it (choose another -o path)",
            output.display()
        );
    }
    Ok(())
}

/// Fails early, naming the path, when `output` could not be written: its directory is missing or
/// read-only, or it is a directory. Tools call this before long work, not after it.
pub fn check_writable(output: &Path) -> Result<()> {
    if output.is_dir() {
        bail!("output '{}' is a directory", output.display());
    }
    let abs = absolute(output)?;
    let dir = abs.parent().context("output has no directory")?;
    let probe = dir.join(format!(".lookat-write-check-{}", std::process::id()));
    fs::File::create(&probe).with_context(|| {
        format!(
            "cannot write the output '{}': directory '{}' is not writable",
            output.display(),
            dir.display()
        )
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// The directory a model's relative external-data locations are resolved against.
pub fn model_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// External-data locations the model refers to (relative to its directory).
fn external_locations(model: &ModelProto) -> Vec<String> {
    let mut locs: Vec<String> = model
        .graph
        .as_ref()
        .into_iter()
        .flat_map(|g| g.initializer.iter())
        .filter(|t| t.data_location.enum_value() == Ok(DataLocation::EXTERNAL))
        .filter_map(|t| {
            t.external_data
                .iter()
                .find(|e| e.key == "location")
                .map(|e| e.value.clone())
        })
        .collect();
    locs.sort();
    locs.dedup();
    locs
}

/// Writes `model` to `output` atomically. External-data files referenced by the model are copied
/// from `input_dir` next to the output when it lives elsewhere; an existing different
/// file of the same name is an error, never overwritten.
pub fn save(model: &ModelProto, input_dir: &Path, output: &Path) -> Result<()> {
    let out_abs = absolute(output)?;
    let out_dir = out_abs
        .parent()
        .context("output has no directory")?
        .to_path_buf();
    let in_dir = input_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve '{}'", input_dir.display()))?;
    if in_dir != out_dir {
        for loc in external_locations(model) {
            if Path::new(&loc).is_absolute() || loc.split('/').any(|c| c == "..") {
                bail!("external data location '{loc}' points outside the model directory");
            }
            let src = in_dir.join(&loc);
            let dst = out_dir.join(&loc);
            if dst.exists() {
                let same = fs::read(&src).ok() == fs::read(&dst).ok();
                if !same {
                    bail!(
                        "'{}' exists and differs from the model's external data '{}'",
                        dst.display(),
                        src.display()
                    );
                }
                continue;
            }
            if let Some(p) = dst.parent() {
                fs::create_dir_all(p)?;
            }
            // A copy, not a hard link: onnx's checker refuses multiply-linked external data.
            fs::copy(&src, &dst)
                .with_context(|| format!("cannot copy external data '{}'", src.display()))?;
        }
    }
    let bytes = model
        .write_to_bytes()
        .context("cannot serialize the model")?;
    write_atomic(&out_abs, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed into place:
/// a reader sees the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let out_abs = absolute(path)?;
    let out_dir = out_abs.parent().context("output has no directory")?;
    let tmp = out_dir.join(format!(
        ".{}.tmp-{}",
        out_abs
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("output"),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot create '{}'", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &out_abs)
            .with_context(|| format!("cannot move the result to '{}'", out_abs.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
