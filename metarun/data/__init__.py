from metarun.data.dataset import DataSplits, Example, FewShotDataset
from metarun.data.sampler import Episode, EpisodeSampler, EpisodeSpec

__all__ = ["DataSplits", "Example", "FewShotDataset", "Episode", "EpisodeSampler", "EpisodeSpec"]
