//! cluster-init
