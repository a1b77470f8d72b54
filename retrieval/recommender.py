"""The TRM alone as a recommender for the evaluation seam (`evaluation.recommenders.Recommender`).

History only (no preference text): each row's top `n_items` catalog ids for its `history`, with the history and
the row's `seen` excluded. It is DeepRec's "TRM alone" baseline and what `eval_test.py` can score like any
other recommender.
"""
from __future__ import annotations

from retrieval.retriever import TRMRetriever
from retrieval.training import retrieve_split


class TRMRecommender:
    """`recommend(dataset) -> list[Recommendation]` (one per row, in order) from a `TRMRetriever`."""

    require_year = None  # ids, not text: nothing is parsed

    def __init__(self, retriever: TRMRetriever, n_items: int = 20, batch_size: int = 512):
        self.retriever, self.n_items, self.batch_size = retriever, int(n_items), int(batch_size)

    @classmethod
    def from_pretrained(cls, folder, n_items: int = 20, device: str = "cpu") -> "TRMRecommender":
        return cls(TRMRetriever.load(folder, device=device), n_items=n_items)

    def recommend(self, dataset) -> list:
        # imported here: evaluation/ is a sibling package, needed only for its result type
        from evaluation.recommenders import Recommendation

        rows = dataset if hasattr(dataset, "column_names") else _as_columns(dataset)
        id_lists = retrieve_split(self.retriever, rows, k=self.n_items, batch_size=self.batch_size)
        return [Recommendation([int(i) for i in ids]) for ids in id_lists]


def _as_columns(rows) -> dict:
    """A list of record dicts -> the two columns retrieval reads."""
    rows = list(rows)
    return {"history": [r.get("history") or [] for r in rows], "seen": [r.get("seen") or [] for r in rows]}
