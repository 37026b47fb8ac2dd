"""Sessions built from item index lists, for the item-item tests."""

import numpy as np

from tfrec.data.sessions import Sessions


def sessions_of(lists):
    """A `Sessions` holding these item index lists (one session each)."""
    lengths = [len(s) for s in lists]
    n, events = len(lists), sum(lengths)
    return Sessions(items=np.asarray([i for s in lists for i in s], np.int32),
                    weights=np.ones(events, np.float32), is_conversion=np.zeros(events, bool),
                    row_splits=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    converted=np.full(n, -1, np.int32), converted_weight=np.zeros(n, np.float32),
                    user=np.zeros(n, np.int32), start_time=np.arange(n, dtype=np.int64),
                    user_ids=np.array(["u"], dtype=object))
