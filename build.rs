//! Embeds the kernel sources in the binary, so the CUDA backend can compile
//! them with NVRTC at run time on machines with no CUDA toolkit, and the CPU
//! harness can build them with g++: every `kernels/*.cu` and `*.cuh`, and
//! everything under `kernels/harness/` (named `harness/...`).

use std::{env, fs, path::Path};

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
        if e.path().is_dir() {
            walk(&e.path(), &rel, out);
        } else if rel.starts_with("harness/") || name.ends_with(".cu") || name.ends_with(".cuh") {
            out.push(rel);
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    let root = env::var("CARGO_MANIFEST_DIR").unwrap();
    let kernels = Path::new(&root).join("kernels");
    let mut names = vec![];
    walk(&kernels, "", &mut names);
    names.sort();
    let mut out = String::from(
        "/// Embedded kernel sources: (path under kernels/, text). Kernel files are\n\
         /// `*.cu` and `*.cuh` at the top; the CPU harness is under `harness/`.\n\
         pub const SOURCES: &[(&str, &str)] = &[\n",
    );
    for n in &names {
        println!("cargo:rerun-if-changed={}", kernels.join(n).display());
        out += &format!("    ({n:?}, include_str!({:?})),\n", kernels.join(n));
    }
    out += "];\n";
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("kernels.rs"), out).unwrap();
}
