//! Hessian 2.0 serialization (placeholder until the full implementation lands).
