//! Device twins.
//!
//! A stored twin is `{"deviceId", "version", "tags", "properties": {"desired": {…, "$version",
//! "$metadata"}, "reported": {…}}}`. Patches are JSON merge patches: objects merge, `null`
//! deletes, anything else replaces. Every change to a section raises its `$version` by one and
//! stamps `$lastUpdated` on every object along the changed paths and
//! `$lastUpdated`/`$lastUpdatedVersion` on changed leaves; the twin's `version` rises with any
//! change.

use serde_json::{Map, Value, json};

/// Azure's twin limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of desired properties (without metadata).
    pub desired: usize,
    /// Bytes of reported properties (without metadata).
    pub reported: usize,
    /// Bytes of tags.
    pub tags: usize,
    /// Nesting depth of objects.
    pub depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            desired: 32 * 1024,
            reported: 32 * 1024,
            tags: 8 * 1024,
            depth: 10,
        }
    }
}

/// Why a twin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// The patch (or replacement) is not a JSON object where one is required.
    #[error("{what} must be a JSON object")]
    NotAnObject {
        /// Which part.
        what: &'static str,
    },
    /// A section would exceed its size limit.
    #[error("{section} would be {size} bytes; the limit is {max}")]
    TooLarge {
        /// `desired`, `reported` or `tags`.
        section: &'static str,
        /// Resulting size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Objects nested too deeply.
    #[error("{section} nests objects {depth} levels deep; the limit is {max}")]
    TooDeep {
        /// Section.
        section: &'static str,
        /// Depth found.
        depth: usize,
        /// Limit.
        max: usize,
    },
    /// A property name breaks Azure's rules.
    #[error("invalid property name '{key}': {reason}")]
    InvalidKey {
        /// The name.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

/// Which properties section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Desired (written by services).
    Desired,
    /// Reported (written by the device).
    Reported,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
        }
    }
}

fn check_key(key: &str) -> Result<(), TwinError> {
    let bad = |reason| {
        Err(TwinError::InvalidKey {
            key: key.chars().take(64).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.len() > 1024 {
        return bad("it is longer than 1 KB");
    }
    if key.starts_with('$') {
        return bad("names starting with '$' are reserved");
    }
    if key.contains(['.', ' ']) || key.chars().any(char::is_control) {
        return bad("names may not contain '.', spaces or control characters");
    }
    Ok(())
}

fn check_value(
    value: &Value,
    depth: usize,
    section: &'static str,
    limits: &Limits,
) -> Result<(), TwinError> {
    if let Value::Object(m) = value {
        if depth > limits.depth {
            return Err(TwinError::TooDeep {
                section,
                depth,
                max: limits.depth,
            });
        }
        for (k, v) in m {
            check_key(k)?;
            check_value(v, depth + 1, section, limits)?;
        }
    }
    Ok(())
}

/// Size of a section without `$`-prefixed bookkeeping.
fn user_size(section: &Value) -> usize {
    match section {
        Value::Object(m) => {
            let plain: Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Value::Object(plain).to_string().len()
        }
        other => other.to_string().len(),
    }
}

fn stamp(stamp: &str, version: u64) -> Value {
    json!({"$lastUpdated": stamp, "$lastUpdatedVersion": version})
}

/// Merge `patch` into `target` (user keys) and `meta` (its `$metadata` mirror).
fn merge(
    target: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    now: &str,
    version: u64,
) {
    meta.insert("$lastUpdated".into(), json!(now));
    meta.insert("$lastUpdatedVersion".into(), json!(version));
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
                meta.remove(k);
            }
            Value::Object(child_patch) => {
                let child = target
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !child.is_object() {
                    *child = Value::Object(Map::new());
                }
                let child_meta = meta
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !child_meta.is_object() {
                    *child_meta = Value::Object(Map::new());
                }
                if let (Value::Object(c), Value::Object(cm)) = (child, child_meta) {
                    merge(c, cm, child_patch, now, version);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
                meta.insert(k.clone(), stamp(now, version));
            }
        }
    }
}

fn object_mut<'a>(parent: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let parent = parent.as_object_mut()?;
    let entry = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

fn bump_twin_version(twin: &mut Value) {
    let v = twin.get("version").and_then(Value::as_u64).unwrap_or(0) + 1;
    if let Some(o) = twin.as_object_mut() {
        o.insert("version".into(), json!(v));
    }
}

/// Apply a patch to one properties section. Returns the section's new `$version`.
///
/// # Errors
/// [`TwinError`]; on error the twin is unchanged.
pub fn patch_properties(
    twin: &mut Value,
    section: Section,
    patch: &Value,
    now: &str,
    limits: &Limits,
) -> Result<u64, TwinError> {
    let Value::Object(patch) = patch else {
        return Err(TwinError::NotAnObject { what: "the patch" });
    };
    check_value(&Value::Object(patch.clone()), 1, section.name(), limits)?;
    let mut candidate = twin.clone();
    let version = {
        let props = object_mut(&mut candidate, "properties")
            .ok_or(TwinError::NotAnObject { what: "the twin" })?;
        let entry = props
            .entry(section.name().to_owned())
            .or_insert_with(|| json!({"$version": 0}));
        let Value::Object(sec) = entry else {
            return Err(TwinError::NotAnObject {
                what: "the section",
            });
        };
        let version = sec.get("$version").and_then(Value::as_u64).unwrap_or(0) + 1;
        let mut meta = match sec.remove("$metadata") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        sec.remove("$version");
        merge(sec, &mut meta, patch, now, version);
        let size = user_size(&Value::Object(sec.clone()));
        let max = match section {
            Section::Desired => limits.desired,
            Section::Reported => limits.reported,
        };
        if size > max {
            return Err(TwinError::TooLarge {
                section: section.name(),
                size,
                max,
            });
        }
        sec.insert("$metadata".into(), Value::Object(meta));
        sec.insert("$version".into(), json!(version));
        version
    };
    bump_twin_version(&mut candidate);
    *twin = candidate;
    Ok(version)
}

/// Merge a tags patch.
///
/// # Errors
/// [`TwinError`]; on error the twin is unchanged.
pub fn patch_tags(twin: &mut Value, patch: &Value, limits: &Limits) -> Result<(), TwinError> {
    let Value::Object(patch) = patch else {
        return Err(TwinError::NotAnObject { what: "tags" });
    };
    check_value(&Value::Object(patch.clone()), 1, "tags", limits)?;
    let mut candidate = twin.clone();
    {
        let tags = object_mut(&mut candidate, "tags")
            .ok_or(TwinError::NotAnObject { what: "the twin" })?;
        let mut ignored_meta = Map::new();
        merge(tags, &mut ignored_meta, patch, "", 0);
        let size = user_size(&Value::Object(tags.clone()));
        if size > limits.tags {
            return Err(TwinError::TooLarge {
                section: "tags",
                size,
                max: limits.tags,
            });
        }
    }
    bump_twin_version(&mut candidate);
    *twin = candidate;
    Ok(())
}

/// Replace tags and desired properties wholesale (service `PUT /twins/{id}`). Returns the new
/// desired `$version` and the full new desired section as a device notification.
///
/// # Errors
/// [`TwinError`]; on error the twin is unchanged.
pub fn replace(
    twin: &mut Value,
    tags: Option<&Value>,
    desired: Option<&Value>,
    now: &str,
    limits: &Limits,
) -> Result<Option<Value>, TwinError> {
    let mut candidate = twin.clone();
    if let Some(t) = tags {
        if !t.is_object() {
            return Err(TwinError::NotAnObject { what: "tags" });
        }
        check_value(t, 1, "tags", limits)?;
        if user_size(t) > limits.tags {
            return Err(TwinError::TooLarge {
                section: "tags",
                size: user_size(t),
                max: limits.tags,
            });
        }
        if let Some(o) = candidate.as_object_mut() {
            o.insert("tags".into(), t.clone());
        }
    }
    let mut notification = None;
    if let Some(d) = desired {
        let Value::Object(d) = d else {
            return Err(TwinError::NotAnObject {
                what: "desired properties",
            });
        };
        // Delete every current key, then merge the new ones: one version step, full metadata.
        let current: Vec<String> = candidate
            .pointer("/properties/desired")
            .and_then(Value::as_object)
            .map(|m| m.keys().filter(|k| !k.starts_with('$')).cloned().collect())
            .unwrap_or_default();
        let mut patch: Map<String, Value> = current.into_iter().map(|k| (k, Value::Null)).collect();
        for (k, v) in d.iter().filter(|(k, _)| !k.starts_with('$')) {
            patch.insert(k.clone(), v.clone());
        }
        let version = patch_properties(
            &mut candidate,
            Section::Desired,
            &Value::Object(patch),
            now,
            limits,
        )?;
        let mut full = d.clone();
        full.retain(|k, _| !k.starts_with('$'));
        full.insert("$version".into(), json!(version));
        notification = Some(Value::Object(full));
    }
    if tags.is_some() && desired.is_none() {
        bump_twin_version(&mut candidate);
    }
    *twin = candidate;
    Ok(notification)
}

/// What a device's twin GET returns: `{"desired": {…, "$version"}, "reported": {…, "$version"}}`
/// without metadata.
#[must_use]
pub fn device_view(twin: &Value) -> Value {
    let strip = |v: Option<&Value>| {
        let mut m = v.and_then(Value::as_object).cloned().unwrap_or_default();
        m.remove("$metadata");
        m.entry("$version").or_insert(json!(1));
        Value::Object(m)
    };
    json!({
        "desired": strip(twin.pointer("/properties/desired")),
        "reported": strip(twin.pointer("/properties/reported")),
    })
}

/// A desired-patch notification for a device: the patch plus `"$version"`.
#[must_use]
pub fn desired_notification(patch: &Value, version: u64) -> Value {
    let mut m = patch.as_object().cloned().unwrap_or_default();
    m.insert("$version".into(), json!(version));
    Value::Object(m)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::*;

    fn twin() -> Value {
        json!({
            "deviceId": "d1",
            "version": 1,
            "tags": {},
            "properties": {
                "desired": {"telemetryDelay": "1", "$version": 1, "$metadata": {"$lastUpdated": "t0", "$lastUpdatedVersion": 1}},
                "reported": {"$version": 1, "$metadata": {"$lastUpdated": "t0"}}
            }
        })
    }

    #[test]
    fn desired_patch_merges_versions_and_stamps() {
        let mut t = twin();
        let v = patch_properties(
            &mut t,
            Section::Desired,
            &json!({"telemetryDelay": "2", "nested": {"a": 1}}),
            "t1",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v, 2);
        let d = &t["properties"]["desired"];
        assert_eq!(d["telemetryDelay"], "2");
        assert_eq!(d["nested"]["a"], 1);
        assert_eq!(d["$version"], 2);
        assert_eq!(d["$metadata"]["telemetryDelay"]["$lastUpdatedVersion"], 2);
        assert_eq!(d["$metadata"]["nested"]["a"]["$lastUpdated"], "t1");
        assert_eq!(d["$metadata"]["$lastUpdated"], "t1");
        assert_eq!(t["version"], 2);
        // null deletes, nested merge keeps siblings
        patch_properties(
            &mut t,
            Section::Desired,
            &json!({"nested": {"b": 2}}),
            "t2",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            t["properties"]["desired"]["nested"],
            json!({"a": 1, "b": 2})
        );
        patch_properties(
            &mut t,
            Section::Desired,
            &json!({"nested": null}),
            "t3",
            &Limits::default(),
        )
        .unwrap();
        assert!(t["properties"]["desired"].get("nested").is_none());
        assert!(
            t["properties"]["desired"]["$metadata"]
                .get("nested")
                .is_none()
        );
        assert_eq!(t["properties"]["desired"]["$version"], 4);
    }

    #[test]
    fn refusals_leave_the_twin_unchanged() {
        let limits = Limits::default();
        let mut t = twin();
        let before = t.clone();
        assert!(matches!(
            patch_properties(&mut t, Section::Reported, &json!(5), "t", &limits),
            Err(TwinError::NotAnObject { .. })
        ));
        assert!(matches!(
            patch_properties(&mut t, Section::Reported, &json!({"$bad": 1}), "t", &limits),
            Err(TwinError::InvalidKey { .. })
        ));
        assert!(matches!(
            patch_properties(&mut t, Section::Reported, &json!({"a.b": 1}), "t", &limits),
            Err(TwinError::InvalidKey { .. })
        ));
        let big = "x".repeat(33 * 1024);
        assert!(matches!(
            patch_properties(
                &mut t,
                Section::Reported,
                &json!({"big": big}),
                "t",
                &limits
            ),
            Err(TwinError::TooLarge { .. })
        ));
        let mut deep = json!(1);
        for _ in 0..11 {
            deep = json!({"k": deep});
        }
        assert!(matches!(
            patch_properties(&mut t, Section::Desired, &deep, "t", &limits),
            Err(TwinError::TooDeep { .. })
        ));
        assert!(matches!(
            patch_tags(&mut t, &json!({"t": "y".repeat(9000)}), &limits),
            Err(TwinError::TooLarge { .. })
        ));
        assert_eq!(t, before);
    }

    #[test]
    fn replace_and_views() {
        let limits = Limits::default();
        let mut t = twin();
        patch_tags(&mut t, &json!({"site": "lab"}), &limits).unwrap();
        assert_eq!(t["tags"]["site"], "lab");
        let n = replace(
            &mut t,
            Some(&json!({"floor": 2})),
            Some(&json!({"mode": "eco"})),
            "t9",
            &limits,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t["tags"], json!({"floor": 2}));
        assert!(t["properties"]["desired"].get("telemetryDelay").is_none());
        assert_eq!(t["properties"]["desired"]["mode"], "eco");
        assert_eq!(n, json!({"mode": "eco", "$version": 2}));
        let v = device_view(&t);
        assert!(v["desired"].get("$metadata").is_none());
        assert_eq!(v["desired"]["$version"], 2);
        assert_eq!(v["reported"]["$version"], 1);
        assert_eq!(
            desired_notification(&json!({"x": 1}), 7),
            json!({"x": 1, "$version": 7})
        );
    }
}
