//! Generated protocol code for `embeddingmap.v1`, shared by the embedding and API services.

pub mod embeddingmap {
    pub mod v1 {
        tonic::include_proto!("embeddingmap.v1");
    }
    pub mod api {
        pub mod v1 {
            tonic::include_proto!("embeddingmap.api.v1");
        }
    }
}

pub mod codec;

pub use embeddingmap::{api::v1 as api, v1};

/// Encoded `FileDescriptorSet` of every proto in this crate, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/embeddingmap_descriptor.bin"));
