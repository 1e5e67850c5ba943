//! The atrest appliance: Storage > Encryption (KMIP settings, Save and Test, Encrypt, unlock
//! at boot), its web admin and its REST API.
//!
//! [`app`] builds the whole router from an [`AppState`]; [`server::serve`] runs it over HTTPS.
//! The workflow itself is the I/O-free state machine in [`workflow`]; see docs/workflow.md.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![recursion_limit = "256"]

pub mod api;
pub mod auth;
pub mod content;
pub mod content_api;
pub mod embedded;
pub mod error;
pub mod files;
pub mod hostspace;
pub mod https;
pub mod keylife;
pub mod kmip_config;
pub mod kmip_test;
pub mod known;
pub mod limits;
pub mod login;
pub mod metrics;
pub mod openapi;
pub mod pages;
pub mod readonly;
pub mod recovery;
pub mod server;
pub mod state;
pub mod status;
pub mod syslog;
pub mod workflow;

pub use api::app;
pub use error::{ApiError, ApiResult};
pub use state::{AppConfig, AppState, VolumeBackend};

pub use atrest_keys::now_rfc3339;
