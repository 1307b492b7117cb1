//! graph-codegen
