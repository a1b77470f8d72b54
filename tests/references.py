"""The tests' slow references: plain loops written from the papers' equations and the project's rules, never calling
the code under test. Each test file compares the fast implementation with these; keeping them in one module means
one reference per rule (the same relevance rule used to be written twice)."""
from __future__ import annotations

import math
import statistics

from rewards.titles import normalize_title  # the catalog's key, a helper here, not under test



# ---------- relevance and ranking metrics (rewards.judge, rewards.metrics) ------------------------------------------
def ref_statuses(ids, groundtruth, seen):
    """out_of_catalog -> seen -> duplicate -> hit (consume one GT copy) -> miss."""
    gt_left = list(groundtruth)
    status = []
    for pos, iid in enumerate(ids):
        if iid is None:
            status.append("out_of_catalog")
        elif iid in seen:
            status.append("seen")
        elif iid in ids[:pos]:
            status.append("duplicate")
        elif iid in gt_left:
            gt_left.remove(iid)
            status.append("hit")
        else:
            status.append("miss")
    return status


def ref_relevance(ids, groundtruth, seen):
    """rel_k of each listed id: 1.0 for a hit of ``ref_statuses``, else 0.0."""
    return [1.0 if s == "hit" else 0.0 for s in ref_statuses(ids, groundtruth, seen)]


def ref_dcg(rel, k):
    total = 0.0
    for pos in range(1, k + 1):  # 1-based rank
        if pos <= len(rel):
            total += rel[pos - 1] / math.log2(pos + 1)
    return total


def ref_ndcg(rel, n_gt, k, cap=None):
    n_ideal = min(n_gt, k) if cap is None else min(n_gt, k, cap)
    idcg = 0.0
    for pos in range(1, n_ideal + 1):
        idcg += 1.0 / math.log2(pos + 1)
    return 0.0 if idcg == 0 else ref_dcg(rel, k) / idcg


def ref_recall(rel, n_gt, k):
    if n_gt == 0:
        return 0.0
    hits = 0
    for pos in range(min(k, len(rel))):
        hits += rel[pos]
    return hits / n_gt


def ref_hr(rel, k):
    for pos in range(min(k, len(rel))):
        if rel[pos] > 0:
            return 1.0
    return 0.0


def ref_metrics(status, n_gt, protocol, *, ks, n_items=20):
    first = status[:n_items]
    if protocol == "strict":
        rel = [1 if s == "hit" else 0 for s in first]
        cap = None
    else:
        # the released evaluation filters the WHOLE parsed list, then packs upward
        rel = [1 if s == "hit" else 0 for s in status if s not in ("seen", "out_of_catalog")]
        cap = len(rel)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = ref_recall(rel, n_gt, k)
        out[f"ndcg@{k}"] = ref_ndcg(rel, n_gt, k, cap)
        out[f"hr@{k}"] = ref_hr(rel, k)
    in_cat = sum(1 for s in first if s != "out_of_catalog")
    out["catalog_hit_ratio"] = in_cat / len(first) if first else 0.0
    out["valid_item_ratio"] = sum(1 for s in first if s in ("hit", "miss")) / n_items
    out["num_parsed"] = float(len(status))
    return out


def ref_merged(cat) -> dict:
    """{id: first id of the catalog with the same normalised title, year and NFC/casefold spelling}: entries no line
    can tell apart, scored as the first (Catalog.canonical_id's rule, from its definition)."""
    import unicodedata

    first, out = {}, {}
    for it in cat:
        key = (normalize_title(it["title"]), it["year"], unicodedata.normalize("NFC", it["title"]).casefold())
        if key in first:
            out[it["id"]] = first[key]
        else:
            first[key] = it["id"]
    return out


def ref_groundtruth(merged, gt):
    """gt mapped through ``merged``; a copy that only the mapping created is dropped."""
    out = []
    for g in gt:
        c = merged.get(g, g)
        if c in out and any(merged.get(x, x) == c and x != c for x in gt):
            continue
        out.append(c)
    return out


# ---------- rank-level rewards, Rank-GRPO Eq. 8-9 (rewards.rank_rewards) --------------------------------------------
def ref_fit(rel, n):
    return [float(rel[i]) if i < len(rel) else 0.0 for i in range(n)]


def ref_rank_rewards(rel, scheme, n):
    rel = ref_fit(rel, n)
    out = []
    for k in range(1, n + 1):
        if scheme == "exp_inf":
            r = rel[k - 1]  # r_k = rel_k
        elif scheme == "log":
            r = 0.0
            for j in range(k, n + 1):  # r_k = sum_{j=k}^{N} rel_j / log2(j+1)
                r += rel[j - 1] / math.log2(j + 1)
        else:
            gamma = float(scheme[len("exp_"):])
            r = 0.0
            for j in range(k, n + 1):  # r_k = sum_{j>=k} rel_j / Gamma^(j-k)
                r += rel[j - 1] / gamma ** (j - k)
        out.append(r)
    return out


def ref_sequence_ndcg(rel, n_gt, n):
    """NDCG@n of the list fitted to n items (``ref_fit``)."""
    return ref_ndcg(ref_fit(rel, n), n_gt, n)


# ---------- advantages, Rank-GRPO Eq. 7 / GRPO Eq. 2 (trainers.core_algos) ------------------------------------------
def ref_zscore_column(col, eps):
    """(x - mean) / (sample stdev + eps) of one column; a constant column -> 0."""
    if max(col) == min(col):
        return [0.0] * len(col)
    m, s = statistics.mean(col), statistics.stdev(col)
    return [(x - m) / (s + eps) for x in col]


def ref_advantages(R, G, eps):
    """Eq. 7 by hand: per group of G rows, per column: ``ref_zscore_column``."""
    A = [[0.0] * len(R[0]) for _ in R]
    for g0 in range(0, len(R), G):
        for k in range(len(R[0])):
            col = ref_zscore_column([R[i][k] for i in range(g0, g0 + G)], eps)
            for i in range(g0, g0 + G):
                A[i][k] = col[i - g0]
    return A


# ---------- policy-loss pieces (trainers.core_algos) ----------------------------------------------------------------
def ref_clipped_surrogate(w, a, lo, hi):
    """PPO's clipped surrogate of one ratio ``w`` and advantage ``a``: min(w a, clip(w, 1 - lo, 1 + hi) a)."""
    return min(w * a, min(max(w, 1 - lo), 1 + hi) * a)


def ref_k3_kl(logp, ref_logp):
    """The k3 KL estimate of one token: exp(d) - d - 1, d = ref log-prob - policy log-prob."""
    d = ref_logp - logp
    return math.exp(d) - d - 1


# ---------- token -> item rank (trainers.token_map) -----------------------------------------------------------------
def ref_item_index(ids_rows, texts, items_rows, tok, N, pad_id):
    """Token -> rank by a per-token decode loop, then the tail rank N by hand."""
    import torch

    from trainers.token_map import assign_tokens_slow

    T = max(len(r) for r in ids_rows)
    ids = torch.full((len(ids_rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(ids_rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    spans = [[(len(t[: it.start].encode()), len(t[: it.end].encode())) for it in items[:N]]
             for t, items in zip(texts, items_rows)]
    idx = assign_tokens_slow(ids, mask, spans, tok).tolist()
    for b in range(len(ids_rows)):
        last = max([t for t in range(T) if idx[b][t] >= 0], default=-1)
        for t in range(T):
            if mask[b, t] and idx[b][t] == -1 and t > last:
                idx[b][t] = N
    return idx


# ---------- RecPO recommendation loss (methods.recpo) ---------------------------------------------------------------
def ref_rec_loss(hu, hc, pos, w, tau, kind, offset):
    """(1/B) sum_i w_i l_i by hand: p_i over the columns whose offset is finite, logits cos / tau - offset."""
    import torch

    B, C = hu.size(0), hc.size(0)
    total = 0.0
    for i in range(B):
        if w[i] == 0:
            continue
        s = {c: torch.dot(hu[i], hc[c]) / (hu[i].norm() * hc[c].norm()) / tau - offset[c] for c in range(C)
             if math.isfinite(offset[c])}
        log_p = s[int(pos[i])] - torch.logsumexp(torch.stack(list(s.values())), dim=0)
        total = total + w[i] * (-log_p if kind == "infonce" else -torch.exp(log_p))
    return total / B


# ---------- completion parsing (rewards.parse) ----------------------------------------------------------------------
def ref_parse_line(stripped, require_year):
    """Slow reference of parse_line: every pattern tried on every pass, the full _ITEM regex (no fast paths)."""
    from rewards import parse as P

    s = P._INLINE_MARKDOWN.sub("", stripped).strip()
    numbered = False
    for _ in range(8):
        before = s
        s = P._BULLET.sub("", s, count=1)
        s = P._HEADING.sub("", s, count=1)
        if not numbered:
            t = P._NUMBERING.sub("", s, count=1)
            if t != s:
                numbered, s = True, t
        s = s.strip()
        if s == before:
            break
    if not s:
        return None
    m = P._ITEM.match(s)
    if m:
        title = P._clean_title(m.group("title"))
        return (title, int(m.group("year"))) if title and P._HAS_WORD.search(title) else None
    if require_year or P.is_prose(s):
        return None
    title = P._clean_title(s.rstrip(",;:"))
    return (title, None) if title and P._HAS_WORD.search(title) else None


# ---------- item-aware decoding (modeling.item_decoding) ------------------------------------------------------------
def ref_item_aware_scores(input_ids, scores, prompt_length, item_token_set, banned_rows):
    """Row by row, token by token: -inf where the token is a banned (seen) item, or an item token that row has
    already generated after its prompt."""
    out = scores.clone()
    for b in range(scores.shape[0]):
        generated = input_ids[b, prompt_length:].tolist()
        for v in range(scores.shape[1]):
            if v in banned_rows[b] or (v in item_token_set and v in generated):
                out[b, v] = float("-inf")
    return out


# ---------- DeepRec injected-token mask (methods.deeprec) -----------------------------------------------------------
def ref_char_span_mask(tokenizer, ids, text, blocks):
    """Slow reference: decode every prefix to find each token's character span in ``text``; a token is masked iff
    its span lies inside an injected block (blocks: the literal injected strings, in order)."""
    spans, pos = [], 0
    for b in blocks:
        start = text.index(b, pos)
        spans.append((start, start + len(b)))
        pos = start + len(b)
    mask, prev = [], 0
    for j in range(1, len(ids) + 1):
        end = len(tokenizer.decode(ids[:j]))
        inside = any(a <= prev and end <= b for a, b in spans) and end > prev
        mask.append(0 if inside else 1)
        prev = end
    return mask
