"""Finished runs read back: results records, tables (metarun-table), plots, paired comparisons
(metarun-compare), failure reports (metarun-report) and the end-of-sweep Hydra callback."""
