"""The data layer: events -> sessions -> skip-gram pairs -> tf.data batches."""

from tfrec.data.events import Rejections, read_events, read_items
from tfrec.data.pipeline import PairPipeline
from tfrec.data.report import PreparedData, data_report, format_report, prepare
from tfrec.data.sessions import Sessions, sessionize
from tfrec.data.skipgram import keep_probabilities, skipgram_pairs
from tfrec.data.vocab import ItemVocabulary, build_vocabulary

__all__ = [
    "ItemVocabulary", "PairPipeline", "PreparedData", "Rejections", "Sessions",
    "build_vocabulary", "data_report", "format_report", "keep_probabilities", "prepare",
    "read_events", "read_items", "sessionize", "skipgram_pairs",
]
