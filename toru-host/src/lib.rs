//! Host crash-isolated plugin processes.
#![deny(missing_docs)]
