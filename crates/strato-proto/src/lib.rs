//! Strato's gRPC contract, generated from `proto/strato/v1` at build time,
//! and the conversions between wire types and `strato-core` types.

pub mod client;
pub mod convert;

/// `strato.v1`: every message and service of the contract.
#[allow(clippy::all, clippy::pedantic)] // reason: generated code
pub mod v1 {
    tonic::include_proto!("strato.v1");

    impl std::fmt::Debug for RegistryLogin {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RegistryLogin")
                .field("server", &self.server)
                .field("username", &self.username)
                .field("password", &"(redacted)")
                .field("identity", &self.identity)
                .finish()
        }
    }
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/strato_descriptor.bin"));
