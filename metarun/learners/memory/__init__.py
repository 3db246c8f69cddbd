"""Memory learners: the support set is read as a sequence (SNAIL) or written to an external memory
(memory-augmented networks)."""
