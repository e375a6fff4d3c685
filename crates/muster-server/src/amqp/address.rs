//! Link addresses: what a client attaches to, in every spelling the SDKs use
//! (docs/wire-protocol.md §7; `../shared/spec/azure-amqp-wire.md` §1.3, §8.5).
//!
//! - relative paths (`/devices/d1/messages/events`, Node), absolute URIs
//!   (`amqps://host:5671/devices/d1/messages/events`, .NET and the Python service SDK) and DPS's
//!   `{idScope}/registrations/{registrationId}` without a leading slash;
//! - fixed segments compare case-insensitively (`deviceBound`, `serviceBound`); ids are
//!   URL-decoded and keep their case.

/// Where a link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The claims-based-security node `$cbs`.
    Cbs,
    /// A device's or module's telemetry: `/devices/{id}[/modules/{m}]/messages/events`.
    Events(Device),
    /// A device's cloud-to-device mailbox: `/devices/{id}/messages/devicebound`.
    DeviceBound(Device),
    /// The twin channel: `/devices/{id}[/modules/{m}]/twin`.
    Twin(Device),
    /// The direct-method channel: `/devices/{id}[/modules/{m}]/methods/devicebound`.
    Methods(Device),
    /// The service's cloud-to-device sender: `/messages/devicebound`.
    ServiceC2d,
    /// The service's delivery feedback: `/messages/servicebound/feedback`.
    Feedback,
    /// The Event Hubs management node: `$management` (or `{entity}/$management`).
    Management,
    /// The hub's own name for its events: `messages/events/$management`, redirected to the
    /// Event Hubs-compatible endpoint (the Azure CLI's `monitor-events` starts here).
    EventsRedirect,
    /// A partition of the built-in endpoint:
    /// `{entity}/ConsumerGroups/{group}/Partitions/{partition}`.
    Partition {
        /// The Event Hubs entity (the hub's name).
        entity: String,
        /// The consumer group.
        group: String,
        /// The partition id.
        partition: String,
    },
    /// A DPS registration: `{idScope}/registrations/{registrationId}`.
    Registration {
        /// The ID scope the device named.
        scope: String,
        /// The registration id.
        registration_id: String,
    },
}

/// A device or module named by an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    pub(crate) device_id: String,
    pub(crate) module_id: Option<String>,
}

/// An address split into the host it names (absolute URIs only) and its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// `host[:port]` of an `amqps://` URI.
    pub(crate) host: Option<String>,
    pub(crate) node: Node,
}

/// Parse a link address; `None` for anything muster does not serve.
pub(crate) fn parse(address: &str) -> Option<Address> {
    let (host, path) = match address
        .strip_prefix("amqps://")
        .or_else(|| address.strip_prefix("amqp://"))
    {
        Some(rest) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(host.to_owned()), path)
        }
        None => (None, address),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let node = node(&segments)?;
    Some(Address { host, node })
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn id(segment: &str) -> Option<String> {
    let id = muster_auth::sas::percent_decode(segment);
    (!id.is_empty()).then_some(id)
}

fn node(segments: &[&str]) -> Option<Node> {
    match segments {
        ["$cbs"] => Some(Node::Cbs),
        ["$management"] | [_, "$management"] => Some(Node::Management),
        [m, e, "$management"] if eq(m, "messages") && eq(e, "events") => Some(Node::EventsRedirect),
        [entity, c, group, p, partition]
            if eq(c, "consumergroups") && eq(p, "partitions") && !entity.is_empty() =>
        {
            Some(Node::Partition {
                entity: id(entity)?,
                group: id(group)?,
                partition: id(partition)?,
            })
        }
        [m, d] if eq(m, "messages") && eq(d, "devicebound") => Some(Node::ServiceC2d),
        [m, s, f] if eq(m, "messages") && eq(s, "servicebound") && eq(f, "feedback") => {
            Some(Node::Feedback)
        }
        [scope, r, registration_id] if eq(r, "registrations") && !scope.is_empty() => {
            Some(Node::Registration {
                scope: (*scope).to_owned(),
                registration_id: id(registration_id)?,
            })
        }
        [d, device, rest @ ..] if eq(d, "devices") => {
            let (module_id, rest) = match rest {
                [m, module, rest @ ..] if eq(m, "modules") => (Some(id(module)?), rest),
                _ => (None, rest),
            };
            let device = Device {
                device_id: id(device)?,
                module_id,
            };
            match rest {
                [m, e] if eq(m, "messages") && eq(e, "events") => Some(Node::Events(device)),
                [m, b] if eq(m, "messages") && eq(b, "devicebound") => {
                    Some(Node::DeviceBound(device))
                }
                [t] if eq(t, "twin") => Some(Node::Twin(device)),
                [m, b] if eq(m, "methods") && eq(b, "devicebound") => Some(Node::Methods(device)),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn device(id: &str, module: Option<&str>) -> Device {
        Device {
            device_id: id.into(),
            module_id: module.map(Into::into),
        }
    }

    #[test]
    fn every_sdk_spelling_routes() {
        let n = |a: &str| parse(a).map(|a| a.node);
        assert_eq!(n("$cbs"), Some(Node::Cbs));
        assert_eq!(
            n("/devices/d%231/messages/events"),
            Some(Node::Events(device("d#1", None)))
        );
        let dotnet = parse("amqps://hub.local:5671/devices/D1/messages/deviceBound").unwrap();
        assert_eq!(dotnet.host.as_deref(), Some("hub.local:5671"));
        assert_eq!(dotnet.node, Node::DeviceBound(device("D1", None)));
        assert_eq!(
            n("/devices/d1/modules/m1/messages/events"),
            Some(Node::Events(device("d1", Some("m1"))))
        );
        assert_eq!(
            n("/devices/d1/modules/m1/twin"),
            Some(Node::Twin(device("d1", Some("m1"))))
        );
        assert_eq!(
            n("/devices/d1/methods/devicebound"),
            Some(Node::Methods(device("d1", None)))
        );
        assert_eq!(
            n("amqps://hub.local/messages/devicebound"),
            Some(Node::ServiceC2d)
        );
        assert_eq!(n("/messages/serviceBound/feedback"), Some(Node::Feedback));
        assert_eq!(
            n("amqps://hub.local/messages/servicebound/feedback"),
            Some(Node::Feedback)
        );
        assert_eq!(
            n("0ne00AB/registrations/dev-1"),
            Some(Node::Registration {
                scope: "0ne00AB".into(),
                registration_id: "dev-1".into()
            })
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for a in [
            "",
            "/",
            "/devices",
            "/devices//messages/events",
            "/devices/d1/messages",
            "/devices/d1/modules//twin",
            "/devices/d1/secrets",
            "/messages/events/elsewhere",
            "/registrations/x",
        ] {
            assert_eq!(parse(a), None, "{a}");
        }
    }

    #[test]
    fn event_hubs_addresses_in_both_forms() {
        let want = Node::Partition {
            entity: "hub".into(),
            group: "$Default".into(),
            partition: "3".into(),
        };
        assert_eq!(
            parse("hub/ConsumerGroups/$Default/Partitions/3")
                .unwrap()
                .node,
            want
        );
        let absolute = parse("amqps://h.local/hub/consumergroups/$Default/partitions/3").unwrap();
        assert_eq!(absolute.node, want);
        assert_eq!(absolute.host.as_deref(), Some("h.local"));
        assert_eq!(parse("$management").unwrap().node, Node::Management);
        assert_eq!(parse("hub/$management").unwrap().node, Node::Management);
        assert!(parse("hub/ConsumerGroups/$Default/Partitions").is_none());
        assert_eq!(
            parse("amqps://h.local/messages/events/$management")
                .unwrap()
                .node,
            Node::EventsRedirect
        );
    }
}
