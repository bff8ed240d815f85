//! End-to-end tests: the real `haven` binary, over HTTPS, on SQLite and on PostgreSQL.

mod common;

mod accounts;
mod audit;
mod bad_input;
mod bounces;
mod cli;
mod cluster;
mod encryption;
mod isolation;
mod logs;
mod messages;
mod oauth;
mod peers;
mod surface;
mod usage;
mod verify;
mod webhooks;
mod workflows;
