//! Presets trained from `.npy` files on disk (`train --data DIR`): the data
//! streams batch by batch, only the current batch is resident (tag Data),
//! and the plan still equals the run to the byte.

use headroom::data::npy::{write_npy, NpyDtype};
use headroom::plan::plan;
use headroom::train::{train, TrainConfig};
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("headroom-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An eeg-tiny set (8 channels × 64 steps, 4 words of 12) of `n` samples.
fn eeg_set(dir: &Path, n: usize) {
    let (ch, t, s) = (8, 64, 4);
    let mut x = vec![0f32; n * ch * t];
    let mut y = vec![0i32; n * s];
    for i in 0..n {
        for j in 0..s {
            y[i * s + j] = 2 + ((i * 7 + j * 3) % 10) as i32;
        }
        for c in 0..ch {
            for k in 0..t {
                let w = y[i * s + k * s / t] as f32;
                x[(i * ch + c) * t + k] = (w * 0.1 + c as f32 * 0.05) * (0.3 * k as f32).sin();
            }
        }
    }
    write_npy(&dir.join("x.npy"), NpyDtype::F32, &[n, ch, t], &f32s(&x)).unwrap();
    write_npy(&dir.join("y.npy"), NpyDtype::I32, &[n, s], &i32s(&y)).unwrap();
}

#[test]
fn eeg_trains_from_files_with_one_batch_resident_and_the_plan_holds() {
    let dir = temp_dir("eeg");
    eeg_set(&dir, 40);
    let cfg = TrainConfig {
        steps: Some(2),
        progress: false,
        data_dir: Some(dir.clone()),
        ..TrainConfig::preset("eeg-tiny").unwrap()
    };
    let r = train(&cfg).unwrap();
    assert_eq!(r.steps, 2);
    assert!(r.loss_first.is_finite() && r.eval_metric >= 0.0);
    // One micro-batch of 4: x [4, 8, 64] f32 (8 KiB), its mask, targets and
    // decoder inputs; the arena never holds more Data than that (rounded).
    let one_batch = (4 * 8 * 64 * 4) + 512 + 512 + 512 + 512;
    assert!(r.peak_by_tag["data"] <= one_batch, "{}", r.peak_by_tag["data"]);
    assert!(r.peak_by_tag["data"] >= 4 * 8 * 64 * 4);
    let p = plan(&cfg).unwrap();
    assert_eq!(p.predicted_peak_allocated_bytes, r.peak_allocated_bytes);
    assert_eq!(p.predicted_peak_reserved_bytes, r.peak_reserved_bytes);
    assert_eq!(p.peak_by_tag, r.peak_by_tag);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn downsampling_shortens_what_the_model_sees() {
    let dir = temp_dir("eeg-down");
    eeg_set(&dir, 20);
    let base = TrainConfig {
        steps: Some(1),
        progress: false,
        data_dir: Some(dir.clone()),
        ..TrainConfig::preset("eeg-tiny").unwrap()
    };
    let full = plan(&base).unwrap().peak_by_tag["activation"];
    let down = plan(&TrainConfig { downsample: 4, ..base }).unwrap().peak_by_tag["activation"];
    // 64 → 16 steps: the encoder's saved states shrink about 4×.
    assert!(down * 3 < full, "{down} vs {full}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_data_directories_are_clear_errors() {
    let dir = temp_dir("bad");
    let cfg = |d: &Path| TrainConfig {
        steps: Some(1),
        progress: false,
        data_dir: Some(d.to_path_buf()),
        ..TrainConfig::preset("eeg-tiny").unwrap()
    };
    let e = train(&cfg(&dir)).unwrap_err().to_string();
    assert!(e.contains("no x.npy or x/"), "{e}");
    write_npy(&dir.join("x.npy"), NpyDtype::F32, &[3, 8, 64], &f32s(&vec![0.0; 3 * 8 * 64])).unwrap();
    let e = train(&cfg(&dir)).unwrap_err().to_string();
    assert!(e.contains("no y.npy or y/"), "{e}");
    write_npy(&dir.join("y.npy"), NpyDtype::I32, &[2, 4], &i32s(&[2; 8])).unwrap();
    let e = train(&cfg(&dir)).unwrap_err().to_string();
    assert!(e.contains("3 inputs but 2 targets"), "{e}");
    // Inputs of the wrong channel count reach the model's own shape check.
    write_npy(&dir.join("x.npy"), NpyDtype::F32, &[2, 5, 64], &f32s(&vec![0.0; 2 * 5 * 64])).unwrap();
    let e = train(&TrainConfig { batch: 1, ..cfg(&dir) }).unwrap_err().to_string();
    assert!(e.contains("eeg") && e.contains("[B, 8, steps]"), "{e}");
    let digits = TrainConfig { data_dir: Some(dir.clone()), ..TrainConfig::default() };
    assert!(train(&digits).unwrap_err().to_string().contains("embedded data"));
    let _ = std::fs::remove_dir_all(&dir);
}
