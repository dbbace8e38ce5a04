"""Run plumbing: the run folder, the results record, a run's identity, and the callbacks every
run has whatever its method (finite-loss guard, RNG state, sparsity monitor)."""
