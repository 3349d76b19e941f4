//! libtorch start-up: CUDA library loading, device choice and CPU thread count, logged once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tch::{Cuda, Device};

/// libtorch's lib dir as seen by the build (empty when unknown); build.rs also makes it an rpath.
const LIBTORCH_LIB_DIR: &str = env!("VAE_LIBTORCH_LIB_DIR");

/// The device the user asked for, before checking what the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}`: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What start-up found and chose; logged and reported by /readyz.
#[derive(Debug, Clone)]
pub struct TorchRuntime {
    /// Where the libtorch this process runs on lives.
    pub libtorch_dir: PathBuf,
    pub device: Device,
    pub cpu_threads: usize,
    pub cuda_note: String,
}

impl TorchRuntime {
    /// Loads CUDA support when it can help, picks the device and sets torch's CPU threads.
    pub fn init(request: DeviceRequest, threads: usize) -> anyhow::Result<Self> {
        let libtorch_dir = libtorch_dir();
        let cuda_note = match request {
            DeviceRequest::Cpu => "not wanted: device=cpu".to_string(),
            _ => load_cuda_support(&libtorch_dir),
        };
        let device = match request {
            DeviceRequest::Cpu => Device::Cpu,
            DeviceRequest::Auto if Cuda::is_available() => Device::Cuda(0),
            DeviceRequest::Auto => Device::Cpu,
            DeviceRequest::Cuda(n) => {
                let count = Cuda::device_count() as usize;
                anyhow::ensure!(n < count, "device cuda:{n} requested but {count} CUDA device(s) available ({cuda_note})");
                Device::Cuda(n)
            }
        };
        let cpu_threads = if threads == 0 { available_cores() } else { threads };
        tch::set_num_threads(cpu_threads as i32);
        // Inter-op parallelism would add a second pool competing for the same cores.
        tch::set_num_interop_threads(1);
        Ok(Self { libtorch_dir, device, cpu_threads, cuda_note })
    }

    pub fn log(&self) {
        tracing::info!(torch = torch_version(), libtorch_dir = %self.libtorch_dir.display(), "libtorch loaded");
        tracing::info!(device = ?self.device, cpu_threads = self.cpu_threads, cuda = %self.cuda_note, "compute device chosen");
    }
}

/// libtorch's version string, e.g. `2.11.0`.
pub fn torch_version() -> &'static str {
    // torch-sys checks the version at build time; this is the one it was built against.
    "2.11.0"
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The directory of the libtorch this process runs on: where the loader found libtorch_cpu.so (the
/// build machine's path, or another through LD_LIBRARY_PATH on a machine the binary was carried
/// to), else the build-time one.
fn libtorch_dir() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    mapped_libtorch_dir(&maps).unwrap_or_else(|| PathBuf::from(LIBTORCH_LIB_DIR))
}

/// The directory of libtorch_cpu.so in a `/proc/<pid>/maps` listing.
fn mapped_libtorch_dir(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| Path::new(path).parent())
        .map(Path::to_path_buf)
}

/// The linker drops libtorch_cuda.so (nothing references it directly), so CUDA kernels only register
/// when it is loaded into the global namespace before the first CUDA query.
fn load_cuda_support(libtorch_dir: &Path) -> String {
    if !Path::new("/dev/nvidiactl").exists() && !Path::new("/dev/nvidia0").exists() {
        return "not used: no NVIDIA device nodes on this machine".to_string();
    }
    let lib = libtorch_dir.join("libtorch_cuda.so");
    if !lib.exists() {
        return format!("not used: {} not found (CPU-only libtorch)", lib.display());
    }
    // SAFETY: loading a shared library runs its initialisers; libtorch_cuda is designed for that.
    let loaded =
        unsafe { libloading::os::unix::Library::open(Some(&lib), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL) };
    match loaded {
        Ok(library) => {
            // Kept loaded for the life of the process.
            std::mem::forget(library);
            if Cuda::is_available() {
                format!("available: {} device(s), cuDNN {}", Cuda::device_count(), Cuda::cudnn_is_available())
            } else {
                "not used: libtorch_cuda loaded but no usable GPU (driver?)".to_string()
            }
        }
        Err(err) => format!("not used: loading {} failed: {err}", lib.display()),
    }
}

/// Sets torch's intra-op CPU threads for the calling thread, so model threads and training threads
/// can each have their own count. ATen gives a thread its count from the last process-wide setting
/// at the thread's first parallel operation, so that happens first; a later setting made by
/// another thread then no longer reaches this one.
pub fn set_torch_threads_of_this_thread(threads: usize) {
    let _ = tch::get_num_threads();
    tch::set_num_threads(threads.max(1) as i32);
}

/// Caps glibc's malloc arenas at two per core unless `MALLOC_ARENA_MAX` is set. glibc's default
/// (eight per core) let resident memory creep while the blocking pool's threads came and went
/// under load; a cap of two in all made the request threads and the model thread queue for the
/// allocator's locks. Two per core covers the runtime's workers (one per core) and as many model,
/// training and blocking threads. `/classify` at concurrency 64 on 2 cores
/// (`bench/serving_knobs.sh`, BENCHMARKS.md): 13.3k requests/s with 2 arenas, 18.2k with 4, 16.3k with 8.
/// The binary's own allocations have since moved to mimalloc; glibc's are libtorch's and the C
/// libraries'.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let arenas = i32::try_from(2 * available_cores()).unwrap_or(i32::MAX);
        // SAFETY: mallopt only adjusts allocator parameters; it is called before the server starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_requests() {
        assert_eq!("auto".parse::<DeviceRequest>().unwrap(), DeviceRequest::Auto);
        assert_eq!("CPU".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cpu);
        assert_eq!("cuda".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceRequest>().unwrap(), DeviceRequest::Cuda(3));
        assert!("tpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }

    #[test]
    fn finds_the_libtorch_the_loader_mapped() {
        let maps = "7f1c2a000000-7f1c2a400000 r-xp 00000000 08:01 123 /usr/lib/libc.so.6\n\
                    7f1c30000000-7f1c3a000000 r-xp 00200000 08:01 456 /opt/venv/torch/lib/libtorch_cpu.so\n";
        assert_eq!(mapped_libtorch_dir(maps), Some(PathBuf::from("/opt/venv/torch/lib")));
        assert_eq!(mapped_libtorch_dir("7f1c2a000000-7f1c2a400000 rw-p 00000000 00:00 0\n"), None);
        // This test binary links libtorch, so its own listing names the directory.
        assert!(libtorch_dir().join("libtorch_cpu.so").exists());
    }
}
