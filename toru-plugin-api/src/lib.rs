//! The Toru plugin protocol, its frame codec, and the SDK for writing plugins in Rust.
//!
//! A Toru plugin is an executable that the host starts as its own process. It prints its
//! metadata when run with `--metadata`; otherwise it listens on the Unix socket named by
//! `TORU_SOCKET_PATH`, accepts the host's connection and exchanges length-prefixed JSON messages
//! with it (see `docs/protocol.md`).
//!
//! - [`protocol`]: the messages, as plain serde types with no I/O.
//! - [`codec`]: the frame codec, a tokio-util `Decoder`/`Encoder`.
//! - [`ToruPlugin`] and [`run`]: the SDK. Implement the trait, call `run` from `main`.
//!
//! Unix only: plugins talk to their host over Unix domain sockets.
#![deny(missing_docs)]

pub mod codec;
pub mod protocol;

pub use codec::{CodecError, Frame, JsonCodec};
pub use protocol::{Message, Payload, PluginMetadata};
