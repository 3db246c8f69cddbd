from metarun.data.dataset import DataSplits, Example, FewShotDataset
from metarun.data.collate import Episode
from metarun.data.sampler import EpisodeSampler, EpisodeSpec

__all__ = ["DataSplits", "Example", "FewShotDataset", "Episode", "EpisodeSampler", "EpisodeSpec"]
