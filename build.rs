//! Records where libtorch lives so the binary, tests and benches find it without LD_LIBRARY_PATH,
//! and so start-up can load libtorch_cuda.so from the same directory when it exists. Generates
//! the Open Inference Protocol's gRPC service from proto/, with the protoc that
//! protoc-bin-vendored ships, so the build needs no protoc installed.

fn main() {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("protoc-bin-vendored has a protoc for this platform");
    // prost-build reads PROTOC; the build script is single-threaded, so setting it is sound.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(false)
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])
        .expect("compiling proto/grpc_service.proto");

    // torch-sys publishes its lib dir through the `links = "tch"` metadata channel.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-env=VAE_LIBTORCH_LIB_DIR={lib_dir}");
    } else {
        println!("cargo:rustc-env=VAE_LIBTORCH_LIB_DIR=");
    }
}
