//! Crash-safe checkpoints.
//!
//! A checkpoint is a directory `step-NNNNNNNN/` holding `model.safetensors`
//! (parameters and optimizer moments, f32, PyTorch-style names) and
//! `trainer.json` (step, RNG, loss scaler, data position, micro-batching).
//! It is written under a temporary name, every file and the directory are
//! synced, then it is renamed into place and the `latest` file is replaced
//! the same way. A crash at any moment leaves the previous checkpoint whole.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Identifies our files; a `trainer.json` without it is foreign.
pub const FORMAT: &str = "headroom-checkpoint-v1";

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: usize,
    pub rng_state: u64,
    pub loss_scale: f32,
    pub clean_steps: u32,
    /// This epoch's sample order and the position in it.
    pub order: Vec<usize>,
    pub position: usize,
    pub micro_batch: usize,
    pub accumulation: usize,
    pub oom_recoveries: usize,
    pub skipped_steps: usize,
    pub loss_first: f32,
    /// Steps each parameter has taken in AdamW (bias correction).
    pub adam_steps: Vec<u64>,
    /// The model's settings: a resume with other settings is refused.
    pub model: String,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(path.display(), e)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| io(path, e))
}

/// Write a checkpoint of `tensors` (name, f32 tensor) and `state` into `dir`.
/// Returns the checkpoint's directory.
///
/// ```
/// use headroom::checkpoint::{load_latest, save, TrainerState, FORMAT};
/// use headroom::{Arena, DType, Tag, Tensor};
/// let dir = std::env::temp_dir().join(format!("headroom-doc-save-{}", std::process::id()));
/// let arena = Arena::host();
/// let w = Tensor::from_f32(&arena, &[2, 2], &[1., 2., 3., 4.], DType::F32, Tag::Parameter).unwrap();
/// let state = TrainerState {
///     format: FORMAT.to_string(),
///     step: 7,
///     rng_state: 42,
///     loss_scale: 1.0,
///     clean_steps: 0,
///     order: vec![1, 0],
///     position: 1,
///     micro_batch: 1,
///     accumulation: 2,
///     oom_recoveries: 0,
///     skipped_steps: 0,
///     loss_first: 2.5,
///     adam_steps: vec![7],
///     model: "my model".into(),
/// };
/// let path = save(&dir, &[("w".to_string(), w)], &state).unwrap();
/// assert!(path.ends_with("step-00000007"));
/// let mut back = load_latest(&dir).unwrap();
/// assert_eq!(back.state, state);
/// assert_eq!(back.take("w", &[2, 2]).unwrap(), [1., 2., 3., 4.]);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn save(dir: &Path, tensors: &[(String, Tensor)], state: &TrainerState) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = dir.join(format!(".tmp-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        let bytes: Vec<u8> = bytemuck::cast_slice(&t.to_vec_f32()?).to_vec();
        data.push((n.clone(), t.shape().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| io(dir, e))?)))
        .collect::<Result<_>>()?;
    let model = safetensors::serialize(views, &None).map_err(|e| io(dir, e))?;
    write_synced(&tmp.join("model.safetensors"), &model)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| io(dir, e))?;
    write_synced(&tmp.join("trainer.json"), &json)?;
    sync_dir(&tmp)?;
    let dest = dir.join(&name);
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| io(&dest, e))?;
    let latest_tmp = dir.join(".latest.tmp");
    write_synced(&latest_tmp, name.as_bytes())?;
    fs::rename(&latest_tmp, dir.join("latest")).map_err(|e| io(dir, e))?;
    sync_dir(dir)?;
    prune(dir, &name);
    Ok(dest)
}

// Keep the newest two checkpoints; older ones only cost disk.
fn prune(dir: &Path, newest: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-") && n.as_str() <= newest)
        .collect();
    names.sort();
    for old in names.iter().rev().skip(2) {
        let _ = fs::remove_dir_all(dir.join(old));
    }
}

/// A checkpoint read back: f32 tensors by name and the trainer state.
pub struct Loaded {
    pub path: PathBuf,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub state: TrainerState,
}

/// Read the checkpoint `latest` names in `dir`. Every failure says which
/// file is wrong and why; nothing half-read is returned.
///
/// ```
/// use headroom::checkpoint::load_latest;
/// let empty = std::env::temp_dir().join(format!("headroom-doc-none-{}", std::process::id()));
/// let err = load_latest(&empty).err().unwrap().to_string();
/// assert!(err.contains("latest") && err.contains("no checkpoint to resume from"), "{err}");
/// ```
pub fn load_latest(dir: &Path) -> Result<Loaded> {
    let latest = dir.join("latest");
    let name = fs::read_to_string(&latest).map_err(|e| {
        io(&latest, format!("{e}: no checkpoint to resume from (run once with --checkpoint-dir to write one)"))
    })?;
    let name = name.trim();
    if !name.starts_with("step-") || name.contains('/') {
        return Err(io(&latest, format!("does not name a checkpoint (`{name}`)")));
    }
    load(&dir.join(name))
}

/// Read one checkpoint directory.
pub fn load(path: &Path) -> Result<Loaded> {
    let state_path = path.join("trainer.json");
    let text = fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| {
        io(&state_path, format!("not a headroom trainer state ({e}); the file is truncated or foreign"))
    })?;
    if state.format != FORMAT {
        return Err(io(
            &state_path,
            format!(
                "format `{}`, expected `{FORMAT}`: a foreign checkpoint, or one from another headroom version",
                state.format
            ),
        ));
    }
    let model_path = path.join("model.safetensors");
    let bytes = fs::read(&model_path).map_err(|e| io(&model_path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| io(&model_path, format!("not a readable safetensors file ({e:?}); it is truncated or foreign")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(io(
                &model_path,
                format!(
                    "tensor `{name}` is stored as {:?}; headroom checkpoints hold f32, so this file was not written by headroom",
                    view.dtype()
                ),
            ));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok(Loaded { path: path.to_path_buf(), tensors, state })
}

impl Loaded {
    /// The values of tensor `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let file = self.path.join("model.safetensors");
        let (s, v) = self.tensors.remove(name).ok_or_else(|| {
            io(&file, format!("has no tensor `{name}`: it was written by a different model or is incomplete"))
        })?;
        if s != shape {
            return Err(io(&file, format!("tensor `{name}` is {s:?}, the model needs {shape:?}")));
        }
        Ok(v)
    }
}
