"""Towers: raw item features -> embeddings (tokeniser, text encoder, item and query towers)."""

from tfrec.towers.item_encoder import ItemEncoder
from tfrec.towers.query_tower import QueryTower
from tfrec.towers.text_encoder import TextEncoder
from tfrec.towers.tokenizer import TextTokenizer, build_token_vocabulary

__all__ = ["ItemEncoder", "QueryTower", "TextEncoder", "TextTokenizer", "build_token_vocabulary"]
