"""Stand-ins used where a test is about the plumbing, not about training."""
