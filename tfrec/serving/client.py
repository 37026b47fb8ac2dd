"""A client for tfrec models behind TF Serving's gRPC API (tfrec serve or TF Serving).

Written as a TF Serving user would write it: `PredictionServiceStub`,
`PredictRequest`, `tf.make_tensor_proto`, a timeout.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfrec.config import RecommendSettings
from tfrec.utils import id_list, top_k_count, utf8_bytes


class RecommenderClient:
    """Calls the signatures of an exported tfrec model.

    Args:
      target: "host:port" of the gRPC endpoint.
      model: the model name in the server's models.config.
      timeout: seconds per call.
      version: ask for this version instead of the newest.
      version_label: ask for the version this label names (the model config's
        `version_labels`, e.g. "stable"); not with `version`.
    """

    def __init__(self, target: str, model: str, timeout: float = RecommendSettings.timeout,
                 version: int | None = None, version_label: str | None = None):
        if version is not None and version_label is not None:
            raise ValueError("give version or version_label, not both (a request names one)")
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model
        self.timeout = timeout
        self.version = version
        self.version_label = version_label

    def _predict(self, signature: str, inputs: dict) -> dict:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        elif self.version_label is not None:
            request.model_spec.version_label = self.version_label
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self.stub.Predict(request, timeout=self.timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def recommend(self, sessions: list[list[str]], k: int = RecommendSettings.k
                  ) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) for each session, its own items excluded."""
        return self.recommend_with_fallback(sessions, k)[0]

    def recommend_with_fallback(self, sessions: list[list[str]], k: int = RecommendSettings.k):
        """(top-k (item id, score) per session, per session: were they the popular-items
        fallback, because no item of the session was known?)."""
        if isinstance(sessions, (str, bytes)) or not len(sessions):
            raise ValueError("sessions must be a non-empty list of sessions, each a list of "
                             f"item ids (e.g. [['85123A', '71053']]), got {sessions!r:.80}")
        for s in sessions:
            if isinstance(s, (str, bytes)):
                raise ValueError(f"each session must be a list of item ids, got the string "
                                 f"{s!r:.80} (a session of one item is [{s!r:.40}])")
        sessions = [id_list(f"sessions[{j}]", s, allow_empty=True)
                    for j, s in enumerate(sessions)]
        width = max(len(s) for s in sessions)
        batch = utf8_bytes(np.array([list(s) + [""] * (width - len(s)) for s in sessions],
                                    dtype=object))
        out = self._predict("serving_default", {"item_ids": batch, "k": np.int32(top_k_count(k))})
        results = [[(i.decode(), float(sc)) for i, sc in zip(ids, scores) if i]
                   for ids, scores in zip(out["item_ids"], out["scores"])]
        fallback = out.get("fallback", np.zeros(len(sessions), dtype=bool))
        return results, [bool(f) for f in fallback]

    def recommend_for_user(self, user_ids: list[str], k: int = RecommendSettings.k
                           ) -> list[tuple[list[tuple[str, float]], bool]]:
        """Per user: (top-k (item id, score) from the user's cached embedding, its own
        items excluded; is the user known?). An unknown or empty user id gets the most
        popular items (scored by their share of the training events) and known False."""
        out = self._predict("recommend_for_user",
                            {"user_ids": utf8_bytes(id_list("user_ids", user_ids)),
                             "k": np.int32(top_k_count(k))})
        return [([(i.decode(), float(sc)) for i, sc in zip(ids, scores) if i], bool(known))
                for ids, scores, known in zip(out["item_ids"], out["scores"], out["known"])]

    def similar_items(self, item_ids: list[str], k: int = RecommendSettings.k):
        """Per item: its top-k most similar items ((item id, score), itself excluded), or
        None for an id not in the served catalogue (unknown to the export, or dropped
        from it: `known_items` still says True for a dropped item, which a session may
        hold, but it is no longer offered nor a starting point)."""
        item_ids = id_list("item_ids", item_ids)
        out = self._predict("similar_items", {"item_ids": utf8_bytes(item_ids),
                                              "k": np.int32(top_k_count(k))})
        return [[(i.decode(), float(sc)) for i, sc in zip(ids, scores)] if known else None
                for ids, scores, known in zip(out["item_ids"], out["scores"], out["known"])]

    def embed_items(self, item_ids: list[str], texts: list[str] | None = None) -> np.ndarray:
        """[n, d] the item embeddings the export serves: a known id's own; an unknown
        id's from its text in `texts` (one per id; "" for none)."""
        item_ids = id_list("item_ids", item_ids)
        texts = [""] * len(item_ids) if texts is None else id_list("texts", texts, strip=False)
        if len(texts) != len(item_ids):
            raise ValueError(f"{len(texts)} texts for {len(item_ids)} item_ids: give one "
                             "text per id")
        out = self._predict("embed_items", {"item_ids": utf8_bytes(item_ids),
                                            "texts": utf8_bytes(texts)})
        return out["embeddings"]

    def known_items(self, item_ids: list[str]) -> list[bool]:
        """Whether each id is an item the model knows (by its id; a query leaves the
        others out)."""
        item_ids = id_list("item_ids", item_ids)
        out = self._predict("embed_items", {"item_ids": utf8_bytes(item_ids),
                                            "texts": utf8_bytes([""] * len(item_ids))})
        return [bool(k) for k in out["known"]]

    def item_texts(self, item_ids: list[str]) -> list[str]:
        """The catalogue text of each item ("" for an unknown id)."""
        item_ids = id_list("item_ids", item_ids)
        out = self._predict("item_texts", {"item_ids": utf8_bytes(item_ids)})
        return [t.decode("utf-8") for t in out["texts"]]

    def close(self) -> None:
        self.channel.close()
