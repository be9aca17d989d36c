//! `headroom bench` end to end, through the built binary. Asserts behaviour
//! (output shape, positive figures), never speed.

use std::process::Command;

fn headroom(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).args(args).output().expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bench_matmul_json_holds_positive_figures() {
    let (ok, stdout, stderr) = headroom(&["bench", "matmul", "--min-time", "0.01", "--json"]);
    assert!(ok, "{stderr}");
    let records: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let machine = &records[0];
    assert_eq!(machine["record"], "machine");
    for key in ["peak_gflops", "bandwidth_gbs", "clock_mhz", "f32_flops_per_cycle"] {
        assert!(machine[key].as_f64().unwrap() > 0.0, "{key}: {machine}");
    }
    for key in ["peak_derivation", "bandwidth_derivation"] {
        assert!(!machine[key].as_str().unwrap().is_empty(), "{key}");
    }
    let results = &records[1..];
    assert_eq!(results.len(), 6, "square f32/f16/bf16, projection f32/bf16, batched: {stdout}");
    for r in results {
        assert_eq!(
            (r["record"].as_str(), r["kernel"].as_str(), r["bound"].as_str()),
            (Some("result"), Some("matmul"), Some("compute"))
        );
        for key in ["median_s", "min_s", "flops", "bytes", "gflops", "peak_share"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
        }
        assert!(r["iters"].as_u64().unwrap() >= 3);
        assert!(r["min_s"].as_f64() <= r["median_s"].as_f64());
    }
    let dtypes: Vec<&str> = results.iter().map(|r| r["dtype"].as_str().unwrap()).collect();
    assert_eq!(dtypes, ["f32", "f16", "bf16", "f32", "bf16", "f32"]);
}

#[test]
fn bench_list_names_every_kernel_and_runs_nothing() {
    let (ok, stdout, stderr) = headroom(&["bench", "--list"]);
    assert!(ok, "{stderr}");
    let kernels = [
        "matmul",
        "add",
        "gelu",
        "softmax",
        "sum",
        "copy",
        "layer_norm",
        "cross_entropy",
        "attention",
        "conv2d",
        "embedding",
        "adamw",
    ];
    for k in kernels {
        assert!(stdout.lines().any(|l| l.split_whitespace().next() == Some(k)), "{k} missing from:\n{stdout}");
    }
    assert!(stdout.contains("1024x1024 @ 1024x1024") && stdout.contains("bf16"), "{stdout}");
    for shape in ["B4 H8 N512 D64", "8x64x32x32 * 64x64x3x3", "4096 ids of 32000x512", "16777216 params"] {
        assert!(stdout.contains(shape), "{shape} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("GFLOP/s"));
}

#[test]
fn bench_new_kernels_report_flops_or_bytes() {
    let args = ["bench", "layer_norm", "cross_entropy", "attention", "conv2d", "embedding", "adamw"];
    let (ok, stdout, stderr) = headroom(&[&args[..], &["--min-time", "0", "--json", "--threads", "1"]].concat());
    assert!(ok, "{stderr}");
    let results: Vec<serde_json::Value> =
        stdout.lines().skip(1).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let kernels: Vec<&str> = results.iter().map(|r| r["kernel"].as_str().unwrap()).collect();
    assert_eq!(
        kernels,
        [
            "layer_norm",
            "layer_norm",
            "cross_entropy",
            "cross_entropy",
            "attention",
            "attention",
            "conv2d",
            "embedding",
            "adamw",
            "adamw"
        ]
    );
    for r in &results {
        let compute = matches!(r["kernel"].as_str(), Some("attention" | "conv2d"));
        assert_eq!(r["bound"], if compute { "compute" } else { "memory" }, "{r}");
        assert!(r["bytes"].as_f64().unwrap() > 0.0 && r["median_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["flops"].as_f64().unwrap() > 0.0, compute, "{r}");
    }
    // The counts: 4·B·H·N²·D for attention; 2·B·O·H·W·C·k² for conv2d;
    // 28 bytes per f32 parameter of an AdamW step.
    assert_eq!(results[4]["flops"].as_f64(), Some(4.0 * (4 * 8 * 512 * 512 * 64) as f64));
    assert_eq!(results[6]["flops"].as_f64(), Some(2.0 * (8 * 64 * 32 * 32 * 64 * 9) as f64));
    assert_eq!(results[8]["bytes"].as_f64(), Some(28.0 * (1 << 24) as f64));
}

#[test]
fn bench_rejects_an_unknown_kernel() {
    let (ok, _, stderr) = headroom(&["bench", "nosuch", "--min-time", "0"]);
    assert!(!ok);
    assert!(stderr.contains("nosuch") && stderr.contains("matmul"), "{stderr}");
}
