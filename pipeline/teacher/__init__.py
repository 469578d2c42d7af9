"""The teacher's side: what the teacher computes for a cache batch, and the real teacher it can fetch."""
