//! Fixtures shared by the end-to-end suites.
