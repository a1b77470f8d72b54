"""Batched, in-process retrieval with a TRM (no HTTP server), and its checkpoint folder.

    retriever = TRMRetriever.build(catalog_items, encoder)                # untrained, item texts encoded once
    ids, scores = retriever.retrieve(histories, preference_texts, k=20)   # (B, k) catalog ids, (B, k) cosines
    retriever.save(folder); TRMRetriever.load(folder, encoder=encoder)

Histories are lists of catalog ids, oldest first (the data contract's `history`); only the last `max_history`
feed the encoder, but EVERY listed history item is excluded from the results (score -inf), as are the
per-sample `exclude` ids (e.g. the data contract's `seen`) and catalog entries that merely alias another item
(`duplicate_of` in catalog.json: they can never be a target). An empty or None preference text means "no
preference" (no MoE term), not the embedding of the empty string.

Checkpoint folder: `model.safetensors` (weights and the frozen item-text embeddings, so the folder is usable
without re-encoding the catalog) + `trm_config.json` (sizes, the catalog ids in row order, the text encoder's
name). Nothing is pickled.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from retrieval.model import TRM, TRMConfig
from retrieval.text import check_embeddings, encode_texts, encoder_name, item_text

CONFIG_FILE = "trm_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "recrl-trm"
FORMAT_VERSION = 1


class TRMRetriever:
    """A TRM plus the catalog id <-> row map, the never-retrievable rows and (optionally) a text encoder."""

    def __init__(self, model: TRM, catalog_ids: Sequence[int], encoder=None, excluded_ids: Sequence[int] = (),
                 text_encoder_name: str | None = None):
        catalog_ids = [int(i) for i in catalog_ids]
        if len(catalog_ids) != model.config.num_items:
            raise ValueError(f"{len(catalog_ids)} catalog ids for a TRM of {model.config.num_items} items")
        if len(set(catalog_ids)) != len(catalog_ids):
            raise ValueError("catalog ids are not unique")
        self.model = model
        self.catalog_ids = np.asarray(catalog_ids, dtype=np.int64)
        self.row_of = {iid: row + 1 for row, iid in enumerate(catalog_ids)}  # row 0 = padding
        unknown = [i for i in excluded_ids if int(i) not in self.row_of]
        if unknown:
            raise ValueError(f"excluded ids not in the catalog: {unknown[:10]}")
        self.excluded_ids = sorted({int(i) for i in excluded_ids})
        self.encoder = encoder
        self.text_encoder_name = text_encoder_name or (encoder_name(encoder) if encoder is not None else None)
        self._item_matrix: tuple[torch.Tensor, torch.Tensor] | None = None
        self._base_mask = torch.zeros(model.config.num_items + 1, dtype=torch.bool)
        self._base_mask[0] = True
        for iid in self.excluded_ids:
            self._base_mask[self.row_of[iid]] = True

    # ------------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, catalog_items: Sequence[Mapping], encoder, cache_dir=None, seed: int = 0,
              **config) -> "TRMRetriever":
        """A fresh TRM over `catalog_items` (dicts with id/title/year[/genres/text/duplicate_of]); the item texts
        are encoded once by `encoder` (cached under `cache_dir`). `config`: TRMConfig fields."""
        ids = [int(it["id"]) for it in catalog_items]
        texts = [item_text(it) for it in catalog_items]
        embeddings = encode_texts(encoder, texts, cache_dir)
        item_text_matrix = torch.zeros(len(ids) + 1, embeddings.shape[1])
        item_text_matrix[1:] = torch.from_numpy(embeddings)
        torch.manual_seed(seed)
        model = TRM(TRMConfig(num_items=len(ids), text_dim=int(embeddings.shape[1]), **config), item_text_matrix)
        aliases = [int(it["id"]) for it in catalog_items if it.get("duplicate_of") is not None]
        return cls(model, ids, encoder, excluded_ids=aliases)

    @property
    def config(self) -> TRMConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.item_text.device

    def to(self, device) -> "TRMRetriever":
        self.model.to(device)
        self._base_mask = self._base_mask.to(device)
        self._item_matrix = None
        return self

    def refresh(self) -> None:
        """Forget the cached item matrix (call after the weights change)."""
        self._item_matrix = None

    # ------------------------------------------------------------------------------------------- inputs
    def rows_of(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, max_history) rows of each history's last `max_history` items, left-padded with 0."""
        L = self.config.max_history
        out = np.zeros((len(histories), L), dtype=np.int64)
        for b, history in enumerate(histories):
            recent = list(history or [])[-L:]
            try:
                rows = [self.row_of[int(i)] for i in recent]
            except KeyError as err:
                raise ValueError(f"history {b}: item id {err.args[0]!r} is not in the TRM's catalog") from None
            if rows:
                out[b, L - len(rows):] = rows
        return torch.from_numpy(out).to(self.device)

    def preference_inputs(self, n: int, preference_texts: Sequence[str | None] | None = None,
                          preference_embeddings=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(embeddings (n, text_dim), has_preference (n,)) or (None, None) when no row has a preference."""
        if preference_embeddings is not None:
            if preference_texts is not None:
                raise ValueError("give preference_texts or preference_embeddings, not both")
            emb = np.asarray(preference_embeddings, dtype=np.float32)
            if emb.shape != (n, self.config.text_dim):
                raise ValueError(f"preference_embeddings has shape {emb.shape}, expected ({n}, "
                                 f"{self.config.text_dim})")
            has = np.abs(emb).sum(axis=1) > 0  # an all-zero row = no preference
            return torch.from_numpy(emb).to(self.device), torch.from_numpy(has).to(self.device)
        if preference_texts is None:
            return None, None
        if len(preference_texts) != n:
            raise ValueError(f"{len(preference_texts)} preference texts for {n} histories")
        present = [i for i, t in enumerate(preference_texts) if t is not None and str(t).strip()]
        if not present:
            return None, None
        emb = np.zeros((n, self.config.text_dim), dtype=np.float32)
        emb[present] = self.encode([str(preference_texts[i]) for i in present])
        has = np.zeros(n, dtype=bool)
        has[present] = True
        return torch.from_numpy(emb).to(self.device), torch.from_numpy(has).to(self.device)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings by the retriever's encoder (checked: (n, text_dim), normalised)."""
        if self.encoder is None:
            raise ValueError("this TRMRetriever has no text encoder, so it cannot embed preference texts: pass "
                             f"encoder= (it was trained with {self.text_encoder_name!r})")
        emb = check_embeddings(self.encoder.encode(list(texts), batch_size=max(1, min(len(texts), 128))),
                               len(texts), f"{encoder_name(self.encoder)}.encode")
        if emb.shape[1] != self.config.text_dim:
            raise ValueError(f"the encoder gives {emb.shape[1]}-dim embeddings; the TRM expects "
                             f"{self.config.text_dim} ({self.text_encoder_name!r})")
        return emb

    # ------------------------------------------------------------------------------------------- scores
    def _item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, L2-normalised) item vectors, (num_items + 1, d) each, cached until `refresh()`. The raw ones feed
        the history encoder: looking them up is far cheaper than running the MoE on every history item again."""
        if self._item_matrix is None or self.model.training:
            with torch.no_grad():
                raw = self.model.item_vectors()
                pair = (raw, torch.nn.functional.normalize(raw, dim=-1))
            if self.model.training:
                return pair
            self._item_matrix = pair
        return self._item_matrix

    def item_matrix(self) -> torch.Tensor:
        """(num_items + 1, d) L2-normalised item vectors (row 0 = padding), cached until `refresh()`."""
        return self._item_vectors()[1]

    def item_embeddings(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """L2-normalised TRM item vectors of `ids` (default: the whole catalog, in `catalog_ids` order)."""
        matrix = self.item_matrix()[1:]
        if ids is not None:
            rows = [self.row_of[int(i)] - 1 for i in ids]
            matrix = matrix[rows]
        return matrix.cpu().numpy()

    @torch.no_grad()
    def score(self, histories: Sequence[Sequence[int]], preference_texts: Sequence[str | None] | None = None,
              exclude: Sequence[Sequence[int]] | None = None, preference_embeddings=None) -> torch.Tensor:
        """(B, num_items + 1) cosine scores by row; padding, aliases, history and `exclude` items are -inf."""
        n = len(histories)
        if exclude is not None and len(exclude) != n:
            raise ValueError(f"{len(exclude)} exclude lists for {n} histories")
        was_training = self.model.training
        self.model.eval()
        try:
            raw_items, items = self._item_vectors()
            pref, has = self.preference_inputs(n, preference_texts, preference_embeddings)
            users = self.model.user_vectors(self.rows_of(histories), pref, has, item_vectors=raw_items)
            scores = torch.nn.functional.normalize(users, dim=-1) @ items.T
        finally:
            self.model.train(was_training)
        mask = self._base_mask.expand(n, -1).clone()
        b_idx, r_idx = [], []
        for b in range(n):
            extra = list(histories[b] or []) + (list(exclude[b] or []) if exclude is not None else [])
            for iid in extra:
                row = self.row_of.get(int(iid))
                if row is not None:  # an excluded id outside the catalog cannot be retrieved anyway
                    b_idx.append(b)
                    r_idx.append(row)
        if b_idx:
            mask[torch.tensor(b_idx), torch.tensor(r_idx)] = True
        return scores.masked_fill_(mask, float("-inf"))  # in place: a (B, N) copy costs as much as the fill

    def retrieve(self, histories: Sequence[Sequence[int]], preference_texts: Sequence[str | None] | None = None,
                 k: int = 20, exclude: Sequence[Sequence[int]] | None = None,
                 preference_embeddings=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog ids (B, k) int64 and their cosines (B, k) float32, best first; excluded items never
        appear (k larger than what is left after exclusion is an error)."""
        if isinstance(histories, (str, bytes)) or (len(histories) and isinstance(histories[0], (int, np.integer))):
            raise TypeError("histories must be a list of id lists (one per query)")
        scores = self.score(histories, preference_texts, exclude, preference_embeddings)
        if not 1 <= k <= scores.shape[1]:
            raise ValueError(f"k must be in [1, {scores.shape[1] - 1}], got {k}")
        top_scores, top_rows = torch.topk(scores, k, dim=1)
        if torch.isinf(top_scores).any():
            raise ValueError(f"k={k} is more than the items left after excluding history / seen / aliases")
        ids = self.catalog_ids[(top_rows - 1).cpu().numpy()]
        return ids, top_scores.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------------------------------- save / load
    def save(self, folder: str | os.PathLike, extra: Mapping | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
        config = {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config.to_dict(),
                  "text_encoder": self.text_encoder_name, "catalog_ids": self.catalog_ids.tolist(),
                  "excluded_ids": self.excluded_ids, **dict(extra or {})}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, encoder=None, device: str | torch.device = "cpu") -> "TRMRetriever":
        """A saved TRM. `encoder` embeds preference texts (needed only for non-empty ones); it should be the
        text encoder the checkpoint names (`trm_config.json` `text_encoder`); `encoder="auto"` loads that one
        with `modeling.text_encoder.load_text_encoder`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not a TRM checkpoint folder (train_trm.py writes one)")
        try:
            saved = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
        if saved.get("format") != FORMAT or saved.get("version") != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format {saved.get('format')!r} v{saved.get('version')!r}, expected "
                             f"{FORMAT!r} v{FORMAT_VERSION}")
        for key in ("config", "catalog_ids"):
            if key not in saved:
                raise ValueError(f"{config_path}: missing field {key!r}")
        config = TRMConfig.from_dict(saved["config"], source=str(config_path))
        from modeling.checkpoint_integrity import CheckpointError, safetensors_problem

        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(folder, "missing (train_trm.py writes it)", WEIGHTS_FILE)
        if why := safetensors_problem(weights):  # a raw SafetensorError would name neither the file nor the folder
            raise CheckpointError(folder, why.split(" ", 1)[1], WEIGHTS_FILE)
        state = load_file(str(weights))
        if "item_text" not in state:
            raise CheckpointError(folder, "no 'item_text' tensor: not a TRM checkpoint", WEIGHTS_FILE)
        model = TRM(config, state["item_text"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(folder, f"missing weights {missing[:5]}, unexpected {unexpected[:5]}; does "
                                          f"{CONFIG_FILE} describe this model?", WEIGHTS_FILE)
        model.eval()
        name = saved.get("text_encoder")
        if isinstance(encoder, str) and encoder == "auto":
            from modeling.text_encoder import load_text_encoder

            encoder = load_text_encoder(name, device=str(device))
        if encoder is not None and name and encoder_name(encoder) != name:
            warnings.warn(f"{folder}: trained with text encoder {name!r}, loaded with {encoder_name(encoder)!r}",
                          stacklevel=2)
        return cls(model, saved["catalog_ids"], encoder, saved.get("excluded_ids", ()), name).to(device)
