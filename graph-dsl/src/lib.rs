//! graph-dsl
