//! Several nodes on one shared store: the installation identity they share.
//!
//! Devices and service clients must not see which node they reach: every node needs the same
//! ID scope, the same shared access policy keys, the same trust root (so each node's server
//! certificate chains to the bundle devices trust) and the same portal admin password. With a
//! shared store these live in it, in the `cluster` collection:
//!
//! - the first node to start on an empty database creates its data directory as a single node
//!   would and publishes the identity (`IfNoneMatch`, so of nodes starting together exactly one
//!   publishes; the others drop what they had just created and take the winner's);
//! - a node whose data directory is empty takes the published identity: it writes the trust
//!   root, its key and `state.json`, then issues its own server certificate from that root for
//!   the host names it is configured with;
//! - a node whose data directory belongs to another installation (another ID scope or trust
//!   root) refuses to start, saying how to join.
//!
//! The CA key is in the database: whoever can read the database can mint server certificates,
//! as whoever can read the data directory could. Protect both alike (docs/cluster.md).

use std::path::Path;

use muster_store::{Collection, Precondition, Store, StoreError};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::bootstrap::{self, Paths, Policy, State};
use crate::config::Config;

const IDENTITY: &str = "identity";

/// Why a node cannot take the shared identity.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The data directory belongs to another installation.
    #[error(
        "the data directory {dir} belongs to ID scope {local}, but the shared store belongs to ID \
         scope {shared}: start this node with an empty data directory to join the cluster, or give \
         it a store of its own"
    )]
    Foreign {
        /// The data directory.
        dir: String,
        /// Its ID scope.
        local: String,
        /// The store's.
        shared: String,
    },
    /// The data directory has the store's ID scope but another trust root.
    #[error(
        "the data directory {dir} has another trust root (tls/ca.pem) than the shared store: \
         move tls/ca.pem and tls/ca.key.pem aside to take the cluster's"
    )]
    OtherRoot {
        /// The data directory.
        dir: String,
    },
    /// The published identity cannot be read.
    #[error("the shared store's identity document is unreadable: {0}")]
    Corrupt(String),
    /// Reading or writing the data directory.
    #[error("cannot use {path}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating the data directory.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// The store failed.
    #[error("the shared store failed")]
    Store(#[from] StoreError),
}

/// The identity every node of a cluster shares.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shared {
    id_scope: String,
    policies: Vec<Policy>,
    ca_pem: String,
    ca_key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    portal_admin_hash: Option<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Write a file through a temporary name, owner-only when it is a secret.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), ClusterError> {
    use std::io::Write as _;
    let tmp = path.with_extension("cluster.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if secret { 0o600 } else { 0o644 });
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Make the data directory carry the cluster's identity (see the module docs); afterwards
/// [`bootstrap::prepare`] finds it and issues this node's server certificate.
///
/// # Errors
/// [`ClusterError`], each saying what to do.
pub async fn share_identity(store: &dyn Store, config: &Config) -> Result<(), ClusterError> {
    let paths = Paths {
        dir: config.data_dir.clone(),
    };
    for _ in 0..3 {
        if let Some(record) = store.get(Collection::Cluster, IDENTITY).await? {
            let shared: Shared = serde_json::from_value(record.body)
                .map_err(|e| ClusterError::Corrupt(e.to_string()))?;
            return adopt(&paths, &shared);
        }
        let fresh = !paths.state().exists();
        let (paths, state) = bootstrap::prepare(config)?;
        let shared = Shared {
            id_scope: state.id_scope.clone(),
            policies: state.policies.clone(),
            ca_pem: read_text(&paths.ca())?,
            ca_key_pem: read_text(&paths.ca_key())?,
            portal_admin_hash: None,
        };
        let body =
            serde_json::to_value(&shared).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
        match store
            .put(
                Collection::Cluster,
                IDENTITY,
                None,
                &body,
                Precondition::IfNoneMatch,
            )
            .await
        {
            Ok(_) => {
                info!(
                    id_scope = state.id_scope,
                    "published this installation's identity to the shared store"
                );
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) if fresh => {
                // Another node published first while this one was creating its own: drop what
                // was just made and take the winner's.
                for path in [
                    paths.state(),
                    paths.ca(),
                    paths.ca_key(),
                    paths.server(),
                    paths.server_key(),
                ] {
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(ClusterError::Corrupt(
        "the identity kept changing while this node started".into(),
    ))
}

fn adopt(paths: &Paths, shared: &Shared) -> Result<(), ClusterError> {
    let dir = paths.dir.display().to_string();
    if paths.state().exists() {
        let local: State = serde_json::from_str(&read_text(&paths.state())?)
            .map_err(|e| ClusterError::Corrupt(format!("{}: {e}", paths.state().display())))?;
        if local.id_scope != shared.id_scope {
            return Err(ClusterError::Foreign {
                dir,
                local: local.id_scope,
                shared: shared.id_scope.clone(),
            });
        }
        if paths.ca().exists() && read_text(&paths.ca())?.trim() != shared.ca_pem.trim() {
            return Err(ClusterError::OtherRoot { dir });
        }
    }
    let tls = paths.dir.join("tls");
    let fresh = !paths.dir.exists();
    std::fs::create_dir_all(&tls).map_err(io(&tls))?;
    #[cfg(unix)]
    if fresh {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&paths.dir))?;
    }
    if !paths.ca().exists() {
        write(&paths.ca_key(), &shared.ca_key_pem, true)?;
        write(&paths.ca(), &shared.ca_pem, false)?;
        // A server certificate from another root would not chain to the bundle devices trust.
        let _ = std::fs::remove_file(paths.server());
        let _ = std::fs::remove_file(paths.server_key());
        info!(dir, "took the cluster's trust root from the shared store");
    }
    // The policy keys follow the cluster (a key rotated through one node reaches the others
    // when they start).
    let state = State {
        id_scope: shared.id_scope.clone(),
        policies: shared.policies.clone(),
    };
    let text =
        serde_json::to_string_pretty(&state).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
    let current = std::fs::read_to_string(paths.state()).unwrap_or_default();
    if current != text {
        write(&paths.state(), &text, true)?;
        info!(
            id_scope = shared.id_scope,
            "took the cluster's ID scope and policy keys from the shared store"
        );
    }
    if let Some(hash) = &shared.portal_admin_hash {
        let path = crate::portal::admin_hash_path(&paths.dir);
        if std::fs::read_to_string(&path).unwrap_or_default() != *hash {
            write(&path, hash, true)?;
        }
    }
    Ok(())
}

/// After this node made sure it has a portal admin password: publish its hash when the cluster
/// has none yet, so every node signs the administrator in with the same password.
///
/// # Errors
/// [`ClusterError`].
pub async fn share_admin_password(store: &dyn Store, data_dir: &Path) -> Result<(), ClusterError> {
    let path = crate::portal::admin_hash_path(data_dir);
    let Ok(local) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut taken: Option<String> = None;
    store
        .modify(Collection::Cluster, IDENTITY, &mut |current| {
            let Some(record) = current else {
                return muster_store::Change::Keep;
            };
            let mut body = record.body.clone();
            match body.get("portalAdminHash").and_then(|h| h.as_str()) {
                Some(existing) => {
                    taken = Some(existing.to_owned());
                    muster_store::Change::Keep
                }
                None => {
                    taken = None;
                    if let Some(map) = body.as_object_mut() {
                        map.insert("portalAdminHash".into(), local.clone().into());
                    }
                    muster_store::Change::Put { index: None, body }
                }
            }
        })
        .await?;
    if let Some(existing) = taken
        && existing != local
    {
        warn!(
            "another node set the portal admin password first; this node now uses that one \
             (the password printed by this node does not sign in)"
        );
        write(&path, &existing, true)?;
    }
    Ok(())
}
