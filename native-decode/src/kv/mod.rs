//! The paged KV cache: physical storage and the block manager that hands out blocks.

pub mod block_manager;
pub mod store;
