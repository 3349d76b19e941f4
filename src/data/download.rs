//! Fetching the well-known IDX datasets from their canonical mirrors, each file checked against
//! its published MD5 before it is moved into place. Offline, this fails fast with the reason.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

/// Where a dataset's four IDX files are published, with their checksums.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub base_url: String,
    /// File name and its lowercase hex MD5.
    pub files: Vec<(String, String)>,
}

/// The canonical mirrors (the same ones, with the same checksums, as torchvision's).
pub fn canonical(name: &str) -> Option<Mirror> {
    let (base_url, sums): (&str, [&str; 4]) = match name {
        "mnist" => (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            [
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ],
        ),
        "fashion-mnist" => (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            [
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ],
        ),
        _ => return None,
    };
    let names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];
    Some(Mirror { base_url: base_url.into(), files: names.iter().zip(sums).map(|(n, s)| (n.to_string(), s.to_string())).collect() })
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot fetch {url}: {why}")]
    Fetch { url: String, why: String },
    #[error("{url} does not match its published checksum (MD5 {actual}, expected {expected}); nothing was kept")]
    Checksum { url: String, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Downloads every file of `mirror` into `dir` (created if needed). Each file is written under a
/// temporary name, checked, then renamed, so `dir` never holds a partial or unverified file.
pub fn download(mirror: &Mirror, dir: &Path) -> Result<(), DownloadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    for (name, expected) in &mirror.files {
        let target = dir.join(name);
        if target.is_file() {
            continue;
        }
        let url = format!("{}{name}", mirror.base_url);
        let fetch_error = |why: String| DownloadError::Fetch { url: url.clone(), why };
        let response = agent.get(&url).call().map_err(|e| fetch_error(e.to_string()))?;
        let mut bytes = Vec::new();
        response.into_body().into_reader().take(256 << 20).read_to_end(&mut bytes).map_err(|e| fetch_error(e.to_string()))?;
        let actual = format!("{:x}", Md5::digest(&bytes));
        if &actual != expected {
            return Err(DownloadError::Checksum { url, expected: expected.clone(), actual });
        }
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, &bytes).map_err(io(&partial))?;
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        tracing::info!(%url, bytes = bytes.len(), "downloaded and verified");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-thread HTTP server answering GET /<file> from `root` (404 otherwise).
    fn serve(root: PathBuf) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                reader.read_line(&mut request_line).unwrap();
                while reader.read_line(&mut String::new()).map(|n| n > 2).unwrap_or(false) {}
                let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
                match std::fs::read(root.join(&path)) {
                    Ok(body) => {
                        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                        let _ = stream.write_all(&body);
                    }
                    Err(_) => {
                        let _ = write!(stream, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    }
                }
            }
        });
        base
    }

    fn local_mirror(base_url: String) -> Mirror {
        let source = crate::data::shared_data_dir().join("mnist");
        let files = canonical("mnist").unwrap().files.into_iter().map(|(name, _)| {
            let sum = format!("{:x}", Md5::digest(std::fs::read(source.join(&name)).unwrap()));
            (name, sum)
        });
        Mirror { base_url, files: files.collect() }
    }

    #[test]
    fn downloads_verify_and_then_load() {
        let mirror = local_mirror(serve(crate::data::shared_data_dir().join("mnist")));
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("mnist");
        download(&mirror, &target).unwrap();
        let source = crate::data::resolve(target.to_str().unwrap(), dir.path()).unwrap();
        let splits = crate::data::load(&source, &crate::data::DataOptions { validation_fraction: 0.0, ..Default::default() }).unwrap();
        assert_eq!((splits.train.len(), splits.test.len()), (10_000, 10_000));
    }

    #[test]
    fn a_wrong_checksum_keeps_nothing_and_offline_fails_with_the_reason() {
        let mut mirror = local_mirror(serve(crate::data::shared_data_dir().join("mnist")));
        mirror.files[0].1 = "0".repeat(32);
        let dir = tempfile::tempdir().unwrap();
        let error = download(&mirror, dir.path()).unwrap_err().to_string();
        assert!(error.contains("checksum") && error.contains("train-images-idx3-ubyte.gz"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no partial or unverified file is left");

        // Nothing listens on port 1: the connection is refused, as it is offline.
        let offline = Mirror { base_url: "http://127.0.0.1:1/".into(), ..mirror };
        let error = download(&offline, dir.path()).unwrap_err().to_string();
        assert!(error.starts_with("cannot fetch http://127.0.0.1:1/train-images-idx3-ubyte.gz"), "{error}");
    }

    #[test]
    fn only_known_datasets_have_mirrors() {
        assert!(canonical("mnist").unwrap().base_url.starts_with("https://"));
        assert_eq!(canonical("fashion-mnist").unwrap().files.len(), 4);
        assert!(canonical("my-faces").is_none());
    }
}
