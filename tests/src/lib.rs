//! Fixtures shared by the end-to-end suites.

pub mod crd_schema;
