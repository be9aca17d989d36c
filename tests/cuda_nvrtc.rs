//! The CUDA backend without a GPU: the driver probe, every kernel compiled by
//! NVRTC for sm_75, sm_80 and sm_90, and ptxas's resource report checked against
//! the launch table. Run with --nocapture for the per-kernel figures.

mod cuda_common;

use headroom::cuda::emulator::{is_kernel_file, kernel_names};
use headroom::cuda::nvrtc::{self, Arch, KernelResources, SM75, SM80, SM90};
use headroom::cuda::{self, LAUNCH};
use std::collections::BTreeSet;

#[test]
fn probe_without_a_driver_is_an_error_not_a_panic() {
    if cuda::driver_available() {
        // A machine with a driver: the probe either describes device 0 or says why not.
        match cuda::probe() {
            Ok(d) => println!("CUDA device 0: {d:?}"),
            Err(e) => assert!(e.to_string().contains("failed") || e.to_string().contains("no device"), "{e}"),
        }
        return;
    }
    let e = cuda::probe().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("libcuda.so.1"), "{msg}");
    // As an error (what --device cuda reports) it says what to do.
    let as_error: headroom::Error = e.into();
    let text = as_error.to_string();
    assert!(text.starts_with("cuda: no CUDA driver") && text.contains("--device cpu"), "{text}");
}

#[test]
fn launch_table_lists_exactly_the_kernels_in_the_sources() {
    let in_sources: BTreeSet<String> = kernel_names(headroom::kernels::SOURCES).into_iter().collect();
    let in_table: BTreeSet<String> = LAUNCH.iter().map(|s| s.kernel.to_string()).collect();
    assert_eq!(in_sources, in_table, "kernels/*.cu and cuda::kernels::LAUNCH disagree");
    assert_eq!(in_table.len(), LAUNCH.len(), "a kernel is listed twice in LAUNCH");
    for s in LAUNCH {
        let (_, text) = headroom::kernels::SOURCES.iter().find(|(n, _)| *n == s.file).expect("spec names a file");
        assert!(text.contains(&format!("__global__ void {}(", s.kernel)), "{} is not in {}", s.kernel, s.file);
        assert!(s.block % 32 == 0 && s.block <= 1024, "{}: block {} is not whole warps", s.kernel, s.block);
    }
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm75_sm80_and_sm90_through_the_cache() {
    cuda_common::ensure_wheels();
    for arch in ARCHS {
        let ptx = nvrtc::compile_all(&arch).unwrap();
        let files = headroom::kernels::SOURCES.iter().filter(|(n, _)| is_kernel_file(n)).count();
        assert_eq!(ptx.len(), files, "one PTX per kernel file");
        for p in &ptx {
            assert!(p.text.contains(&format!(".target {}", arch.name)), "{} for {}", p.file, arch.name);
            for s in LAUNCH.iter().filter(|s| s.file == p.file) {
                assert!(
                    p.text.contains(&format!(".entry {}(", s.kernel)),
                    "{} missing from {}'s PTX",
                    s.kernel,
                    p.file
                );
            }
            // Second time: from the disk cache, the same text.
            let again = nvrtc::compile(&arch, &p.file, headroom::kernels::SOURCES).unwrap();
            assert!(again.cached && again.text == p.text && again.path.exists(), "{} not cached", p.file);
        }
    }
}

#[test]
fn a_compile_error_names_the_file_and_shows_the_log() {
    cuda_common::ensure_wheels();
    let src: &[(&str, &str)] =
        &[("broken.cu", "extern \"C\" __global__ void k(float* x) { x[0] = undefined_thing; }\n")];
    let e = nvrtc::compile(&SM80, "broken.cu", src).unwrap_err().to_string();
    assert!(e.contains("broken.cu") && e.contains("compile failed") && e.contains("undefined_thing"), "{e}");
}

fn check(arch: &Arch, res: &[KernelResources]) -> Vec<String> {
    let mut problems = vec![];
    for r in res.iter().filter(|r| r.spill_stores > 0 || r.spill_loads > 0) {
        problems.push(format!(
            "{} on {}: spills {} B stores, {} B loads",
            r.function, arch.name, r.spill_stores, r.spill_loads
        ));
    }
    for s in LAUNCH {
        let Some(r) = res.iter().find(|r| r.entry && r.function == s.kernel) else {
            problems.push(format!("{}: no ptxas report on {}", s.kernel, arch.name));
            continue;
        };
        let smem = r.smem + s.smem.max_bytes();
        if smem > s.smem_limit {
            problems.push(format!(
                "{} on {}: {} B static + {} B dynamic > {} B",
                s.kernel,
                arch.name,
                r.smem,
                s.smem.max_bytes(),
                s.smem_limit
            ));
        }
        if r.registers * s.block > arch.regs_per_sm {
            problems.push(format!(
                "{} on {}: {} registers × {} threads > {}",
                s.kernel, arch.name, r.registers, s.block, arch.regs_per_sm
            ));
        }
    }
    problems
}

/// Turing (T4), Ampere (A100), Hopper (H100/H200).
const ARCHS: [Arch; 3] = [SM75, SM80, SM90];

#[test]
fn ptxas_resources_fit_what_the_launches_assume() {
    cuda_common::ensure_wheels();
    println!("per arch: registers, static smem, spill stores/loads, resident blocks per SM, theoretical occupancy");
    println!("and the limit that binds, with the most dynamic smem the launch gives ('dyn B')");
    println!("{:<30} {:>5} {:>6} | {:<46} | {:<46} | {:<46}", "kernel", "block", "dyn B", "sm_75", "sm_80", "sm_90");
    let all: Vec<Vec<KernelResources>> = ARCHS.iter().map(|a| nvrtc::resources(a).unwrap()).collect();
    let mut problems = vec![];
    for (arch, res) in ARCHS.iter().zip(&all) {
        problems.extend(check(arch, res));
    }
    for s in LAUNCH {
        let mut line = format!("{:<30} {:>5} {:>6}", s.kernel, s.block, s.smem.max_bytes());
        for (arch, res) in ARCHS.iter().zip(&all) {
            let Some(r) = res.iter().find(|r| r.function == s.kernel) else { continue };
            let (blocks, bound) = arch.blocks_per_sm(r.registers, s.block, r.smem + s.smem.max_bytes());
            let occ = 100 * blocks * s.block / arch.max_threads_per_sm;
            line += &format!(
                " | {:>3} reg {:>5} B {}/{} spill {:>2} blk {:>3}% {:<13}",
                r.registers, r.smem, r.spill_stores, r.spill_loads, blocks, occ, bound
            );
        }
        println!("{line}");
    }
    assert!(problems.is_empty(), "resource problems:\n{}", problems.join("\n"));
}
