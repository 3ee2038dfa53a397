//! The admin API (`thriftworker.admin.v1`), generated from
//! `proto/thriftworker/admin/v1/admin.proto` at build time, shared by the
//! server and `thriftctl`.
#![forbid(unsafe_code)]

pub mod admin {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("thriftworker.admin.v1");
    }
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
