//! The portal's page frame and small shared pieces of markup.

use maud::{DOCTYPE, Markup, html};

use super::Session;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Home,
    DpsOverview,
    Certificates,
    Enrollments,
    HubOverview,
    Devices,
    Telemetry,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="no-referrer";
            title { (title) " · muster" }
            // No favicon request (it would reach the REST API's answer for unknown paths).
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/portal/assets/portal.css";
            script src="/portal/assets/portal.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, errors).
#[allow(
    clippy::needless_pass_by_value,
    reason = "callers build the body for this call"
)]
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

fn link(href: &str, label: &str, current: bool) -> Markup {
    html! {
        li {
            @if current { a href=(href) aria-current="page" { (label) } }
            @else { a href=(href) { (label) } }
        }
    }
}

/// A page with the navigation and the sign-out button.
#[allow(
    clippy::needless_pass_by_value,
    reason = "callers build the body for this call"
)]
pub(crate) fn page(title: &str, session: &Session, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a class="skip" href="#main" { "Skip to content" }
                header class="top" {
                    a class="brand" href="/portal/" { "muster" }
                    nav aria-label="Main" {
                        @if session.rights.dps {
                            span class="group" { "Provisioning" }
                            ul {
                                (link("/portal/dps", "Overview", nav == Nav::DpsOverview))
                                (link("/portal/certificates", "Certificates", nav == Nav::Certificates))
                                (link("/portal/enrollments", "Manage enrollments", nav == Nav::Enrollments))
                            }
                        }
                        @if session.rights.hub_read {
                            span class="group" { "IoT hub" }
                            ul {
                                (link("/portal/hub", "Overview", nav == Nav::HubOverview))
                                (link("/portal/devices", "Devices", nav == Nav::Devices))
                                (link("/portal/telemetry", "Telemetry", nav == Nav::Telemetry))
                            }
                        }
                    }
                    form method="post" action="/portal/signout" class="signout" {
                        (csrf(session))
                        span class="who" { "Signed in as " strong { (session.principal) } }
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
pub(crate) fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// An inline error.
pub(crate) fn alert(message: &str) -> Markup {
    html! { div class="alert" role="alert" { (message) } }
}

/// An inline confirmation.
pub(crate) fn notice(message: &str) -> Markup {
    html! { div class="notice" role="status" { (message) } }
}

/// A form with one button that POSTs (delete, disable, generate…).
pub(crate) fn button_form(
    session: &Session,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form method="post" action=(action) class="inline" data-confirm=[confirm] {
            (csrf(session))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// Pretty JSON text.
pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A fixed confirmation message for a `?done=` code (never echoes the query).
pub(crate) fn done_message(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "uploaded" => "Certificate uploaded.",
        "verified" => "Certificate verified.",
        "code" => "Verification code generated.",
        "deleted" => "Deleted.",
        "saved" => "Saved.",
        "sent" => "Message sent to the device.",
        "created" => "Device created.",
        "enabled" => "Device enabled.",
        "disabled" => "Device disabled.",
        _ => return None,
    })
}
