//! The planner's contract: predicted = measured, to the byte; planning is
//! fast and touches no memory; fit only offers what fits.

use headroom::model::{ClassifierConfig as Digits, ModelConfig};
use headroom::plan::{fit, plan};
use headroom::train::{train, Precision, Recompute, TrainConfig};
use std::process::Command;

fn cfg() -> TrainConfig {
    TrainConfig { steps: Some(2), progress: false, model: ModelConfig::digits(32, 3, 64), ..TrainConfig::default() }
}

#[test]
fn predicted_peaks_equal_measured_peaks_for_several_configs() {
    let configs = [
        cfg(),
        TrainConfig { batch: 8, accum: 4, ..cfg() },
        // f16's first steps can overflow and be skipped, which delays the
        // optimizer state; the plan assumes applied steps, so run enough of them.
        TrainConfig { precision: Precision::F16, recompute: Recompute::All, steps: Some(5), ..cfg() },
        TrainConfig { precision: Precision::Bf16, recompute: Recompute::Every(2), batch: 48, ..cfg() },
        TrainConfig { model: ModelConfig::digits(64, 2, 256), batch: 24, accum: 2, ..cfg() },
    ];
    for c in configs {
        let p = plan(&c).unwrap();
        let m = train(&c).unwrap();
        assert_eq!(p.predicted_peak_allocated_bytes, m.peak_allocated_bytes, "{c:?}");
        assert_eq!(p.predicted_peak_reserved_bytes, m.peak_reserved_bytes, "{c:?}");
        assert_eq!(p.peak_by_tag, m.peak_by_tag);
        assert_eq!(p.by_tag, m.by_tag_at_peak);
        assert_eq!(p.peak_op, m.peak_op);
    }
}

#[test]
fn the_breakdown_adds_up_and_names_the_peak() {
    let p = plan(&cfg()).unwrap();
    assert_eq!(p.by_tag.values().sum::<usize>(), p.predicted_peak_allocated_bytes);
    let live: usize = p.largest_live.iter().map(|t| t.bytes).sum();
    assert!(live > 0 && live <= p.predicted_peak_allocated_bytes);
    assert!(p.largest_live.windows(2).all(|w| w[0].bytes >= w[1].bytes));
    assert!(!p.peak_op.is_empty());
    assert!(p.text().contains("largest tensors live at the peak"));
}

fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

#[test]
fn planning_tens_of_gib_takes_well_under_a_second_and_no_memory() {
    let big = TrainConfig {
        batch: 1024,
        model: ModelConfig::Digits(Digits { heads: 16, ..Digits::digits(1024, 24, 4096) }),
        ..cfg()
    };
    let before = rss();
    let t = std::time::Instant::now();
    let p = plan(&big).unwrap();
    let took = t.elapsed();
    assert!(p.predicted_peak_allocated_bytes > 20 << 30, "{}", p.predicted_peak_allocated_bytes);
    assert!(took.as_secs_f64() < 1.0, "planning took {took:?}");
    assert!(rss() < before + (256 << 20), "planning made memory resident");
}

#[test]
fn fit_offers_only_configurations_that_fit_and_they_do() {
    let c = TrainConfig { batch: 32, ..cfg() };
    let plain = plan(&c).unwrap().predicted_peak_reserved_bytes;
    let budget = plain / 2;
    let fits = fit(&c, budget).unwrap();
    assert!(!fits.is_empty());
    for f in &fits {
        assert!(f.predicted_peak_reserved_bytes <= budget);
        assert_eq!(f.micro_batch * f.accumulation, 32);
    }
    assert!(fits.windows(2).all(|w| w[0].relative_cost <= w[1].relative_cost));
    let best = &fits[0];
    let r = train(&best.config).unwrap();
    assert!(r.peak_reserved_bytes <= budget);
    assert_eq!(r.oom_recoveries, 0);
    assert_eq!(r.peak_reserved_bytes, best.predicted_peak_reserved_bytes);
}

#[test]
fn a_budget_too_small_for_anything_says_the_smallest_that_works() {
    let e = fit(&cfg(), 1 << 20).unwrap_err().to_string();
    assert!(e.contains("no configuration fits 1.00 MiB") && e.contains("Raise --budget to at least"), "{e}");
}

#[test]
fn plan_json_on_the_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_headroom")).args(["plan", "--json", "--layers", "1"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["predicted_peak_allocated_bytes", "predicted_peak_reserved_bytes", "by_tag", "peak_op", "largest_live"] {
        assert!(!v[k].is_null(), "missing {k}");
    }
    assert!(
        v["predicted_peak_reserved_bytes"].as_u64().unwrap() >= v["predicted_peak_allocated_bytes"].as_u64().unwrap()
    );
}
