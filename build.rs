//! Records where libtorch lives so the binary, tests and benches find it without LD_LIBRARY_PATH,
//! and so start-up can load libtorch_cuda.so from the same directory when it exists. Generates
//! the Open Inference Protocol's gRPC service from proto/, with the protoc that
//! protoc-bin-vendored ships, so the build needs no protoc installed. Compiles the int8 linear
//! layer's C++ shim, src/models/quantized_linear.cpp.

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
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys publishes libtorch's lib dir (Linux and macOS)");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-env=VAE_LIBTORCH_LIB_DIR={lib_dir}");

    // The shim (its Rust side: src/models/quantized.rs), against the same libtorch's headers,
    // which sit beside its lib dir in every libtorch layout (wheel or zip). The pinned libtorch
    // (2.11, scripts/setup-libtorch.sh) is built with the C++11 string ABI.
    println!("cargo:rerun-if-changed=src/models/quantized_linear.cpp");
    let include = std::path::Path::new(&lib_dir).parent().expect("libtorch's lib dir has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // libtorch's headers as system headers: warnings are for our own code.
        .flag("-isystem")
        .flag(include.display().to_string())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").display().to_string())
        .file("src/models/quantized_linear.cpp")
        .compile("vae_quantized_linear");
}
