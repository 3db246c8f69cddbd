"""Where a run's numbers go while it runs: metrics.jsonl and TensorBoard, and experiment trackers
(MLflow, W&B)."""
