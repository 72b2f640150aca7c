//! Engine configuration: ciphersuites, wire-format policy, ratchet tolerances.

use openmls::prelude::{
    Capabilities, Ciphersuite, ExtensionType, MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    MlsGroupCreateConfig, MlsGroupJoinConfig, SenderRatchetConfiguration, WireFormatPolicy,
};

/// How the bridge sends its *handshake* messages (proposals and commits). Application messages are always
/// encrypted (PrivateMessage) by OpenMLS, whatever the policy; incoming messages are accepted in both forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandshakeWireFormat {
    /// Handshakes as PublicMessage, so the MIMI hub can follow membership (what MIMI expects). This is OpenMLS's
    /// `MIXED_PLAINTEXT_WIRE_FORMAT_POLICY`: outgoing handshakes public, incoming mixed, application messages
    /// encrypted.
    #[default]
    Public,
    /// Handshakes as PrivateMessage: OpenMLS's `MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY` (outgoing ciphertext,
    /// incoming mixed). The hub then cannot see membership changes.
    Private,
}

/// Configuration of the MLS engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Ciphersuites the bridge supports, in order of preference; new groups and KeyPackages use the first.
    /// Default: `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519` (0x0001, the mandatory one).
    pub ciphersuites: Vec<Ciphersuite>,
    /// Form of outgoing handshake messages.
    pub handshake: HandshakeWireFormat,
    /// Past epochs whose message secrets are kept, to decrypt messages that arrive after a commit.
    pub max_past_epochs: usize,
    /// How many generations a message may arrive out of order.
    pub out_of_order_tolerance: u32,
    /// How far ahead a sender's generation may jump.
    pub maximum_forward_distance: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ciphersuites: vec![Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519],
            handshake: HandshakeWireFormat::Public,
            max_past_epochs: 2,
            out_of_order_tolerance: 32,
            maximum_forward_distance: 1000,
        }
    }
}

impl EngineConfig {
    /// The ciphersuite of new groups and KeyPackages.
    pub fn ciphersuite(&self) -> Ciphersuite {
        self.ciphersuites.first().copied().unwrap_or(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519)
    }

    /// OpenMLS's wire-format policy for [`EngineConfig::handshake`].
    pub fn wire_format_policy(&self) -> WireFormatPolicy {
        match self.handshake {
            HandshakeWireFormat::Public => MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
            HandshakeWireFormat::Private => MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY,
        }
    }

    /// The capabilities of our leaves: the configured ciphersuites, and the `last_resort` KeyPackage extension.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::new(None, Some(&self.ciphersuites), Some(&[ExtensionType::LastResort]), None, None)
    }

    fn ratchet(&self) -> SenderRatchetConfiguration {
        SenderRatchetConfiguration::new(self.out_of_order_tolerance, self.maximum_forward_distance)
    }

    /// OpenMLS's configuration for creating a group.
    pub fn create_config(&self) -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(self.ciphersuite())
            .wire_format_policy(self.wire_format_policy())
            .max_past_epochs(self.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet())
            .use_ratchet_tree_extension(false)
            .capabilities(self.capabilities())
            .build()
    }

    /// OpenMLS's configuration for joining a group.
    pub fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(self.wire_format_policy())
            .max_past_epochs(self.max_past_epochs)
            .sender_ratchet_configuration(self.ratchet())
            .use_ratchet_tree_extension(false)
            .build()
    }
}
