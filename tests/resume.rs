//! Crash-safe checkpoints: a run killed with SIGKILL and resumed ends with
//! the same parameters as one that was never interrupted; damaged or foreign
//! checkpoints are refused with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: &str = "40";

fn headroom(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_headroom"));
    c.args(["train", "--steps", STEPS, "--layers", "1", "--dim", "32", "--threads", "2", "--checkpoint-every", "4"])
        .arg("--checkpoint-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("headroom-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn latest_step(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("step-").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_killed_run_resumes_to_the_same_parameters() {
    let (a, b) = (scratch("whole"), scratch("killed"));
    let out = headroom(&a).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut child = headroom(&b).spawn().unwrap();
    let t0 = Instant::now();
    while latest_step(&b) < 12 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let at = latest_step(&b);
    assert!(at < 40, "killed after the end");

    let out = headroom(&b).arg("--resume").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&format!("resumed from {} at step {at}", b.display())), "{log}");
    let whole = std::fs::read(a.join("step-00000040/model.safetensors")).unwrap();
    let resumed = std::fs::read(b.join("step-00000040/model.safetensors")).unwrap();
    assert!(whole == resumed, "parameters and optimizer state differ after resume");
    let (sa, sb) = (
        std::fs::read_to_string(a.join("step-00000040/trainer.json")).unwrap(),
        std::fs::read_to_string(b.join("step-00000040/trainer.json")).unwrap(),
    );
    assert_eq!(sa, sb);
    let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
}

fn resume_error(dir: &Path) -> String {
    let out = headroom(dir).arg("--resume").output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn damaged_or_foreign_checkpoints_are_refused() {
    let d = scratch("damaged");
    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["train", "--steps", "4", "--layers", "1", "--dim", "32", "--checkpoint-every", "4"])
        .arg("--checkpoint-dir")
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ck = d.join("step-00000004");
    let model = std::fs::read(ck.join("model.safetensors")).unwrap();
    let state = std::fs::read(ck.join("trainer.json")).unwrap();

    std::fs::write(ck.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
    let e = resume_error(&d);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");

    std::fs::write(ck.join("model.safetensors"), &model).unwrap();
    std::fs::write(ck.join("trainer.json"), b"{\"format\": \"something-else\"}").unwrap();
    let e = resume_error(&d);
    assert!(e.contains("trainer.json") && e.contains("foreign"), "{e}");

    // A truncated trainer.json.
    std::fs::write(ck.join("trainer.json"), &state[..state.len() / 2]).unwrap();
    let e = resume_error(&d);
    assert!(e.contains("trainer.json") && e.contains("truncated"), "{e}");

    // Every field right but a foreign format string.
    let mut json: serde_json::Value = serde_json::from_slice(&state).unwrap();
    json["format"] = "other-checkpoint-v9".into();
    std::fs::write(ck.join("trainer.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    let e = resume_error(&d);
    assert!(
        e.contains("trainer.json") && e.contains("other-checkpoint-v9") && e.contains("headroom-checkpoint-v1"),
        "{e}"
    );
    std::fs::write(ck.join("trainer.json"), &state).unwrap();

    // Valid safetensors files that do not hold this model: each names the tensor.
    // A rewrite of one tensor: (dtype, shape, bytes), or None to drop it.
    type Stored = (safetensors::Dtype, Vec<usize>, Vec<u8>);
    type Edit<'a> = &'a dyn Fn(&str, &[usize], &[u8]) -> Option<Stored>;
    let damaged = |edit: Edit| {
        let st = safetensors::SafeTensors::deserialize(&model).unwrap();
        let mut kept: Vec<(String, Stored)> = Vec::new();
        for (name, view) in st.tensors() {
            if let Some(t) = edit(&name, view.shape(), view.data()) {
                kept.push((name, t));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = kept
            .iter()
            .map(|(n, (dt, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(ck.join("model.safetensors"), safetensors::serialize(views, &None).unwrap()).unwrap();
        resume_error(&d)
    };
    let f32s = safetensors::Dtype::F32;
    // `positions` as f16: half the bytes, a well-formed file.
    let e = damaged(&|name, shape, data| {
        let halves: Vec<u8> =
            if name == "positions" { data.iter().step_by(2).copied().collect() } else { data.to_vec() };
        let dt = if name == "positions" { safetensors::Dtype::F16 } else { f32s };
        Some((dt, shape.to_vec(), halves))
    });
    assert!(
        e.contains("model.safetensors") && e.contains("`positions`") && e.contains("F16") && e.contains("f32"),
        "{e}"
    );
    let e = damaged(&|name, shape, data| (name != "head.weight").then(|| (f32s, shape.to_vec(), data.to_vec())));
    assert!(e.contains("model.safetensors") && e.contains("no tensor `head.weight`"), "{e}");
    let e = damaged(&|name, shape, data| {
        let mut data = data.to_vec();
        let mut shape = shape.to_vec();
        if name == "head.bias" {
            data.extend_from_slice(&[0; 4]);
            shape[0] += 1;
        }
        Some((f32s, shape, data))
    });
    assert!(e.contains("model.safetensors") && e.contains("`head.bias` is [11]") && e.contains("needs [10]"), "{e}");
    std::fs::write(ck.join("model.safetensors"), &model).unwrap();

    // A well-formed trainer.json with an impossible state: a sample index
    // past the data, then a micro-batch of 0.
    let json: serde_json::Value = serde_json::from_slice(&state).unwrap();
    for (field, value) in [("order", serde_json::json!(null)), ("micro_batch", serde_json::json!(0))] {
        let mut bad = json.clone();
        if field == "order" {
            bad["order"][0] = serde_json::json!(1_000_000);
        } else {
            bad[field] = value;
        }
        std::fs::write(ck.join("trainer.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
        let e = resume_error(&d);
        assert!(e.contains("inconsistent"), "{field}: {e}");
    }
    std::fs::write(ck.join("trainer.json"), &state).unwrap();

    std::fs::write(d.join("latest"), "../../etc").unwrap();
    assert!(resume_error(&d).contains("does not name a checkpoint"));

    let empty = scratch("empty");
    assert!(resume_error(&empty).contains("no checkpoint to resume from"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let d = scratch("other");
    let out = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(["train", "--steps", "4", "--layers", "1", "--dim", "48", "--checkpoint-every", "4"])
        .arg("--checkpoint-dir")
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = resume_error(&d);
    assert!(e.contains("another model") && e.contains("dim: 48"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
