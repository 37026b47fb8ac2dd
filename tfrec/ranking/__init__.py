"""The ranking stage: the item-item table, candidates from both sources and the learned ranker."""
