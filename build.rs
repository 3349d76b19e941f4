//! Records where libtorch lives so the binary, tests and benches find it without LD_LIBRARY_PATH,
//! and so start-up can load libtorch_cuda.so from the same directory when it exists.

fn main() {
    // torch-sys publishes its lib dir through the `links = "tch"` metadata channel.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-env=VAE_LIBTORCH_LIB_DIR={lib_dir}");
    } else {
        println!("cargo:rustc-env=VAE_LIBTORCH_LIB_DIR=");
    }
}
