"""Tasks: the losses as layers (the hybrid model's, the ranker's), and the retrieval
task's negative samplers."""

from tfrec.tasks.base import NEXT_ITEMS, PAIRS, STREAMS, Task
from tfrec.tasks.listwise import ListwiseSoftmaxTask
from tfrec.tasks.retrieval import RetrievalTask
from tfrec.tasks.samplers import (SAMPLERS, CatalogueSampler, DrawingSampler, InBatchSampler,
                                  MixedSampler, NegativeSampler, UniformSampler, build_sampler,
                                  check_sampler_name, register_sampler)
from tfrec.tasks.skipgram import SkipGramTask

__all__ = ["NEXT_ITEMS", "PAIRS", "SAMPLERS", "STREAMS", "CatalogueSampler", "DrawingSampler",
           "InBatchSampler", "ListwiseSoftmaxTask", "MixedSampler", "NegativeSampler",
           "RetrievalTask", "SkipGramTask", "Task", "UniformSampler", "build_sampler",
           "check_sampler_name", "register_sampler"]
