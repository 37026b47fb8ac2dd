"""The one place that turns the model settings (`ModelConfig`) into layers.

`build_model` builds the towers from their own arguments, the tasks of
`model.objective` and the negative sampler of `model.negatives` (from the
sampler registry, `tfrec.tasks.samplers`), and wires them into a
`HybridModel`. `required_streams` tells data preparation, before the model
exists, which training streams the tasks will read.
"""

from __future__ import annotations

import numpy as np

from tfrec.config import ModelConfig
from tfrec.data.vocab import ItemVocabulary
from tfrec.errors import InputError
from tfrec.models.hybrid import HybridModel
from tfrec.tasks.base import Task
from tfrec.tasks.retrieval import RetrievalTask
from tfrec.tasks.samplers import build_sampler
from tfrec.tasks.skipgram import SkipGramTask
from tfrec.towers.item_encoder import ItemEncoder
from tfrec.towers.query_tower import QueryTower
from tfrec.towers.text_encoder import TextEncoder
from tfrec.towers.tokenizer import CharNgramHasher, TextTokenizer, build_token_vocabulary

# The tasks of each `model.objective`, in the order the model sums them (the
# first task's stream sets the length of an epoch).
OBJECTIVE_TASKS: dict[str, tuple[type[Task], ...]] = {
    "skipgram": (SkipGramTask,),
    "retrieval": (RetrievalTask,),
    "both": (SkipGramTask, RetrievalTask),
}


def required_streams(config: ModelConfig) -> tuple[str, ...]:
    """The training streams ("pairs", "next_items") the tasks of `config` read, in order."""
    return tuple(dict.fromkeys(task.stream for task in OBJECTIVE_TASKS[config.objective]))


def build_tasks(config: ModelConfig, seed: int | None = None) -> list[Task]:
    """The weighted tasks of `model.objective`, the retrieval one with the
    sampler of `model.negatives`.

    Raises:
      InputError: `model.negatives` names no registered sampler.
    """
    # Its own seed: the item encoders draw with seed and seed + 1.
    sampler = build_sampler(config.negatives, num_sampled=config.num_sampled,
                            seed=None if seed is None else seed + 2)
    tasks: list[Task] = []
    for cls in OBJECTIVE_TASKS[config.objective]:
        if cls is SkipGramTask:
            tasks.append(SkipGramTask(temperature=config.temperature, weight=1.0,
                                      name="skipgram_task"))
        else:
            # Alone, the retrieval loss is the loss; beside skip-gram it is weighed.
            weight = config.retrieval_weight if config.objective == "both" else 1.0
            tasks.append(RetrievalTask(sampler, temperature=config.temperature, weight=weight,
                                       name="retrieval_task"))
    return tasks


def build_item_encoder(config: ModelConfig, num_items: int, num_id_items: int,
                       text_vocabulary: list[str] | None = None, seed: int | None = None,
                       name: str = "item_encoder") -> ItemEncoder:
    """The item encoder of `config` (its text sub-layers built from `config.text`)."""
    text = config.text
    tokenizer = hasher = text_encoder = None
    if config.use_text:
        _, text_dim = ItemEncoder.part_widths(config.embedding_dim, config.use_ids,
                                              config.use_text, config.fusion, config.text_share)
        tokenizer = TextTokenizer(list(text_vocabulary or []), text.sequence_length,
                                  rules=text.tokenizer_rules,
                                  name="tokenizer")
        if text.char_ngrams:
            hasher = CharNgramHasher(text.char_ngrams, text.ngram_buckets, text.max_ngrams,
                                     name="ngram_hasher")
        text_encoder = TextEncoder(
            tokenizer.vocabulary_size, text_dim, token_dim=text.token_dim,
            filters=text.filters, widths=text.widths, mean_tokens=text.mean_tokens,
            ngram_buckets=text.ngram_buckets if text.char_ngrams else None,
            seed=seed, name="text_encoder")
    return ItemEncoder(num_items, num_id_items, embedding_dim=config.embedding_dim,
                       use_ids=config.use_ids, use_text=config.use_text, fusion=config.fusion,
                       text_share=config.text_share, id_dropout=config.id_dropout,
                       text_gate=config.text_gate, normalize=config.normalize,
                       tokenizer=tokenizer, text_encoder=text_encoder, hasher=hasher,
                       seed=seed, name=name)


def build_query_tower(config: ModelConfig, item_encoder: ItemEncoder, seed: int | None = None,
                      name: str = "query_tower") -> QueryTower:
    """The query tower of `config`, pooling `item_encoder`'s embeddings."""
    return QueryTower(item_encoder, history_length=config.history_length,
                      pooling=config.pooling, recency_decay=config.recency_decay,
                      history_dropout=config.history_dropout,
                      query_layers=config.query_layers, seed=seed, name=name)


def build_model(config: ModelConfig, vocab: ItemVocabulary, seed: int | None = None,
                text_vocabulary: list[str] | None = None) -> HybridModel:
    """Builds the hybrid model for a catalogue.

    Items seen in training (count > 0) get an id embedding; the vocabulary
    orders them first, so they are indices 1..num_warm. The token vocabulary
    is learned from all catalogue texts (cold items included: their text is
    known, only their behaviour is not), unless `text_vocabulary` is given
    (a saved run's, to rebuild its model). `seed` seeds the initialisation
    and every draw (`train.seed` in a run; None: unseeded).

    Raises:
      InputError: `model.negatives` names no registered sampler.
    """
    tasks = build_tasks(config, seed)
    num_warm = int((vocab.counts[1:] > 0).sum())
    if not np.all(vocab.counts[1:num_warm + 1] > 0):
        raise ValueError("vocabulary is not ordered warm items first")
    text = config.text
    if text_vocabulary is not None:
        tokens = list(text_vocabulary)
    else:
        tokens = (build_token_vocabulary(vocab.text[1:], text.max_tokens, text.min_token_count,
                                         text.tokenizer_rules)
                  if config.use_text else [])
        if config.use_text and not tokens:
            with_text = int(sum(1 for t in vocab.text[1:] if isinstance(t, str) and t.strip()))
            raise InputError(
                f"no item text gives a word the text tower can learn ({vocab.size - 1:,} items, "
                f"{with_text:,} with text; a word counts once it is in "
                f"model.text.min_token_count ({text.min_token_count}) items' texts, and "
                "punctuation or emoji alone are no words): give texts with words, lower "
                "model.text.min_token_count, or set model.use_text: false", key="model.use_text")

    def make_item_encoder(name, seed=seed):
        encoder = build_item_encoder(config, vocab.size, num_warm + 1, tokens, seed, name)
        encoder.set_item_texts(vocab.text)
        return encoder

    encoder = make_item_encoder("item_encoder")
    query_items = (encoder if config.query_items == "shared"
                   else make_item_encoder("query_items", None if seed is None else seed + 1))
    tower = build_query_tower(config, query_items, seed=seed)
    model = HybridModel(encoder, tower, tasks, text_alignment=config.text_alignment)
    # Every variable made now: a checkpoint restores at once (`load_run`'s model saves and
    # reads its weights before any call) and the run's code may read any table.
    model.build_variables()
    return model
