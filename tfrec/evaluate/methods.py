"""The methods `tfrec evaluate` compares, their names and labels."""

from __future__ import annotations

MODEL = "tfrec"
BASELINES = ("popularity", "item2vec_gensim", "tfidf_text", "ease", "itemknn",
             "tfrec_text_off", "tfrec_id_off")
LABELS = {
    "popularity": "popularity",
    "item2vec_gensim": "item2vec (gensim)",
    "tfidf_text": "text only (TF-IDF)",
    "ease": "EASE",
    "itemknn": "ItemKNN (cosine)",
    "tfrec_text_off": "tfrec, text tower off",
    "tfrec_id_off": "tfrec, id tower off",
    MODEL: "tfrec (full model)",
}
TEXT_ONLY = ("tfidf_text", "tfrec_id_off")
# The HR@K curves (and the largest k asked for) go up to this K.
MAX_K = 50
