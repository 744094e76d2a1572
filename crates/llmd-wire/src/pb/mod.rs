//! The subset of Envoy's API that llmd-rs speaks: the ext_proc v3 protocol (messages, the tonic
//! client and server) and the few `envoy.config.core.v3`, `envoy.type.v3` and ext_proc filter
//! types it references, under Envoy's package paths (`pb::envoy::service::ext_proc::v3::
//! ProcessingRequest`, ...), the paths of the `envoy-types` crate this replaces. The well-known
//! types are `prost-types`', re-exported at [`google::protobuf`].
//!
//! The code is generated from `proto/` at the repository root (what is included and why:
//! `proto/README.md`) and checked in; `tests/proto_generated.rs` checks that it is up to date and
//! regenerates it (`LLMD_REGEN_PROTO=1 cargo test -p llmd-wire --test proto_generated`).

include!("_includes.rs");

/// Google's well-known types, as `prost-types` defines them.
pub mod google {
    /// `google.protobuf`: `Struct`, `Value`, `ListValue`, `Duration`, `Any`, ...
    pub mod protobuf {
        pub use ::prost_types::*;
    }
}
