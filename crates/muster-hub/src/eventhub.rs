//! The built-in Event Hubs-compatible endpoint's rules that are not about the wire: its entity
//! name, its partitions and its consumer groups.
//!
//! - The entity (`EntityPath`) of a hub is its name, the first label of its host name, as in
//!   `az iot hub connection-string show --default-eventhub`.
//! - Consumer groups: `$Default` always exists and cannot be deleted; others are created and
//!   deleted by the service. Names are compared case-insensitively (the JS SDK says
//!   `$default`); they keep the case they were created with.

use muster_store::{Collection, Precondition};
use serde_json::{Value, json};

use crate::registry::{HubError, Registry};

/// The consumer group every hub has.
pub const DEFAULT_GROUP: &str = "$Default";
/// Consumer groups one hub may have (IoT Hub's standard tier allows 20).
pub const MAX_GROUPS: usize = 20;

/// The Event Hubs entity name of the hub at `host`.
#[must_use]
pub fn entity_name(host: &str) -> String {
    host.split('.').next().unwrap_or(host).to_ascii_lowercase()
}

/// Check a consumer group name: 1–50 characters, letters, digits, `.`, `-` and `_`.
///
/// # Errors
/// [`HubError::InvalidInput`].
pub fn check_group_name(name: &str) -> Result<(), HubError> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(HubError::InvalidInput(format!(
            "'{name}' is not a valid consumer group name: use 1 to 50 letters, digits, '.', '-' or '_'"
        )))
    }
}

fn key(hub: &str, group: &str) -> String {
    format!(
        "{}/{}",
        hub.to_ascii_lowercase(),
        group.to_ascii_lowercase()
    )
}

fn default_group() -> Value {
    json!({"name": DEFAULT_GROUP, "properties": {}})
}

impl Registry {
    /// The consumer groups of `hub`, `$Default` first.
    ///
    /// # Errors
    /// [`HubError::Store`].
    pub async fn consumer_groups(&self, hub: &str) -> Result<Vec<Value>, HubError> {
        let hub = hub.to_ascii_lowercase();
        let records = self
            .store
            .list(Collection::ConsumerGroups, Some(&hub), None, MAX_GROUPS + 1)
            .await?;
        Ok(std::iter::once(default_group())
            .chain(records.into_iter().map(|r| r.body))
            .collect())
    }

    /// The consumer group `name` of `hub`, with its stored spelling; `None` when it does not
    /// exist.
    ///
    /// # Errors
    /// [`HubError::Store`].
    pub async fn consumer_group(&self, hub: &str, name: &str) -> Result<Option<Value>, HubError> {
        if name.eq_ignore_ascii_case(DEFAULT_GROUP) {
            return Ok(Some(default_group()));
        }
        Ok(self
            .store
            .get(Collection::ConsumerGroups, &key(hub, name))
            .await?
            .map(|r| r.body))
    }

    /// Create consumer group `name`.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] for a bad name or too many groups,
    /// [`HubError::AlreadyExists`].
    pub async fn create_consumer_group(&self, hub: &str, name: &str) -> Result<Value, HubError> {
        if name.eq_ignore_ascii_case(DEFAULT_GROUP) {
            return Err(HubError::AlreadyExists(format!(
                "consumer group '{DEFAULT_GROUP}' already exists"
            )));
        }
        check_group_name(name)?;
        let hub = hub.to_ascii_lowercase();
        if self.consumer_groups(&hub).await?.len() >= MAX_GROUPS {
            return Err(HubError::InvalidInput(format!(
                "a hub has at most {MAX_GROUPS} consumer groups"
            )));
        }
        let body = json!({
            "name": name,
            "properties": {"created": crate::time_fmt::azure(time::OffsetDateTime::now_utc())},
        });
        match self
            .store
            .put(
                Collection::ConsumerGroups,
                &key(&hub, name),
                Some(&hub),
                &body,
                Precondition::IfNoneMatch,
            )
            .await
        {
            Ok(_) => Ok(body),
            Err(muster_store::StoreError::Conflict { .. }) => Err(HubError::AlreadyExists(
                format!("consumer group '{name}' already exists"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete consumer group `name`.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] for `$Default`, [`HubError::NotFound`].
    pub async fn delete_consumer_group(&self, hub: &str, name: &str) -> Result<(), HubError> {
        if name.eq_ignore_ascii_case(DEFAULT_GROUP) {
            return Err(HubError::InvalidInput(format!(
                "consumer group '{DEFAULT_GROUP}' cannot be deleted"
            )));
        }
        let deleted = self
            .store
            .delete(
                Collection::ConsumerGroups,
                &key(hub, name),
                Precondition::None,
            )
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(HubError::NotFound(format!(
                "consumer group '{name}' not found"
            )))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn entity_is_the_first_label() {
        assert_eq!(entity_name("Contoso-Hub.azure-devices.net"), "contoso-hub");
        assert_eq!(entity_name("localhost"), "localhost");
    }

    #[test]
    fn group_names_follow_the_rules() {
        assert!(check_group_name("analytics_1.a-b").is_ok());
        assert!(check_group_name("").is_err());
        assert!(check_group_name("a/b").is_err());
        assert!(check_group_name(&"x".repeat(51)).is_err());
    }

    #[tokio::test]
    async fn groups_are_created_listed_and_deleted_case_insensitively() {
        let store = std::sync::Arc::new(muster_store::sqlite::SqliteStore::in_memory().unwrap());
        let registry = Registry::new(store);
        let hub = "hub.local";
        assert_eq!(registry.consumer_groups(hub).await.unwrap().len(), 1);
        registry
            .create_consumer_group(hub, "Analytics")
            .await
            .unwrap();
        assert!(matches!(
            registry.create_consumer_group(hub, "analytics").await,
            Err(HubError::AlreadyExists(_))
        ));
        assert!(matches!(
            registry.create_consumer_group(hub, "$default").await,
            Err(HubError::AlreadyExists(_))
        ));
        let found = registry.consumer_group(hub, "ANALYTICS").await.unwrap();
        assert_eq!(found.unwrap().get("name").unwrap(), "Analytics");
        assert!(
            registry
                .consumer_group("other.hub", "analytics")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            registry
                .consumer_group(hub, "$DEFAULT")
                .await
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            registry.delete_consumer_group(hub, "$Default").await,
            Err(HubError::InvalidInput(_))
        ));
        registry
            .delete_consumer_group(hub, "analytics")
            .await
            .unwrap();
        assert!(matches!(
            registry.delete_consumer_group(hub, "analytics").await,
            Err(HubError::NotFound(_))
        ));
    }
}
