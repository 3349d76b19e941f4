//! Throw-away PostgreSQL servers for tests and benchmarks: a cluster made by `initdb` in a
//! temporary directory, started by `pg_ctl` on a free port, stopped and removed when dropped.
//! Needs the server binaries of Debian's `postgresql` package (`scripts/setup-test-tools.sh`
//! installs them). PostgreSQL refuses to run as root, so as root the cluster belongs to the
//! `postgres` user and its commands run through `runuser`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct PostgresCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's commands as `postgres` (we are root).
    as_postgres: bool,
}

/// The directory of the server binaries: where `initdb` on PATH really lives, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps them off PATH).
fn server_binaries() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("initdb"))
        .find(|initdb| initdb.is_file())
        .and_then(|initdb| initdb.canonicalize().ok())
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf));
    let debian = || {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    };
    on_path
        .filter(|bin| bin.join("pg_ctl").is_file())
        .or_else(debian)
        .context("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's `postgresql` package (`make test-tools` does)")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PostgresCluster {
    /// Makes and starts a new cluster; its superuser is `postgres`, trusted without a password.
    pub fn start() -> anyhow::Result<Self> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new().prefix("vae-postgres-").tempdir()?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let cluster = Self { dir, bin, port: free_port()?, as_postgres };
        if as_postgres {
            let status = Command::new("chown").arg("postgres:").arg(cluster.dir.path()).status()?;
            if !status.success() {
                bail!("cannot give {} to the postgres user (is Debian's postgresql installed?)", cluster.dir.path().display());
            }
        }
        let data = cluster.data_dir();
        let args = ["-N", "--auth=trust", "-U", "postgres", "-E", "UTF8", "-D"].map(OsStr::new);
        cluster.run("initdb", args.into_iter().chain([data.as_os_str()]))?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server binary (as `postgres` when we are root) and returns what it printed.
    fn run<S: AsRef<OsStr>>(&self, program: &str, args: impl IntoIterator<Item = S>) -> anyhow::Result<String> {
        let binary = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        // From a directory `postgres` may enter, whatever ours is.
        let output =
            command.args(args).current_dir(self.dir.path()).output().with_context(|| format!("cannot run {}", binary.display()))?;
        if !output.status.success() {
            bail!("{program} failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn pg_ctl(&self, action: &[&str]) -> anyhow::Result<()> {
        let data = self.data_dir();
        let args = action.iter().map(OsStr::new).chain([OsStr::new("-w"), OsStr::new("-D"), data.as_os_str()]);
        self.run("pg_ctl", args).map(|_| ())
    }

    /// Starts (or starts again after `stop_server`) the server on this cluster's port; returns
    /// when it accepts connections. Durability is off: a test's data need not survive a crash.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let log = log.to_str().context("temporary path is not UTF-8")?;
        self.pg_ctl(&["start", "-t", "60", "-l", log, "-o", &options])
    }

    /// Stops the server (fast shutdown: open connections are closed), keeping its data.
    pub fn stop_server(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "fast"])
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let (port, socket_dir) = (self.port.to_string(), self.dir.path().to_string_lossy().into_owned());
        self.run("createdb", ["-h", &socket_dir, "-p", &port, "-U", "postgres", name])?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        // Immediate: nothing here is worth a clean shutdown. An already stopped server just errs.
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_serves_restarts_and_goes_away() {
        let cluster = PostgresCluster::start().unwrap();
        let url = cluster.create_database("probe").unwrap();
        assert!(url.ends_with(&format!(":{}/probe", cluster.port())));
        let dir = cluster.dir.path().to_path_buf();
        cluster.stop_server().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_err(), "stopped");
        cluster.start_server().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", cluster.port())).is_ok(), "started again");
        drop(cluster);
        assert!(!dir.exists(), "removed");
    }
}
