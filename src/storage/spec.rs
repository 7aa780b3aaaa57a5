//! `--storage SPEC` parsing: which backend to open, from one string.

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc};

use crate::storage::{
    EtcdSpec, EtcdStorage, FileStorage, MemoryStorage, RedbStorage, Storage, StorageError,
    etcd::{DEFAULT_PREFIX, check_prefix},
};

/// A backend named on the command line or in a scenario: `memory`, `file:PATH`, `redb:PATH` or
/// `etcd:HOST:PORT[,HOST:PORT…][/PREFIX]` (every etcd key of the store starts with `PREFIX:`,
/// default `kvcore:`, so several stores can share one cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageSpec {
    /// The in-memory default.
    Memory,
    /// An append-only log file.
    File(PathBuf),
    /// An embedded redb database.
    Redb(PathBuf),
    /// An etcd cluster and the key prefix of this store in it.
    Etcd(EtcdSpec),
}

/// A storage spec that cannot be parsed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The string names no known backend or lacks its argument.
    #[error(
        "invalid storage spec {spec:?}: {reason} (expected memory | file:PATH | redb:PATH | etcd:HOST:PORT[,HOST:PORT...][/PREFIX])"
    )]
    Invalid {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The backend was found but could not be opened (locked, corrupt, unreadable).
    #[error("cannot open storage {spec}: {source}")]
    Open {
        /// The spec as given.
        spec: String,
        /// Why it failed, naming the file (and offset, for corruption).
        source: StorageError,
    },
}

impl FromStr for StorageSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| SpecError::Invalid {
            spec: spec.to_owned(),
            reason,
        };
        let (kind, arg) = match spec.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (spec, None),
        };
        match (kind, arg) {
            ("memory", None) => Ok(Self::Memory),
            ("memory", Some(_)) => Err(invalid("memory takes no argument")),
            ("file" | "redb" | "etcd", None | Some("")) => Err(invalid("missing argument")),
            ("file", Some(path)) => Ok(Self::File(path.into())),
            ("redb", Some(path)) => Ok(Self::Redb(path.into())),
            ("etcd", Some(arg)) => {
                let (hosts, prefix) = match arg.split_once('/') {
                    Some((hosts, prefix)) => (hosts, prefix),
                    None => (arg, DEFAULT_PREFIX),
                };
                check_prefix(prefix).map_err(invalid)?;
                let hosts: Vec<String> = hosts.split(',').map(str::to_owned).collect();
                if hosts.iter().any(|h| {
                    h.rsplit_once(':')
                        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                }) {
                    return Err(invalid("each etcd endpoint must be HOST:PORT"));
                }
                Ok(Self::Etcd(EtcdSpec {
                    endpoints: hosts,
                    prefix: prefix.to_owned(),
                }))
            }
            _ => Err(invalid("unknown backend")),
        }
    }
}

impl fmt::Display for StorageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Redb(path) => write!(f, "redb:{}", path.display()),
            Self::Etcd(spec) => spec.fmt(f),
        }
    }
}

impl StorageSpec {
    /// Opens the backend this spec names.
    pub async fn open(&self) -> Result<Arc<dyn Storage>, SpecError> {
        let open_err = |source| SpecError::Open {
            spec: self.to_string(),
            source,
        };
        match self {
            Self::Memory => Ok(Arc::new(MemoryStorage::new())),
            Self::File(path) => Ok(Arc::new(FileStorage::open(path).map_err(open_err)?)),
            Self::Redb(path) => Ok(Arc::new(RedbStorage::open(path).map_err(open_err)?)),
            Self::Etcd(spec) => Ok(Arc::new(EtcdStorage::open(spec).await.map_err(open_err)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented spec form parses and prints back unchanged.
    #[test]
    fn parses_documented_forms() {
        for spec in [
            "memory",
            "file:/tmp/kv.log",
            "redb:data.redb",
            "etcd:127.0.0.1:2379,h:1",
            "etcd:127.0.0.1:2379/app/one",
        ] {
            let parsed: StorageSpec = spec.parse().expect(spec);
            assert_eq!(parsed.to_string(), spec);
        }
    }

    /// The prefix defaults to `kvcore` and is split off at the first `/`.
    #[test]
    fn etcd_prefix() {
        let parsed: StorageSpec = "etcd:a:1,b:2".parse().expect("valid");
        let StorageSpec::Etcd(spec) = parsed else {
            panic!("not etcd: {parsed:?}")
        };
        assert_eq!(spec.endpoints, ["a:1", "b:2"]);
        assert_eq!(spec.prefix, DEFAULT_PREFIX);
        let parsed: StorageSpec = "etcd:a:1/team/app".parse().expect("valid");
        let StorageSpec::Etcd(spec) = parsed else {
            panic!("not etcd: {parsed:?}")
        };
        assert_eq!(
            (spec.endpoints.len(), spec.prefix.as_str()),
            (1, "team/app")
        );
    }

    /// Malformed specs are refused with the reason, never guessed at.
    #[test]
    fn rejects_malformed_specs() {
        for (spec, reason) in [
            ("", "unknown backend"),
            ("disk:/x", "unknown backend"),
            ("file:", "missing argument"),
            ("memory:x", "memory takes no argument"),
            ("etcd:host", "each etcd endpoint must be HOST:PORT"),
            ("etcd:host:notaport", "each etcd endpoint must be HOST:PORT"),
            ("etcd:h:1/", "the prefix is empty"),
            ("etcd:h:1/a:b", "a prefix holds only"),
            ("etcd:/p", "each etcd endpoint must be HOST:PORT"),
        ] {
            let err = spec.parse::<StorageSpec>().unwrap_err();
            assert!(err.to_string().contains(reason), "{spec:?}: {err}");
        }
    }
}
