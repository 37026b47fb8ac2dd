"""The data layer: events -> sessions -> skip-gram pairs -> tf.data batches.

The data report (`tfrec.data.report`) and the dataset layouts (`tfrec.datasets`) sit
on top of it and are imported from their own modules.
"""

from tfrec.data.events import Rejections, read_events, read_items
from tfrec.data.pipeline import PairPipeline
from tfrec.data.sessions import Sessions, sessionize
from tfrec.data.skipgram import keep_probabilities, skipgram_pairs
from tfrec.data.vocab import ItemVocabulary, build_vocabulary

__all__ = [
    "ItemVocabulary", "PairPipeline", "Rejections", "Sessions", "build_vocabulary",
    "keep_probabilities", "read_events", "read_items", "sessionize", "skipgram_pairs",
]
