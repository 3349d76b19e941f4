//! From `name` or `name@N` to a model's id and directory. Every inference request asks, and
//! listing a model's versions takes several system calls (a profile of `/classify` put a tenth
//! of the request threads' time there), so answers are remembered. An answer stands while the
//! model's directory keeps its modification time (publishing and removal both rename inside it)
//! and for at most `MAX_AGE`, which bounds staleness where a version was copied in by hand. As
//! git does with its index, a time too recent to be trusted (the clock behind mtimes ticks every
//! few milliseconds, so two renames may share one) is not remembered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::models::artifact;

const MAX_AGE: Duration = Duration::from_secs(1);
const MTIME_GRANULARITY: Duration = Duration::from_millis(100);

/// Finds `name` (latest version) or `name@N` under `models_dir`: its id and directory.
pub fn resolve_model(models_dir: &Path, spec: &str) -> Result<(String, PathBuf), String> {
    let (name, wanted) = parse_spec(spec)?;
    find(models_dir, spec, name, wanted)
}

/// Lists `name`'s versions for `spec` once parsed.
fn find(models_dir: &Path, spec: &str, name: &str, wanted: Option<u32>) -> Result<(String, PathBuf), String> {
    artifact::find_version(models_dir, name, wanted)
        .map_err(|e| e.to_string())?
        .map(|(v, path)| (format!("{name}@{v}"), path))
        .ok_or_else(|| format!("model `{spec}` not found under {}", models_dir.display()))
}

fn parse_spec(spec: &str) -> Result<(&str, Option<u32>), String> {
    match spec.split_once('@') {
        Some((name, v)) => Ok((name, Some(v.trim_start_matches('v').parse().map_err(|_| format!("`{spec}`: version must be a number"))?))),
        None => Ok((spec, None)),
    }
}

/// `resolve_model` with remembered answers.
pub struct Resolver {
    models_dir: PathBuf,
    answers: Mutex<HashMap<String, Answer>>,
}

struct Answer {
    id: String,
    dir: PathBuf,
    family_modified: SystemTime,
    looked_up: Instant,
}

impl Resolver {
    pub fn new(models_dir: PathBuf) -> Self {
        Self { models_dir, answers: Mutex::new(HashMap::new()) }
    }

    pub fn resolve(&self, spec: &str) -> Result<(String, PathBuf), String> {
        let (name, wanted) = parse_spec(spec)?;
        artifact::validate_name(name).map_err(|e| e.to_string())?;
        // Read before listing: a change during the listing then shows as a new time next call.
        let Ok(family_modified) = std::fs::metadata(self.models_dir.join(name)).and_then(|m| m.modified()) else {
            return find(&self.models_dir, spec, name, wanted);
        };
        let remembered =
            self.answers.lock().unwrap_or_else(|p| p.into_inner()).get(spec).and_then(|a| {
                (a.family_modified == family_modified && a.looked_up.elapsed() < MAX_AGE).then(|| (a.id.clone(), a.dir.clone()))
            });
        if let Some(answer) = remembered {
            return Ok(answer);
        }
        // Listed without the lock held, so other requests do not wait on this one's disk reads.
        let (id, dir) = find(&self.models_dir, spec, name, wanted)?;
        let settled = SystemTime::now().duration_since(family_modified).is_ok_and(|age| age > MTIME_GRANULARITY);
        if settled {
            let answer = Answer { id: id.clone(), dir: dir.clone(), family_modified, looked_up: Instant::now() };
            self.answers.lock().unwrap_or_else(|p| p.into_inner()).insert(spec.to_string(), answer);
        }
        Ok((id, dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_fake(models_dir: &Path, name: &str, version: u32) {
        // What `artifact::publish` does, minus the tensors: a finished directory renamed into place.
        let staging = models_dir.join(name).join(format!(".staging-v{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join(artifact::MANIFEST_FILE), "{}").unwrap();
        std::fs::rename(&staging, models_dir.join(name).join(format!("v{version}"))).unwrap();
    }

    fn age(dir: &Path) {
        let past = SystemTime::now() - Duration::from_secs(10);
        std::fs::File::open(dir).unwrap().set_modified(past).unwrap();
    }

    #[test]
    fn remembers_settled_answers_and_sees_published_and_removed_versions_at_once() {
        let models = tempfile::tempdir().unwrap();
        let family = models.path().join("digits");
        let resolver = Resolver::new(models.path().to_path_buf());
        assert!(resolver.resolve("digits").unwrap_err().contains("not found"));
        publish_fake(models.path(), "digits", 1);
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@1");

        // A settled directory's answer is remembered: a change inside a version goes unseen.
        age(&family);
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@1");
        std::fs::remove_file(family.join("v1").join(artifact::MANIFEST_FILE)).unwrap();
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@1", "remembered");
        std::fs::write(family.join("v1").join(artifact::MANIFEST_FILE), "{}").unwrap();

        // Publishing and removal rename inside the family directory, and are seen at once.
        publish_fake(models.path(), "digits", 2);
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@2");
        assert_eq!(resolver.resolve("digits@1").unwrap().0, "digits@1");
        age(&family);
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@2");
        std::fs::rename(family.join("v2"), family.join(".gone")).unwrap();
        assert_eq!(resolver.resolve("digits").unwrap().0, "digits@1");
        assert!(resolver.resolve("digits@2").is_err());
        assert!(resolver.resolve("../etc").unwrap_err().contains("model name"));
    }
}
