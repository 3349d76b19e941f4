//! vae-serve: train variational autoencoders in a background job queue and serve them.
//!
//! Layers, bottom up: `data` → `models` → `training` → `jobs` and `inference` → `api` (HTTP), with
//! `storage` (SQLite or PostgreSQL) beside them and `server` wiring them together.

pub mod api;
pub mod config;
pub mod data;
pub mod grpc;
pub mod inference;
pub mod jobs;
pub mod models;
pub mod oip;
pub mod render;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod training;
