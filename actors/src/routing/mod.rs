//! Routing: the consistent-hash ring, the router that owns it, and the shards it points at.
//! A user's key hashes to one shard; the shard owns that user's conversation actors.

pub mod ring;
pub mod router;
pub mod shard;
