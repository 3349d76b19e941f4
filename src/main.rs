use clap::Parser;

use vae_serve::config::{Cli, Command};
use vae_serve::runtime::TorchRuntime;
use vae_serve::training::cli as train_cli;
use vae_serve::{api, server, telemetry};

// Rust's own allocations (HTTP, JSON, images: a hundred small blocks a request, on every runtime
// thread) go to mimalloc, whose per-thread heaps take no lock: `/classify` at concurrency 64 gained
// 18% over glibc's arenas (BENCHMARKS.md). libtorch and the C libraries keep glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.global.log_format);
    match cli.command {
        Command::Openapi => {
            print!("{}", api::openapi_json());
            Ok(())
        }
        Command::Serve(args) => {
            vae_serve::runtime::limit_malloc_arenas();
            // Large uploads are decoded on the blocking pool. Tokio's default cap of 512 threads lets the
            // pool grow with the connections under load, each thread keeping a stack and allocator
            // caches, for no throughput beyond a few threads per core.
            let blocking_threads = 4 * vae_serve::runtime::available_cores();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(blocking_threads).build()?;
            runtime.block_on(server::serve(cli.global, args))?;
            // A training thread may still be inside a batch of a job just handed over. A normal
            // exit would run libtorch's static destructors underneath it, which can crash the
            // process after a clean shutdown; nothing is left to flush (logs go to stderr unbuffered).
            // SAFETY: _exit ends the process at once; no Rust state is observed afterwards.
            unsafe { libc::_exit(0) }
        }
        Command::Train(args) => {
            let runtime = init_torch(&cli.global)?;
            train_cli::run_train(&cli.global, &runtime, &args)
        }
        Command::Eval(args) => {
            let runtime = init_torch(&cli.global)?;
            train_cli::run_eval(&cli.global, &runtime, &args)
        }
        Command::Judge(args) => {
            let runtime = init_torch(&cli.global)?;
            train_cli::run_judge(&cli.global, &runtime, &args)
        }
        Command::Sample(args) => {
            let runtime = init_torch(&cli.global)?;
            train_cli::run_sample(&runtime, &args)
        }
    }
}

fn init_torch(global: &vae_serve::config::GlobalArgs) -> anyhow::Result<TorchRuntime> {
    let runtime = TorchRuntime::init(global.device, global.threads)?;
    runtime.log();
    Ok(runtime)
}
