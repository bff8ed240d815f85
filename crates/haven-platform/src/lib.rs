//! Platform primitives shared by every Haven bounded context: identifiers, time, secrets,
//! pagination, typed configuration and the audit interface. Nothing here knows about HTTP or SQL.

pub mod audit;
pub mod clock;
pub mod config;
pub mod events;
pub mod id;
pub mod page;
pub mod secret;
pub mod store;
pub mod usage;

pub use secret::Secret;
