"""DeepRec's training data (docs/methods.md §4): the rows RL trains on (difficulty-based selection, the rendered
prompts) and the format warm-start's SFT data (scripted trajectories over REAL retrieved lists, and their token
masks). Data builders: the retriever (the TRM, anything with ``retrieve``) and the catalog come in as arguments.
"""
from __future__ import annotations

from collections import Counter

from preprocess.deeprec_prompts import (
    BEGIN_PREFERENCE,
    END_PREFERENCE,
    THINK_CLOSE,
    THINK_OPEN,
    answer_text,
    injected_spans,
    item_list_text,
    render_prompt,
)


# ------------------------------------------------------------------------------------------------ RL rows
def select_by_difficulty(dataset, retriever, top_k: int = 100, batch_size: int = 512):
    """Keep the rows whose target is in the TRM's top ``top_k`` for the history alone (history and ``seen``
    excluded, as in every retrieval). Returns (kept dataset, stats). On a catalog too small for ``top_k`` the
    whole retrievable rest is the top (k is cut per batch to what every row can still retrieve)."""
    histories, seens, targets = dataset["history"], dataset["seen"], dataset["target"]
    n_catalog = len(retriever.catalog_ids) - len(getattr(retriever, "excluded_ids", ()))
    keep = []
    for s in range(0, len(targets), batch_size):
        h = [list(x or []) for x in histories[s:s + batch_size]]
        ex = [list(x or []) for x in seens[s:s + batch_size]]
        k = min(top_k, n_catalog - max(len(set(a) | set(b)) for a, b in zip(h, ex)))
        if k < 1:
            raise ValueError(f"rows {s}..{s + len(h) - 1}: nothing left to retrieve after excluding their history")
        ids, _ = retriever.retrieve(h, None, k=k, exclude=ex)
        keep += [s + j for j, (row, t) in enumerate(zip(ids, targets[s:s + batch_size]))
                 if t is not None and int(t) in {int(x) for x in row}]
    stats = {"difficulty_top_k": top_k, "rows_before": len(targets), "rows_kept": len(keep),
             "rows_dropped": len(targets) - len(keep)}
    return dataset.select(keep), stats


def render_dataset(dataset, catalog, args):
    """The DeepRec prompt (``render_prompt`` under a ``DeepRecConfig``: style, category, history length and the
    episode settings the instructions name) in place of the data set's own prompt / completion."""
    if dataset is None:
        return None
    settings = args.episode_settings

    def render(row):
        return {"prompt": render_prompt(row, catalog, args.prompt_style, args.category, args.max_history, settings)}

    drop = [c for c in ("prompt", "completion") if c in dataset.column_names]
    return dataset.map(render, remove_columns=drop, desc="DeepRec prompts")


def check_columns(dataset, split: str) -> None:
    missing = [c for c in ("history", "target", "seen") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{split} data set: DeepRec needs columns history, target, seen (a sequential data set "
                         f"such as preprocess.movielens / preprocess.amazon); missing {missing}")


# ------------------------------------------------------------------------------------------------ warm-start
def preference_texts(history: list[int], catalog, category: str) -> tuple[str, str]:
    """Two scripted preference texts from a history: its most frequent genres, then its last two items."""
    genres = Counter(g for iid in history for g in (catalog[iid].get("genres") or catalog[iid].get("categories")
                                                      or []))
    top = [g for g, _ in genres.most_common(3)]
    first = (f"{category} in the genres {', '.join(map(str, top))}" if top
             else f"{category} like the ones in this history")
    recent = [catalog.display(i) for i in history[-2:]]
    second = f"{category} similar to {' and '.join(recent)}" if recent else f"popular {category}"
    return first, second


def warmstart_records(dataset, catalog, retriever, args, split: str = "train") -> list[dict]:
    """Format warm-start (beyond the paper): one scripted chat-style trajectory per row, in the data contract's
    prompt/completion form (``train_sft.py`` trains on it): two TRM calls with preference texts from the history
    (its top genres, its last two items), the REAL retrieved lists, and a final top 10 interleaving the two lists.
    The target is never inserted: this teaches the protocol, not the answer. ``args``: a ``DeepRecConfig`` (its
    ``episode_settings``, ``category``, ``max_history``); ``retriever``: the TRM (``retrieve``)."""
    settings = args.episode_settings
    if settings.k < 10:
        raise ValueError(f"the warm-start's final top 10 comes from the retrieved lists: retrieve_k must be >= 10, "
                         f"got {settings.k}")
    rows = [dict(r) for r in dataset]
    prefs = [preference_texts(list(r.get("history") or []), catalog, args.category) for r in rows]
    lists = []
    for which in (0, 1):
        ids, _ = retriever.retrieve([list(r.get("history") or []) for r in rows], [p[which] for p in prefs],
                                    k=settings.k, exclude=[list(r.get("seen") or []) for r in rows])
        lists.append([[int(x) for x in row] for row in ids])
    out = []
    for r, (p1, p2), l1, l2 in zip(rows, prefs, lists[0], lists[1]):
        final = list(dict.fromkeys(x for pair in zip(l1, l2) for x in pair))[:10]
        last = catalog.display(r["history"][-1]) if r.get("history") else "nothing yet"
        text = (f"{THINK_OPEN}\nThe user's most recent item is {last}. Let me ask the recommender.\n"
                f"{BEGIN_PREFERENCE}{p1}{END_PREFERENCE}" + item_list_text([catalog.display(x) for x in l1])
                + f"Now items close to the latest ones.\n{BEGIN_PREFERENCE}{p2}{END_PREFERENCE}"
                + item_list_text([catalog.display(x) for x in l2])
                + f"Both lists fit; I interleave their best items.\n{THINK_CLOSE}\n"
                + answer_text([catalog.display(x) for x in final]))
        prompt = render_prompt(r, catalog, "chat", args.category, args.max_history, settings)
        out.append({"sample_id": f"{r['sample_id']}/deeprec_warmstart", "prompt": prompt,
                    "completion": [{"role": "assistant", "content": text}],
                    "groundtruth": list(r.get("groundtruth") or [r["target"]]), "seen": list(r.get("seen") or []),
                    "history": list(r.get("history") or []), "target": r.get("target"),
                    "timestamp": r.get("timestamp")})
    return out


def warmstart_sft_tokens(tokenizer, prompt: list[dict], completion: list[dict]) -> dict:
    """Token ids and loss mask of one warm-start SFT example, tokenized as the RL rollout builds a trajectory: the
    chat-templated prompt (generation prompt appended), then the completion segment by segment -- each injected TRM
    list (``preprocess.deeprec_prompts.injected_spans``) encoded on its own, as ``run_episodes`` appends it -- then the
    template's end of the turn. ``completion_mask`` (TRL's column): 1 on the policy text and the end of the turn, 0
    on the prompt and on every token of an injected list, so the model is not trained to write the lists itself."""
    if not (isinstance(completion, list) and len(completion) == 1 and completion[0].get("role") == "assistant"):
        raise ValueError(f"the completion must be one assistant message, got {completion!r}")
    content = completion[0]["content"]
    p_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    f_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not f_text.startswith(p_text + content):
        raise ValueError("the chat template does not render prompt + completion as the prompt followed by the "
                         "completion's text; the injected lists cannot be located in its tokens")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    ids = encode(p_text)
    mask = [0] * len(ids)
    pos = 0
    for start, end in [*injected_spans(content), (len(content), len(content))]:
        for text, bit in ((content[pos:start], 1), (content[start:end], 0)):
            seg = encode(text)
            ids += seg
            mask += [bit] * len(seg)
        pos = end
    tail = encode(f_text[len(p_text) + len(content):])
    return {"input_ids": ids + tail, "completion_mask": mask + [1] * len(tail)}
