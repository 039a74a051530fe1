//! The Toru dashboard's static files, embedded in the binary.
//!
//! The web UI arrives with its own issue; until then this crate only compiles.
#![deny(missing_docs)]
