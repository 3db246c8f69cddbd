"""metarun: an experiment runner for few-shot, meta-learning and transfer learning in NLP."""

from metarun import resolvers  # noqa: F401  (registers ${pid:}, ${safe_dirname:}, ${stem:})

__version__ = "0.1.0"
