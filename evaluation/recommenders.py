"""What evaluation scores: anything that returns a ranked list of catalog ids per sample.

    recommender.recommend(dataset) -> list[Recommendation]      # one per row, in row order

A `Recommendation` is `item_ids` (ranked, as listed; `None` = a listed entry that matched no catalog item, so the
catalog-hit ratio still counts it) and, for recommenders that write text, `text` (the completion). Every
recommender is scored by the same code (`evaluation.evaluate.evaluate_recommender`) and written to the same
`metrics.json` / `predictions.jsonl`, so a text model, a hidden-state ranker (RecPO) and a multi-turn agent
(DeepRec) are compared on one table.

Implementations here (the methods' own live in their packages, e.g. `methods.recpo.recommender`); each registers
itself by name (`evaluation.registry`), which is how eval_test.py finds it:

* `TextRecommender(backend, catalog, require_year=None)` ("text"): greedy generation (one call per distinct
  prompt) and THE text -> ids step (`text_item_ids`: `rewards.parse` + `Catalog.match`, the matcher training
  rewards use).
* `StaticPredictions`: a predictions file or a list of completions / id lists (no model).
* `PopularityRecommender(train_dataset, catalog, n_items, as_text=False)` ("popularity"): the most popular unseen
  training items.
* `GroundtruthRecommender(catalog, n_items, as_text=False)` ("groundtruth"): the oracle (each sample's unseen
  ground truth). Both baselines can write their list as `Title (Year)` lines (`completions`), and with
  `as_text=True` they parse those lines back, like a model would.
* `TRMRecommender(retriever, n_items)` ("trm"): DeepRec's traditional recommender alone (history only).

Text and ids: a text recommendation is scored by the ids parsed from its text, ALL of them (not cut to N: the
packed protocol moves items listed past N up when earlier ones are dropped), exactly as
`evaluation.evaluate.score_completions` scores the same completions.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from evaluation.backends import GenerationBackend, clean_messages, prompt_key
from evaluation.predictions import PredictionsError, column, read_prediction_records
from evaluation.registry import BuildRequest, register_recommender

if TYPE_CHECKING:
    from retrieval.retriever import TRMRetriever


@dataclass
class Recommendation:
    """One sample's answer: ranked catalog ids (None = a listed entry outside the catalog) and, for text
    recommenders, the completion they were parsed from."""

    item_ids: list[int | None]
    text: str | None = None


@runtime_checkable
class Recommender(Protocol):
    """Returns one `Recommendation` per row of `dataset` (a `datasets.Dataset` or a list of dicts), in order.

    `require_year` (optional attribute) is recorded in metrics.json for recommenders that parse text. A recommender
    eval_test.py can build is registered (`evaluation.registry.register_recommender`) and has a
    `from_cli(request)` classmethod."""

    def recommend(self, dataset) -> list[Recommendation]: ...


# --------------------------------------------------------------------------------------------------- text
def text_item_ids(text: str, catalog, require_year: bool) -> list[int | None]:
    """THE text -> ranked ids step: the catalog id of every item line (`rewards.judge.match_texts`, the rule
    `rewards.judge.judge` and every training reward apply)."""
    return texts_item_ids([text or ""], catalog, require_year)[0]


def texts_item_ids(texts: Sequence[str], catalog, require_year: bool) -> list[list[int | None]]:
    """`text_item_ids` of each text, batched (`rewards.judge.match_texts`: each distinct line parsed once): the one
    place the seam turns a batch of completions into id lists."""
    from rewards.judge import match_texts

    return match_texts(list(texts), catalog, require_year=require_year)


def _resolve_require_year(catalog, require_year: bool | None) -> bool:
    from rewards.catalog import resolve_require_year

    return resolve_require_year(catalog, require_year)


def generate_completions(backend: GenerationBackend, dataset, prompt_column: str = "prompt",
                         item_tokens=None) -> list[str]:
    """One greedy completion per row, generating ONCE per distinct prompt and fanning the text out.

    Several samples can share a prompt (Reddit-v2: answers from several users to one request are separate
    samples); under greedy decoding they would get the same text, so it is generated once. With ``item_tokens``
    (a ``modeling.item_decoding.ItemTokens``) decoding is item-aware: each row's ``seen`` items are banned, so rows
    are shared only when prompt AND seen list are the same.
    """
    prompts = column(dataset, prompt_column)
    if prompts is None:
        raise KeyError(f"the data set has no {prompt_column!r} column")
    seen_rows = None
    if item_tokens is not None:
        seen_rows = column(dataset, "seen")
        if seen_rows is None:
            raise KeyError("item-aware decoding needs the data set's `seen` column")
    slot_of: dict[str, int] = {}
    unique: list[list[dict]] = []
    unique_seen: list[list[int]] = []
    slots: list[int] = []
    for r, prompt in enumerate(prompts):
        key = prompt_key(prompt)
        if seen_rows is not None:
            key += "\x00" + ",".join(map(str, seen_rows[r] or []))
        if key not in slot_of:
            slot_of[key] = len(unique)
            unique.append(clean_messages(prompt))
            unique_seen.append(list(seen_rows[r] or []) if seen_rows is not None else [])
        slots.append(slot_of[key])
    if not unique:
        texts = []
    elif item_tokens is not None:
        texts = backend.generate(unique, seen=unique_seen, item_tokens=item_tokens)
    else:
        texts = backend.generate(unique)
    if len(texts) != len(unique):
        raise RuntimeError(f"the backend returned {len(texts)} completions for {len(unique)} prompts")
    return [texts[s] for s in slots]



@register_recommender("text", help="generate a list and match its lines (SFT, Rank-GRPO, GRPO)", decodes=True)
class TextRecommender:
    """A generation backend (evaluation.backends) + the one matcher: greedy text, parsed into catalog ids.

    `require_year=None` takes it from the catalog (`rewards.catalog.resolve_require_year`)."""

    def __init__(self, backend: GenerationBackend, catalog, require_year: bool | None = None,
                 prompt_column: str = "prompt", decoding: str = "greedy"):
        self.backend, self.catalog, self.prompt_column = backend, catalog, prompt_column
        self.require_year = _resolve_require_year(catalog, require_year)
        self.generation_seconds: float | None = None
        self.item_tokens = None
        if decoding == "item_aware":
            tokenizer, model = getattr(backend, "tokenizer", None), getattr(backend, "model", None)
            if tokenizer is None or model is None:
                raise ValueError(f"--decoding item_aware needs the hf backend (got {type(backend).__name__})")
            from modeling.item_decoding import ItemTokens
            from preprocess.contract import catalog_items_of

            self.item_tokens = ItemTokens.from_catalog(tokenizer, catalog_items_of(catalog),
                                                       model.config.get_text_config().vocab_size)
        elif decoding != "greedy":
            raise ValueError(f"decoding must be greedy or item_aware, got {decoding!r}")

    def recommend(self, dataset) -> list[Recommendation]:
        t0 = time.time()
        texts = generate_completions(self.backend, dataset, self.prompt_column, item_tokens=self.item_tokens)
        self.generation_seconds = round(time.time() - t0, 3)
        return [Recommendation(ids, t) for ids, t in zip(texts_item_ids(texts, self.catalog, self.require_year), texts)]

    def close(self) -> None:
        """Release the backend's model (before the next checkpoint of a sweep is loaded)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "TextRecommender":
        from evaluation.backends import backend_options, make_backend, resolve_backend_name

        args = request.args
        backend_name = resolve_backend_name(args.backend)
        request.provenance.update(backend=backend_name)
        backend = make_backend(backend_name, request.model_path, **backend_options(args))
        return cls(backend, request.data.catalog, request.require_year, decoding=args.decoding)


# ------------------------------------------------------------------------------------------------- static
class StaticPredictions:
    """Fixed recommendations, one per row; `missing` lists the rows that had none (scored as an empty list).

    A row given as text is parsed with `text_item_ids` (so re-scoring a predictions file follows the current
    matcher); a row given as ids is used as is."""

    def __init__(self, recommendations: Sequence[Recommendation], missing: Sequence[int] = (),
                 path: str | None = None, require_year: bool | None = None):
        self.recommendations = list(recommendations)
        self.missing = list(missing)
        self.path = path
        self.require_year = require_year

    @classmethod
    def from_texts(cls, texts: Sequence[str], catalog, require_year: bool | None = None) -> "StaticPredictions":
        require_year = _resolve_require_year(catalog, require_year)
        texts = list(texts)
        return cls([Recommendation(ids, t) for ids, t in zip(texts_item_ids(texts, catalog, require_year), texts)],
                   require_year=require_year)

    @classmethod
    def from_file(cls, path, catalog, n_rows: int, sample_ids: Sequence[str] | None = None,
                  rows: Sequence[int] | None = None, require_year: bool | None = None) -> "StaticPredictions":
        """Read a predictions file (`evaluation.predictions.read_prediction_records`: `{"index", "completion"}` or
        `{"index", "item_ids"}` lines; `completion` wins when both are there) and keep `rows` (default: all), in
        that order. `index` is the row in the full split, so a file made on a subset scores the same rows; with
        `sample_ids` (the full split's) every line must carry the `sample_id` of its row."""
        records = read_prediction_records(path, n_rows, sample_ids=sample_ids, catalog=catalog)
        require_year = _resolve_require_year(catalog, require_year)
        rows = list(range(n_rows)) if rows is None else list(rows)
        if rows and not any(r in records for r in rows):
            raise PredictionsError(f"{path}: none of the {len(rows)} evaluated rows has a prediction (the file has "
                                   f"{len(records)} lines, for other rows: made with another --max_samples / --seed?)")
        texts = [records[r].text for r in rows if r in records and records[r].text is not None]
        parsed = iter(texts_item_ids(texts, catalog, require_year))
        recs, missing = [], []
        for position, row in enumerate(rows):
            record = records.get(row)
            if record is None:
                missing.append(position)
                recs.append(Recommendation([], ""))
            elif record.text is not None:
                recs.append(Recommendation(next(parsed), record.text))
            else:
                recs.append(Recommendation(list(record.item_ids)))
        return cls(recs, missing, str(path), require_year)

    def recommend(self, dataset) -> list[Recommendation]:
        n = len(column(dataset, "groundtruth") or [])
        if len(self.recommendations) != n:
            raise ValueError(f"{len(self.recommendations)} predictions for {n} samples"
                             + (f" ({self.path})" if self.path else ""))
        return list(self.recommendations)


# ---------------------------------------------------------------------------------------------- baselines
def popularity_ranking(train_dataset) -> list[int]:
    """Catalog ids by training popularity (most frequent first; ties by id): each train row counts its
    `target` when it has one, else every id of its `groundtruth`."""
    counts: Counter = Counter()
    targets = column(train_dataset, "target")
    groundtruths = column(train_dataset, "groundtruth") or []
    for i, gt in enumerate(groundtruths):
        target = targets[i] if targets is not None else None
        if target is not None:
            counts[target] += 1
        else:
            counts.update(gt or [])
    return [item for item, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _seen_sets(dataset) -> list[set]:
    n = len(column(dataset, "groundtruth") or [])
    seens = column(dataset, "seen")
    return [set(seens[i] or []) if seens is not None else set() for i in range(n)]


class _ListedBaseline:
    """A baseline whose ids can also be written as `Title (Year)` lines (`completions`) and, with `as_text`, scored
    from those lines parsed back: what a model writing exactly these titles would score. Subclasses set
    `catalog`, `as_text` and `require_year`."""

    def ranked_ids(self, dataset) -> list[list[int]]:
        raise NotImplementedError

    def completions(self, dataset) -> list[str]:
        """One `Title (Year)` per line, per row: the ids of `ranked_ids` in catalog display form."""
        return ["\n".join(self.catalog.display(i) for i in ids) for ids in self.ranked_ids(dataset)]

    def recommend(self, dataset) -> list[Recommendation]:
        if self.as_text:
            texts = self.completions(dataset)
            return StaticPredictions.from_texts(texts, self.catalog, self.require_year).recommend(dataset)
        return [Recommendation(list(ids)) for ids in self.ranked_ids(dataset)]


@register_recommender("popularity", source="baseline", help="the most popular training items")
class PopularityRecommender(_ListedBaseline):
    """The `n_items` most popular training items (`popularity_ranking`) not in each sample's `seen`, as catalog ids.
    `as_text=True`: written as `Title (Year)` lines (`completions`) and parsed back (eval_test.py's
    `--baseline popularity`)."""

    def __init__(self, train_dataset, catalog, n_items: int = 20, as_text: bool = False,
                 require_year: bool | None = None):
        self.train_dataset, self.catalog, self.n_items, self.as_text = train_dataset, catalog, int(n_items), as_text
        self.ranking = [i for i in popularity_ranking(train_dataset) if i in catalog]
        if not self.ranking:
            raise ValueError("the training split has no ground-truth items to rank by popularity")
        self.require_year = _resolve_require_year(catalog, require_year) if as_text else None

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "PopularityRecommender":
        if "train" not in request.data.splits:
            raise SystemExit(f"error: --baseline popularity needs a train split in {request.args.dataset_path}")
        return cls(request.data.splits["train"], request.data.catalog, request.args.n_items, as_text=True,
                   require_year=request.require_year)

    def ranked_ids(self, dataset) -> list[list[int]]:
        out = []
        for seen in _seen_sets(dataset):
            picked: list[int] = []
            for item in self.ranking:
                if item not in seen:
                    picked.append(item)
                    if len(picked) >= self.n_items:
                        break
            out.append(picked)
        return out


@register_recommender("groundtruth", source="baseline", help="oracle (sanity check)")
class GroundtruthRecommender(_ListedBaseline):
    """Oracle: each sample's ground-truth ids (distinct, in order, seen ones left out), cut to `n_items`; 1 on
    every metric by construction. `as_text=True`: written as `Title (Year)` lines (`completions`) and parsed back,
    a check of the whole text chain (parse + match + metrics) that a model's answer goes through (eval_test.py's
    `--baseline groundtruth`)."""

    def __init__(self, catalog, n_items: int = 20, as_text: bool = False, require_year: bool | None = None):
        self.catalog, self.n_items, self.as_text = catalog, int(n_items), as_text
        self.require_year = _resolve_require_year(catalog, require_year) if as_text else None

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "GroundtruthRecommender":
        return cls(request.data.catalog, request.args.n_items, as_text=True, require_year=request.require_year)

    def ranked_ids(self, dataset) -> list[list[int]]:
        groundtruths = column(dataset, "groundtruth") or []
        return [[g for g in dict.fromkeys(gt or []) if g not in seen][: self.n_items]
                for gt, seen in zip(groundtruths, _seen_sets(dataset))]


# ---------------------------------------------------------------------------------------------------- TRM
@register_recommender("trm", help="the traditional recommender alone (--model_path = a train_trm.py folder)",
                      hf_model=False)
class TRMRecommender:
    """DeepRec's TRM alone (`retrieval.retriever.TRMRetriever`), history only (no preference text): each row's top
    `n_items` catalog ids for its `history`, with the history and the row's `seen` excluded. DeepRec's "TRM alone"
    baseline."""

    require_year = None  # ids, not text: nothing is parsed

    def __init__(self, retriever: "TRMRetriever", n_items: int = 20, batch_size: int = 512):
        self.retriever, self.n_items, self.batch_size = retriever, int(n_items), int(batch_size)

    @classmethod
    def from_pretrained(cls, folder, n_items: int = 20, device: str = "cpu") -> "TRMRecommender":
        from retrieval.retriever import TRMRetriever

        return cls(TRMRetriever.load(folder, device=device), n_items=n_items)

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "TRMRecommender":
        request.provenance.update(backend=None, decoding=None, recommender="trm")
        return cls.from_pretrained(request.model_path, n_items=request.args.n_items)

    def recommend(self, dataset) -> list[Recommendation]:
        from retrieval.training import retrieve_split

        rows = dataset if hasattr(dataset, "column_names") else _history_columns(dataset)
        id_lists = retrieve_split(self.retriever, rows, k=self.n_items, batch_size=self.batch_size)
        return [Recommendation([int(i) for i in ids]) for ids in id_lists]


def _history_columns(rows) -> dict:
    """A list of record dicts -> the two columns retrieval reads."""
    rows = list(rows)
    return {"history": [r.get("history") or [] for r in rows], "seen": [r.get("seen") or [] for r in rows]}
