//! Azure DPS service JSON shapes (api-version 2021-10-01), as the Node
//! `azure-iot-provisioning-service` SDK sends and reads them. Unknown fields are ignored on
//! input; absent optional fields are omitted on output.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `provisioningStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Devices may register.
    #[default]
    Enabled,
    /// Devices are refused.
    Disabled,
}

/// `allocationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Evenly weighted distribution by a hash of the registration id.
    #[default]
    Hashed,
    /// Lowest latency; on one site every hub is equally near, so this behaves as hashed.
    GeoLatency,
    /// The single hub listed.
    Static,
    /// A webhook decides.
    Custom,
}

/// `reprovisionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-run allocation when a known device registers again.
    pub update_hub_assignment: bool,
    /// Carry the twin over when the hub changes (else reset to the initial twin).
    pub migrate_device_data: bool,
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// `capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// `attestation.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttestationType {
    /// X.509 certificates.
    X509,
    /// Symmetric keys.
    SymmetricKey,
    /// TPM endorsement keys (not supported).
    Tpm,
    /// None.
    None,
}

/// `attestation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// Which mechanism.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// X.509 details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
    /// Symmetric key details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
    /// TPM details (kept as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
}

/// `attestation.x509`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// Individual enrollments: the device's own certificate(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// Groups: an intermediate or root certificate carried in the enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
    /// Groups: names of verified CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_references: Option<X509CaReferences>,
}

/// Primary and secondary certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// Primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

/// A certificate as sent (`certificate`) and as described back (`info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateWithInfo {
    /// PEM or base64 DER (input; stored; not echoed back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Description (output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<X509CertificateInfo>,
}

/// `info` of an X.509 certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// Subject.
    pub subject_name: String,
    /// SHA-1 thumbprint.
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint.
    pub sha256_thumbprint: String,
    /// Issuer.
    pub issuer_name: String,
    /// Start of validity.
    pub not_before_utc: String,
    /// End of validity.
    pub not_after_utc: String,
    /// Serial number (hex).
    pub serial_number: String,
    /// X.509 version (3).
    pub version: u32,
}

/// `caReferences`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509CaReferences {
    /// Primary CA certificate name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Secondary CA certificate name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<String>,
}

/// `attestation.symmetricKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Primary key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Secondary key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

/// `initialTwin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwin {
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// `{"desired": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<InitialTwinProperties>,
}

/// `initialTwin.properties`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwinProperties {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
}

/// An enrollment group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// Id.
    #[serde(default)]
    pub enrollment_group_id: String,
    /// How devices prove who they are.
    pub attestation: Attestation,
    /// Capabilities given to devices.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Legacy single hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// Twin written when a device is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Version tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,
    /// What happens when a known device registers again.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    /// Created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// How a hub is chosen.
    #[serde(default)]
    pub allocation_policy: AllocationPolicy,
    /// Hubs (host names) devices may be assigned to; empty = all.
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    /// Webhook for custom allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<Value>,
}

/// An individual enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// Registration id.
    #[serde(default)]
    pub registration_id: String,
    /// Device id to create (default: the registration id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// How the device proves who it is.
    pub attestation: Attestation,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Legacy single hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// Initial twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Version tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled.
    #[serde(default)]
    pub provisioning_status: ProvisioningStatus,
    /// Re-provisioning.
    #[serde(default)]
    pub reprovision_policy: ReprovisionPolicy,
    /// Created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Last updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Allocation.
    #[serde(default)]
    pub allocation_policy: AllocationPolicy,
    /// Hubs.
    #[serde(default)]
    pub iot_hubs: Vec<String>,
    /// Webhook for custom allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<Value>,
    /// Read-only: the registration state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<Value>,
    /// Free-form device information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<Value>,
}

/// A registration record (`DeviceRegistrationState`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    /// Registration id.
    pub registration_id: String,
    /// First registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The hub's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `assigned`, `failed`, ...
    pub status: String,
    /// `initialAssignment`, `deviceDataMigrated`, `deviceDataReset`, `reprovisionedToInitialAssignment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Failure code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Failure text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Version tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The device's registration payload, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// X.509 attestation details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Value>,
    /// Symmetric key attestation details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<Value>,
}
