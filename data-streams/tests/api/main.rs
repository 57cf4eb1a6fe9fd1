//! The supervisor's HTTP API and supervision, end to end in one process: a real
//! `Application` on free ports, the in-process `iqair-sim`, and in-process workers.

mod support;

mod bulk;
mod coverage;
mod errors;
mod persistence;
mod reports;
mod streams;
mod supervision;
mod system;
