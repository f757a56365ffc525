//! End-to-end tests live in tests/it/: one test binary, a module per feature.
