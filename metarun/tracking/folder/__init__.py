"""The run folder as a unit of work: its claim and lock, atomic checkpoints, the per-episode test
records and the run's environment (run_info)."""
