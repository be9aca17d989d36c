//! Embeds every `kernels/*.cu` source in the binary, so the CUDA backend can
//! compile them with NVRTC at run time on machines with no CUDA toolkit.

use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    let mut names: Vec<String> = fs::read_dir("kernels")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.ends_with(".cu") || n.ends_with(".cuh"));
    names.sort();
    let mut out =
        String::from("/// Embedded kernel sources: (file name, text).\npub const SOURCES: &[(&str, &str)] = &[\n");
    let root = env::var("CARGO_MANIFEST_DIR").unwrap();
    for n in &names {
        out += &format!("    ({n:?}, include_str!({:?})),\n", Path::new(&root).join("kernels").join(n));
    }
    out += "];\n";
    fs::write(Path::new(&env::var("OUT_DIR").unwrap()).join("kernels.rs"), out).unwrap();
}
