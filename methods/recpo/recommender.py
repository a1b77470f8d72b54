"""RecPO (R²ec) as a recommender for the evaluation seam -- the inference script R²ec's users ask for.

Per sample: the user prompt the trainer uses (``preprocess.recpo_prompts.record_user_prompt``), greedy reasoning up
to the first ``<answer>`` (appended when the model never writes it), h_T at the marker's last token, cosine scores
against the item table (every catalog item encoded with the item prompt by the same model), the sample's history and
``seen`` items masked, the top ``n_items`` ids. ``Recommendation.text`` holds the reasoning.

    rec = RecPORecommender.from_pretrained("results/recpo/RUN", catalog, category="video games")
    evaluate_recommender(rec, test_split, catalog, "results/recpo/RUN/eval_test")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from evaluation.recommenders import Recommendation
from evaluation.registry import BuildRequest, register_recommender
from modeling.hidden_states import chat_ids, encode_id_rows, end_with_marker, left_pad
from preprocess.recpo_prompts import ANSWER_MARKER, ITEM_PREFILL, MAX_HISTORY, item_prompt, record_user_prompt
from rewards.embedding_rewards import cosine_scores, top_k_items

PROJECTION_FILE = "recpo_projection.safetensors"  # written by methods.recpo.trainer.RecPOTrainer.save_model


@dataclass
class RecPOOptions:
    """eval_test.py's flags for ``--recommender recpo``."""

    category: str = field(default="items", metadata={"help": "the item category named in prompts"})
    no_reasoning: bool = field(default=False, metadata={"help": "the no-reasoning ablation"})


@register_recommender("recpo", options=RecPOOptions,
                      help="reason, then rank the whole catalog with the hidden state at <answer> (train_recpo.py "
                           "models)")
class RecPORecommender:
    """Greedy reasoning + full-catalog ranking with the model's hidden state (history and ``seen`` masked)."""

    require_year = None  # ranks ids; parses no text

    def __init__(self, model, tokenizer, catalog, category: str = "items", n_items: int = 20,
                 max_new_tokens: int = 256, reasoning: bool = True, batch_size: int = 8, item_batch_size: int = 32,
                 max_history: int = MAX_HISTORY, progress: bool = True, projection: torch.Tensor | None = None):
        self.model, self.tokenizer, self.catalog = model, tokenizer, catalog
        self.category, self.n_items, self.max_new_tokens = category, n_items, max_new_tokens
        self.reasoning, self.batch_size, self.max_history, self.progress = reasoning, batch_size, max_history, progress
        self.item_ids = list(catalog.ids)
        self.index_of = {iid: i for i, iid in enumerate(self.item_ids)}
        self.marker_ids = tokenizer(ANSWER_MARKER, add_special_tokens=False)["input_ids"]
        pad = tokenizer.pad_token_id
        rows = [chat_ids(tokenizer, item_prompt(catalog[i], category), ITEM_PREFILL) for i in self.item_ids]
        self.item_table = encode_id_rows(model, rows, pad, item_batch_size, desc=f"item table ({len(rows)} items)",
                                         progress=progress)
        self.projection = projection  # (out, d) learned W of a run trained with --projection_dim, or None
        eos = getattr(model.generation_config, "eos_token_id", None)
        stops = {eos} if isinstance(eos, int) else set(eos or [])
        self.stop_ids = (stops | {tokenizer.eos_token_id, pad}) - {None}

    @classmethod
    def from_pretrained(cls, path, catalog, **kw) -> "RecPORecommender":
        from modeling.loading import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(path, padding_side="left")
        model.eval()
        projection_file = Path(path) / PROJECTION_FILE
        if projection_file.is_file() and "projection" not in kw:  # a run trained with --projection_dim
            from safetensors.torch import load_file

            kw["projection"] = load_file(str(projection_file))["weight"].to(next(model.parameters()).device)
        return cls(model, tokenizer, catalog, **kw)

    @classmethod
    def from_cli(cls, request: BuildRequest) -> "RecPORecommender":
        opts, args = request.options, request.args
        request.provenance.update(backend="transformers", recommender="recpo", category=opts.category,
                                  reasoning=not opts.no_reasoning)
        return cls.from_pretrained(request.model_path, request.data.catalog, category=opts.category,
                                   n_items=args.n_items, max_new_tokens=args.max_new_tokens,
                                   reasoning=not opts.no_reasoning)

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.projection is None else h @ self.projection.T.to(h.dtype)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def _reason(self, prompt_rows: list[list[int]]) -> list[list[int]]:
        """Greedy completions of the prompts, each ending with the ``<answer>`` marker."""
        if not self.reasoning:
            return [list(self.marker_ids) for _ in prompt_rows]
        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompt_rows, self.tokenizer.pad_token_id, device)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                  do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        completions = []
        for row in out[:, ids.size(1):].tolist():
            cut = len(row)
            for k, t in enumerate(row):  # everything after the first stop token is padding
                if t in self.stop_ids:
                    cut = k + 1
                    break
            completions.append(end_with_marker(row[:cut], self._decode, ANSWER_MARKER, self.marker_ids,
                                               self.stop_ids)[0])
        return completions

    def recommend(self, dataset) -> list[Recommendation]:
        from tqdm.auto import tqdm

        rows = list(dataset) if not isinstance(dataset, list) else dataset
        out: list[Recommendation] = []
        pad = self.tokenizer.pad_token_id
        for start in tqdm(range(0, len(rows), self.batch_size), desc="RecPO recommend", disable=not self.progress):
            chunk = rows[start:start + self.batch_size]
            prompts = [chat_ids(self.tokenizer, record_user_prompt(r, self.catalog, self.category, self.max_history))
                       for r in chunk]
            completions = self._reason(prompts)
            h = encode_id_rows(self.model, [p + c for p, c in zip(prompts, completions)], pad,
                               batch_size=len(chunk), progress=False)
            exclude = torch.zeros(len(chunk), len(self.item_ids), dtype=torch.bool, device=h.device)
            for b, r in enumerate(chunk):
                cols = [self.index_of[i] for i in list(r.get("history") or []) + list(r.get("seen") or [])
                        if i in self.index_of]
                if cols:
                    exclude[b, cols] = True
            top = top_k_items(cosine_scores(self._project(h), self._project(self.item_table), 1.0), self.n_items,
                              exclude)
            for b, c in enumerate(completions):
                allowed = int((~exclude[b]).sum())
                ids = [self.item_ids[j] for j in top[b, :min(self.n_items, allowed)].tolist()]
                out.append(Recommendation(item_ids=ids, text=self._decode(c)))
        return out
