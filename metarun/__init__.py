"""metarun: an experiment runner for few-shot, meta-learning and transfer learning in NLP."""

__version__ = "0.1.0"
